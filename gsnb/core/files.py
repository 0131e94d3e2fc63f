"""Atomic writes, the one place gsnb writes files: a reader sees the old file or the new one,
never half of one, and a crash after the call returns loses neither.

:class:`AtomicFile` streams into a hidden temporary file beside the target; ``commit`` fsyncs it,
renames it over the target and fsyncs the folder (so the rename itself survives a power cut);
``abandon`` removes it. :func:`atomic_write` wraps it for writers that take a path
(``safetensors.torch.save_file``, ``Path.write_text``), and :func:`publish_dir` does the same for a
whole folder. Temporary files end in :data:`TMP_SUFFIX`, so a folder's owner can recognise and
remove those a crash left behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

TMP_SUFFIX = ".gsnb-tmp"
"""How every temporary file and folder gsnb writes ends: never data, safe to delete once no
writer runs."""

_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows would otherwise translate newlines


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (renames, new files) durable. A no-op where folders cannot
    be opened (Windows), which has no such step."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
    for sub in sorted({p.parent for p in folder.rglob("*")} | {folder}):
        fsync_dir(sub)


class AtomicFile:
    """A binary file written under a temporary name beside ``target`` and renamed into place.

    >>> f = AtomicFile(path)
    >>> try:
    ...     f.write(header); f.write(data)
    ...     f.commit()
    ... except BaseException:
    ...     f.abandon(); raise
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        while True:
            # Not tempfile.mkstemp: its files are private (0600), and a cache or a saved SAE
            # should get the same permissions as any file the user writes (the umask decides).
            self.tmp = self.target.with_name(
                f".{self.target.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
            )
            try:
                fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
                break
            except FileExistsError:
                continue
        self.file = os.fdopen(fd, "wb")

    def write(self, data) -> None:
        """Append ``data`` (bytes or any buffer, such as a numpy array's memory)."""
        self.file.write(data)

    def writeback(self) -> None:
        """Ask the kernel to start writing the pages so far now (and drop them once clean), so
        gigabytes do not pile up dirty for the fsync in :meth:`commit`."""
        self.file.flush()
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

    def commit(self) -> None:
        """fsync, close and rename over the target, then fsync the folder."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.target)
        fsync_dir(self.target.parent)

    def abandon(self) -> None:
        """Close and delete the temporary file; the target is untouched."""
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def atomic_write(target: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``target``, then commit it as
    :meth:`AtomicFile.commit` does. If ``write`` raises, ``target`` keeps its old content and the
    temporary file is removed.

    >>> atomic_write(folder / "config.json", lambda p: Path(p).write_text(text))
    """
    f = AtomicFile(target)
    f.file.close()  # ``write`` opens the path itself
    try:
        write(str(f.tmp))
        f.file = open(f.tmp, "rb+")  # noqa: SIM115 (commit closes it)
        f.commit()
    except BaseException:
        f.abandon()
        raise


def publish_dir(tmp: Path, target: Path) -> None:
    """Make the finished folder ``tmp`` durable and rename it to ``target``; if another process
    got there first, keep theirs (``tmp`` is left for the caller to delete)."""
    _fsync_tree(tmp)
    try:
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
    fsync_dir(target.parent)
