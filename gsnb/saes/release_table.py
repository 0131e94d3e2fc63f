"""The released suites gsnb loads, as data: their repos, the names SAELens gives them, what their
transcoders read, and the canonical picks SAELens and Neuronpedia list.

Sources: the Gemma Scope and Gemma Scope 2 model cards and SAELens' ``pretrained_saes.yaml``
(sae-lens 6.54.12). :mod:`gsnb.saes.releases` resolves names and ids against these tables.
"""

from __future__ import annotations

from typing import NamedTuple


class ReleaseInfo(NamedTuple):
    """One released suite of SAEs and transcoders on the Hugging Face Hub."""

    name: str
    """Release name for :func:`gsnb.load_sae` (``"gemma-scope-2b-pt-res"``)."""
    repo: str
    """Hub repo (``"google/gemma-scope-2b-pt-res"``)."""
    model_name: str
    """Model the suite was trained on (``"google/gemma-2-2b"``)."""
    kinds: tuple[str, ...]
    """``resid_post``, ``attn_out``, ``mlp_out`` (SAEs), ``transcoder`` (reads
    ``transcoder_input``, writes ``mlp_out``)."""
    id_pattern: str
    """Shape of its SAE ids."""
    format: str
    """``"gemma-scope"`` (``params.npz``) or ``"gemma-scope-2"`` (``params.safetensors``)."""
    neuronpedia_model: str
    """Neuronpedia's name for the model (``"gemma-2-2b"``)."""
    transcoder_input: str
    """Site kind its transcoders read: ``"mlp_normalized"`` (Gemma Scope) or ``"mlp_in"``."""


class Alias(NamedTuple):
    """SAELens' name for one folder of a Gemma Scope 2 release."""

    name: str
    """SAELens' release name (``"gemma-scope-2-270m-pt-res-all"``)."""
    release: str
    """gsnb's release (``"gemma-scope-2-270m-pt"``)."""
    folder: str
    """The folder its ids live in (``"resid_post_all"``)."""
    id_prefix: str
    """What SAELens writes before ``layer_...`` in its ids (``"transcoder/"`` or nothing)."""


# What each format's transcoders read (see gsnb.core.sites). Gemma Scope's model card: "just after the
# pre-MLP RMSNorm", the gain folded into the MLP weights; Gemma Scope 2: the norm's output.
TRANSCODER_INPUT = {"gemma-scope": "mlp_normalized", "gemma-scope-2": "mlp_in"}

# Gemma Scope repos "google/gemma-scope-{suite}".
GS1_SUITES = ("2b-pt-res 2b-pt-mlp 2b-pt-att 2b-pt-transcoders "
              "9b-pt-res 9b-pt-mlp 9b-pt-att 9b-it-res 27b-pt-res").split()  # fmt: skip
GS1_KINDS = {"res": "resid_post", "mlp": "mlp_out", "att": "attn_out", "transcoders": "transcoder"}

# Canonical SAEs: SAELens' gemma-scope-*-canonical releases (Neuronpedia's sources), as the
# average L0 of the file each layer's canonical id points to, per width. A plain list covers
# layers 0, 1, 2, ...; "L:K" pairs name the layers of a width released at a few layers only.
# No rule derives these (some are far from L0 100). The 2B transcoders have no -canonical
# release in SAELens; its gemma-scope-2b-pt-transcoders lists exactly these, Neuronpedia's set.
CANONICAL_L0: dict[str, dict[str, str]] = {
    "2b-pt-res": {
        "16k": "105 102 141 59 124 68 70 69 71 73 77 80 82 84 84 78 78 77 74 73 71 70 72 75 73 116",
        "32k": "12:76",
        "65k": "73 121 77 89 89 105 107 107 111 118 128 70 72 75 73 127 128 125 116 115 114 111 "
        "116 123 124 93",
        "262k": "12:121",
        "524k": "12:115",
        "1m": "5:114 12:107 19:88",
    },
    "2b-pt-mlp": {
        "16k": "119 105 95 95 85 114 133 60 136 88 110 98 108 112 97 80 72 68 106 109 109 113 121 "
        "128 73 126",
        "65k": "72 127 134 68 66 86 101 115 110 77 95 88 96 98 89 72 66 136 88 88 88 86 92 102 "
        "128 107",
    },
    "2b-pt-att": {
        "16k": "104 79 93 117 116 135 61 99 129 127 70 80 85 92 71 98 71 79 72 122 62 65 106 73 "
        "96 77",
        "65k": "75 98 125 83 87 99 112 96 112 107 67 75 79 87 66 90 129 70 123 106 102 118 112 140 "
        "77 63",
    },
    "2b-pt-transcoders": {
        "16k": "76 65 49 54 88 87 95 70 52 72 88 5 6 8 8 8 10 12 13 12 11 13 15 25 37 41",
    },
    "9b-pt-res": {
        "16k": "129 69 67 90 91 77 93 92 99 100 113 118 130 132 67 131 75 73 71 132 68 129 123 120 "
        "114 114 116 118 119 119 120 114 111 114 114 120 120 124 128 131 125 113",
        "32k": "20:57",
        "65k": "20:55",
        "131k": "41 56 70 103 101 94 120 119 72 75 84 88 96 99 105 103 121 117 113 110 114 109 105 "
        "101 97 96 97 96 98 97 95 92 88 91 89 94 93 96 101 99 94 84",
        "524k": "20:48",
        "1m": "9:122 20:101 31:77",
    },
    "9b-pt-mlp": {
        "16k": "50 128 81 126 66 93 96 101 124 83 114 76 96 94 97 107 91 104 89 98 108 88 85 73 73 "
        "72 142 126 115 111 116 94 98 107 107 108 109 119 98 90 74 126",
        "131k": "30 106 61 109 84 131 72 75 89 129 83 120 77 75 80 89 81 91 82 85 93 79 77 67 67 "
        "65 110 99 91 87 89 77 76 83 82 80 81 90 79 75 125 99",
    },
    "9b-pt-att": {
        "16k": "61 77 69 102 126 125 108 70 65 71 132 67 68 77 81 79 81 110 80 86 76 86 70 80 79 "
        "73 75 136 71 76 73 73 74 78 91 77 69 82 81 77 91 129",
        "131k": "55 116 135 119 75 78 73 106 98 111 97 104 110 126 131 130 71 90 69 71 125 71 115 "
        "66 130 115 120 102 115 128 109 117 117 128 63 124 105 124 135 120 64 92",
    },
    "9b-it-res": {"16k": "9:88 20:91 31:76", "131k": "9:121 20:81 31:109"},
    "27b-pt-res": {"131k": "10:106 22:82 34:72"},
}

