"""gsnb.core.files: every write is whole or absent, fsynced before and after its rename."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gsnb.core import files
from gsnb.core.files import TMP_SUFFIX, AtomicFile, atomic_write, publish_dir


class Crash(Exception):
    pass


def test_a_write_that_raises_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("old")

    def half_then_crash(path: str) -> None:
        Path(path).write_text("new, half writ")
        raise Crash

    with pytest.raises(Crash):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]

    atomic_write(target, lambda p: Path(p).write_text("new"))
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_an_abandoned_stream_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "shard.bin"
    target.write_bytes(b"old")
    f = AtomicFile(target)
    try:
        f.write(b"new ")
        f.writeback()
        assert f.tmp.name.startswith(".shard.bin.") and f.tmp.name.endswith(TMP_SUFFIX)
        assert f.tmp.parent == tmp_path  # same folder, so the rename cannot cross filesystems
        raise Crash
    except Crash:
        f.abandon()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["shard.bin"]


def test_commit_fsyncs_the_file_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "folder" if os.path.isdir(f"/proc/self/fd/{fd}") else st.st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    target = tmp_path / "weights.bin"
    atomic_write(target, lambda p: Path(p).write_bytes(b"abc"))
    inode = target.stat().st_ino
    assert events == [("fsync", inode), ("replace", inode), ("fsync", "folder")]
    assert target.read_bytes() == b"abc"


def test_new_files_get_the_permissions_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a", lambda p: Path(p).write_text("x"))
        f = AtomicFile(tmp_path / "b")
        f.write(b"y")
        f.commit()
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o644


def test_a_published_folder_is_fsynced_then_renamed_whole(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(
        files.os,
        "fsync",
        lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd),
    )
    tmp = tmp_path / ".model.gsnb-tmp"
    (tmp / "sub").mkdir(parents=True)
    (tmp / "model.safetensors").write_text("weights")
    (tmp / "sub" / "tokenizer.json").write_text("{}")
    publish_dir(tmp, tmp_path / "model")
    assert (tmp_path / "model" / "sub" / "tokenizer.json").read_text() == "{}"
    assert not tmp.exists()
    assert {str(tmp / "model.safetensors"), str(tmp / "sub" / "tokenizer.json")} <= set(synced)
    assert str(tmp_path) == synced[-1]  # the rename itself is made durable last
