"""Errors monai_rd raises for problems a user can fix, and a hook that shows them plainly on the command line.

MONAI wraps every exception raised while a bundle config is evaluated (``Failed to evaluate ConfigExpression``,
``Failed to instantiate``), so the last line of a ``python -m monai.bundle run`` traceback is MONAI's, not the
message that says what to fix. :func:`install_excepthook` (run by every bundle's ``initialize``) prints the
innermost :class:`MonaiRDError` of an uncaught exception's chain as the top-level message instead, and keeps
the full traceback one environment variable away.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from types import TracebackType

__all__ = [
    "CheckpointMismatchError",
    "DataCheckError",
    "DiskFullError",
    "DistributedRunError",
    "MissingModelError",
    "MonaiRDError",
    "NonFiniteError",
    "OptionError",
    "OutputFolderError",
    "SkippedInputsError",
    "disk_full",
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


class MissingModelError(MonaiRDError, FileNotFoundError):
    """A trained model's file is missing where the run's other files are (e.g. ``model_meta.json`` without
    ``model.pt``)."""


class OutputFolderError(MonaiRDError, FileExistsError):
    """An output folder cannot be written, or holds a previous run's files that this run would overwrite."""


class DiskFullError(MonaiRDError, OSError):
    """The disk a run writes to is full, or would be before the run's next checkpoint (names the folder)."""


class DistributedRunError(MonaiRDError, RuntimeError):
    """A multi-process run cannot start or continue (not launched by torchrun, or rank 0 failed)."""


class SkippedInputsError(MonaiRDError, RuntimeError):
    """Inference could not predict some inputs (unreadable, or not finite); the others were predicted and written."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _raised_by_us(exc: BaseException) -> bool:
    # a builtin error whose message monai_rd wrote (a missing dataset folder, a bad split file, ...)
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep)


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# what torch's zip writer (torch.save) says when a write fails for want of space: it raises RuntimeError, not OSError
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "PytorchStreamWriter failed writing file")


def disk_full(exc: BaseException) -> DiskFullError | None:
    """``exc`` as a :class:`DiskFullError` when it says the disk is full (``ENOSPC``/``EDQUOT``, or torch's failed
    write), else None."""
    if isinstance(exc, DiskFullError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        where = f"writing {exc.filename}" if exc.filename else "writing a file"
    elif isinstance(exc, RuntimeError) and any(t in str(exc) for t in _DISK_FULL_TEXT):
        where = "saving a checkpoint or model (torch.save)"
    else:
        return None
    err = DiskFullError(
        f"the disk is full: {where} failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        "Free space on the disk of the run's folders (`df -h <folder>`), or write them to another disk (--ckpt_dir, "
        "--output_dir); a training run stopped this way continues with --resume true."
    )
    err.__cause__ = exc
    return err


def find_rd_error(exc: BaseException | None) -> BaseException | None:
    """The innermost user-fixable error in ``exc``'s cause/context chain, or None.

    That is a :class:`MonaiRDError`, a ``ValueError``/``OSError``/``KeyError`` raised by monai_rd's own code, or a
    full disk wherever it was found (as a :class:`DiskFullError`, see :func:`disk_full`).
    """
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        full = disk_full(exc)
        if full is not None:
            found = full
        elif isinstance(exc, MonaiRDError) or (
            isinstance(exc, (ValueError, OSError, KeyError)) and _raised_by_us(exc)
        ):
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
