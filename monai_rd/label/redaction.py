"""Server paths out of what a client reads: error reasons, task results and the training log lines.

A client of the MONAI Label server must learn nothing about the server's file system: no answer carries an
absolute path. :class:`PathRedactor` replaces the folders the app knows by a name in angle brackets
(``<studies>``, ``<models:rd_demo>``) and any other absolute path by ``<path>``.
:func:`redacted_output` applies it to everything a training, scoring or batch-inference subprocess prints, which
MONAI Label hands to clients as the task's ``details``.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping

__all__ = ["PathRedactor", "redacted_output"]

# an absolute POSIX path at the start of a token (after a space, quote, bracket, '=' or the start): not the '//' of
# a URL, not a ratio such as 1/2
_ABSOLUTE = re.compile(r"(?<![\w:/.~-])/[^\s'\"(),;:\]\[<>{}]+")


class PathRedactor:
    """Replaces known folders by their names, then any remaining absolute path by ``<path>``.

    Args:
        roots: name -> folder, e.g. ``{"studies": "/data/images"}``; each folder and its real path are replaced
            (the longest first, so a folder inside another keeps its own name).
    """

    def __init__(self, roots: Mapping[str, str] | None = None):
        pairs = {}
        for name, folder in (roots or {}).items():
            if folder:
                for variant in {os.path.abspath(folder), os.path.realpath(folder)}:
                    pairs[variant.rstrip(os.sep)] = f"<{name}>"
        self._pairs = sorted(pairs.items(), key=lambda p: len(p[0]), reverse=True)

    def __call__(self, text: str) -> str:
        """``text`` without absolute paths."""
        for folder, name in self._pairs:
            text = text.replace(folder, name)
        return _ABSOLUTE.sub("<path>", text)


@contextlib.contextmanager
def redacted_output(redactor: PathRedactor) -> Iterator[None]:
    """Route this process's stdout and stderr (file descriptors 1 and 2: logging, prints, tracebacks, native
    libraries) through ``redactor`` line by line while the block runs.

    Only for a task's own subprocess (MONAI Label reads its output as the task's ``details``); never inside the
    server, whose own log this would rewrite.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as pipe, os.fdopen(os.dup(saved_out), "wb", buffering=0) as out:
            for line in pipe:
                out.write(redactor(line.decode("utf-8", "replace")).encode())

    reader = threading.Thread(target=pump, name="redacted-output", daemon=True)
    reader.start()
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)  # closes the pipe's last write ends: the reader sees EOF
        os.dup2(saved_err, 2)
        reader.join(timeout=10)
        os.close(saved_out)
        os.close(saved_err)
