"""Dictionaries: JumpReLU SAEs, transcoders and CLTs; their files and releases; activation
caches; training and evaluation. Imports only ``gsnb.core``."""
