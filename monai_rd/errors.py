"""Errors monai_rd raises for problems a user can fix, and a hook that shows them plainly on the command line.

MONAI wraps every exception raised while a bundle config is evaluated (``Failed to evaluate ConfigExpression``,
``Failed to instantiate``), so the last line of a ``python -m monai.bundle run`` traceback is MONAI's, not the
message that says what to fix. :func:`install_excepthook` (run by every bundle's ``initialize``) prints the
innermost :class:`MonaiRDError` of an uncaught exception's chain as the top-level message instead, and keeps
the full traceback one environment variable away.
"""

from __future__ import annotations

import os
import sys
import traceback
from types import TracebackType

__all__ = [
    "CheckpointMismatchError",
    "DataCheckError",
    "DistributedRunError",
    "MonaiRDError",
    "NonFiniteError",
    "OptionError",
    "OutputFolderError",
    "SkippedInputsError",
    "find_rd_error",
    "install_excepthook",
]

TRACEBACK_ENV = "MONAI_RD_TRACEBACK"


class MonaiRDError(Exception):
    """Base of the errors whose message alone tells the user what is wrong and what to do."""


class OptionError(MonaiRDError, ValueError):
    """A bundle option (a ``--key value`` override) has a value it cannot take."""


class DataCheckError(MonaiRDError, ValueError):
    """The datalist or its files cannot be trained on (unreadable, wrong channels, bad labels, leaks)."""


class NonFiniteError(MonaiRDError, FloatingPointError):
    """A loss, gradient or weight became NaN or infinite."""


class CheckpointMismatchError(MonaiRDError, ValueError):
    """A checkpoint was written by another configuration or run than the one loading it."""


class OutputFolderError(MonaiRDError, FileExistsError):
    """An output folder cannot be written, or holds a previous run's files that this run would overwrite."""


class DistributedRunError(MonaiRDError, RuntimeError):
    """A multi-process run cannot start or continue (not launched by torchrun, or rank 0 failed)."""


class SkippedInputsError(MonaiRDError, RuntimeError):
    """Inference could not predict some inputs (unreadable, or not finite); the others were predicted and written."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _raised_by_us(exc: BaseException) -> bool:
    # a builtin error whose message monai_rd wrote (a missing dataset folder, a bad split file, ...)
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep)


def find_rd_error(exc: BaseException | None) -> BaseException | None:
    """The innermost user-fixable error in ``exc``'s cause/context chain, or None.

    That is a :class:`MonaiRDError`, or a ``ValueError``/``OSError``/``KeyError`` raised by monai_rd's own code.
    """
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MonaiRDError) or (isinstance(exc, (ValueError, OSError, KeyError)) and _raised_by_us(exc)):
            found = exc
        exc = exc.__cause__ or exc.__context__
    return found


def _hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    err = find_rd_error(exc)
    if err is None or os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
        sys.__excepthook__(exc_type, exc, tb)
        return
    last = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    where = f" (raised in {last[0].filename}:{last[0].lineno})" if last else ""
    sys.stderr.write(
        f"\nmonai_rd: {type(err).__name__}: {err}\n"
        f"[set {TRACEBACK_ENV}=1 for the full traceback{where}]\n"
    )


def install_excepthook() -> None:
    """Show an uncaught :class:`MonaiRDError` as the top-level message of the process (idempotent)."""
    if sys.excepthook is not _hook:
        sys.excepthook = _hook
