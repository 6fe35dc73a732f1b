"""Files written whole or not at all, and file digests.

A file another process (or a later run) reads is written to a temporary name in the same folder and renamed over
the target, so a reader never sees half a file and a run killed while writing leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterator

__all__ = ["atomic_path", "file_sha256", "write_json_atomic", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends without error.

    The file gets the permissions ``open(path, "w")`` would give it: an existing file's mode is kept, a new file's
    is ``0o666`` less the umask (``tempfile.mkstemp`` would make it ``0o600``, unreadable to the group). On any
    error (or ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the file to write.
        suffix: ending of the temporary name (some writers pick the format from it, e.g. ``".png"``).

    Yields:
        The temporary path; the caller writes the whole file there.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}{suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask, as for open()
    os.close(fd)
    try:
        if os.path.isfile(path):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(obj: object, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes, read in chunks.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()
