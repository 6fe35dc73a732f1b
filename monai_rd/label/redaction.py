"""Server paths out of what a client reads: error reasons, task results and the training log lines.

A client of the MONAI Label server must learn nothing about the server's file system: no answer carries an
absolute path. :class:`PathRedactor` replaces the folders the app knows by a name in angle brackets
(``<studies>``, ``<models:rd_demo>``) and any other absolute path by ``<path>``.
:func:`redacted_output` applies it to everything a training, scoring or batch-inference subprocess prints, which
MONAI Label hands to clients as the task's ``details``; :func:`redact_task_status` to MONAI Label's task status
answers themselves, for the lines such a subprocess prints before the app is loaded in it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
from collections.abc import Iterator, Mapping

__all__ = ["PathRedactor", "redact_task_status", "redacted_output"]

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


def redact_task_status(redactor: PathRedactor) -> None:
    """Make MONAI Label's ``AsyncTask.status`` (``GET /train/``, ``/batch/infer``, ``/scoring/``: each task's
    request and ``details``) answer through ``redactor``.

    A task's subprocess logs the app's folders (``Initializing App from: <app>; studies: <studies>; conf: ...``)
    before it imports the app, so only the server can take them out of the answers: this replaces the static method
    once per process with one that returns a redacted copy (the stored tasks are unchanged).
    """
    from monailabel.utils.async_tasks.task import AsyncTask

    current = AsyncTask.__dict__["status"].__func__
    original = getattr(current, "__wrapped__", current)

    def status(method: str, all: bool = False, check_if_running: bool = False) -> tuple:
        result, detail = original(method, all, check_if_running)
        if result is not None:
            result = json.loads(redactor(json.dumps(result, default=list)))
        return result, redactor(detail) if isinstance(detail, str) else detail

    status.__wrapped__ = original
    AsyncTask.status = staticmethod(status)