# Gemma Scope 2: repos "google/gemma-scope-2-{size}-{pt|it}".
GS2_SIZES = ("270m", "1b", "4b", "12b", "27b")
GS2_KINDS = ("resid_post", "attn_out", "mlp_out", "transcoder")
# Layers of the wide sweeps (the folders without ``_all``): 25/50/65/85% depth.
GS2_DEPTH_LAYERS = {"270m": (5, 9, 12, 15), "1b": (7, 13, 17, 22), "4b": (9, 17, 22, 29),
                    "12b": (12, 24, 31, 41), "27b": (16, 31, 40, 53)}  # fmt: skip
# Neuronpedia sources (SAELens' neuronpedia fields): resid_post/..._l0_medium per suite and
# width, transcoder_all/..._l0_small_affine per suite and width.
GS2_NP_RES = dict.fromkeys(["270m-pt", "1b-pt", "4b-pt", "12b-pt", "27b-it"], "16k 65k 262k 1m")
GS2_NP_RES |= dict.fromkeys(["270m-it", "1b-it", "4b-it"], "16k 65k 262k")
GS2_NP_TRANSCODER = {"4b-it": "16k 262k", "27b-it": "262k"}
# SAELens' release names for Gemma Scope 2: gemma-scope-2-{size}-{pt|it}-{short}[-all].
SAELENS_GS2_SHORT = {"res": "resid_post", "mlp": "mlp_out", "att": "attn_out",
                     "transcoders": "transcoder"}  # fmt: skip

N_LAYERS = {"gemma-2-2b": 26, "gemma-2-9b": 42, "gemma-2-27b": 46, "gemma-3-270m": 18,
            "gemma-3-1b": 26, "gemma-3-4b": 34, "gemma-3-12b": 48, "gemma-3-27b": 62}  # fmt: skip


def canonical_l0s(stem: str, width: str) -> dict[int, int]:
    """``{layer: average L0}`` of the canonical SAEs of suite ``stem`` at ``width`` (may be
    empty)."""
    tokens = CANONICAL_L0.get(stem, {}).get(width, "").split()
    if any(":" in t for t in tokens):
        return {int(a): int(b) for a, b in (t.split(":") for t in tokens)}
    return {layer: int(t) for layer, t in enumerate(tokens)}


def build_releases() -> dict[str, ReleaseInfo]:
    """Every release by name: each Gemma Scope suite and its ``-canonical`` twin, then each
    Gemma Scope 2 repo."""
    out = {}
    for suite in GS1_SUITES:
        size, variant, short = suite.split("-")
        model, stem = f"gemma-2-{size}" + ("-it" if variant == "it" else ""), f"gemma-scope-{suite}"
        for name, ids in ((stem, "average_l0_{K}"), (stem + "-canonical", "canonical")):
            pattern = f"layer_{{L}}/width_{{16k|65k|...}}/{ids}"
            info = (f"google/{stem}", f"google/{model}", (GS1_KINDS[short],), pattern)
            out[name] = ReleaseInfo(name, *info, "gemma-scope", model, "mlp_normalized")
    pattern = (
        "{resid_post|attn_out|mlp_out|transcoder}[_all]/layer_{L}_width_{W}_l0_{small|"
        "medium|big}[_affine], or clt/width_{W}_l0_{small|medium|big}[_affine]"
    )
    for size in GS2_SIZES:
        for variant in ("pt", "it"):
            name = f"gemma-scope-2-{size}-{variant}"
            np_model = f"gemma-3-{size}" + ("-it" if variant == "it" else "")
            # Gemma 3 270M's base model is "google/gemma-3-270m"; the other base models end in -pt.
            model = np_model if (size, variant) == ("270m", "pt") else f"gemma-3-{size}-{variant}"
            args = (
                GS2_KINDS,
                pattern,
                "gemma-scope-2",
                np_model,
                TRANSCODER_INPUT["gemma-scope-2"],
            )
            out[name] = ReleaseInfo(name, f"google/{name}", f"google/{model}", *args)
    return out


def build_aliases() -> dict[str, Alias]:
    """SAELens' Gemma Scope 2 release names, each one folder of a gsnb release. In SAELens the
    ids of ``-transcoders`` (the depth sweep) start with ``transcoder/``; the others do not."""
    out = {}
    for size in GS2_SIZES:
        for variant in ("pt", "it"):
            for short, kind in SAELENS_GS2_SHORT.items():
                for every_layer in (False, True):
                    name = f"gemma-scope-2-{size}-{variant}-{short}" + (
                        "-all" if every_layer else ""
                    )
                    folder = kind + ("_all" if every_layer else "")
                    prefix = "transcoder/" if folder == "transcoder" else ""
                    out[name] = Alias(name, f"gemma-scope-2-{size}-{variant}", folder, prefix)
    return out
