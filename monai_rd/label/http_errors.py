"""HTTP answers for a client's mistakes: a status and the reason, never a bare "Internal Server Error".

MONAI Label's endpoints turn any exception other than FastAPI's ``HTTPException`` into HTTP 500 without a reason.
The app and its tasks raise :func:`http_error` instead, and :func:`refusal` maps monai_rd's own errors:

- 400: the request names something that is not an id (a path separator, ``..``, an absolute path);
- 404: an unknown image, label, model, strategy or scoring method;
- 409: the model cannot answer (no ``model.pt`` trained yet, or one that does not load strictly);
- 422: the request's content cannot be used (an unreadable upload, a label naming an unknown class, a label map
  off the image's grid, a bad option value).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException

from monai_rd.errors import CheckpointMismatchError, DataCheckError, OptionError, find_rd_error

__all__ = ["MissingModelError", "http_error", "refusal"]


class MissingModelError(FileNotFoundError):
    """No ``model.pt`` has been trained or published for the model yet."""


def http_error(status: int, reason: str) -> HTTPException:
    """An ``HTTPException`` whose ``detail`` is ``reason`` (FastAPI answers ``{"detail": reason}``)."""
    return HTTPException(status_code=status, detail=reason)


def refusal(error: BaseException, default: int = 422, redact: Callable[[str], str] | None = None) -> HTTPException:
    """The HTTP answer to ``error`` raised while serving a request.

    Args:
        error: an ``HTTPException`` (returned as it is) or any error of the request's processing; MONAI's wrappers
            (``applying transform ...``) are looked through to monai_rd's own error.
        default: the status for an error that names no model problem (the request's content was unusable).
        redact: applied to the reason (e.g. a :class:`~monai_rd.label.redaction.PathRedactor`: a reader's message
            names the file it could not read).

    Returns:
        The ``HTTPException`` to raise: 409 for a missing or mismatched model, 422 for a data or option error,
        else ``default``; the reason is the innermost monai_rd error's message, else the error's own.
    """
    redact = redact or (lambda text: text)
    if isinstance(error, HTTPException):
        return http_error(error.status_code, redact(str(error.detail)))
    found = find_rd_error(error) or error
    if isinstance(found, (MissingModelError, CheckpointMismatchError)):
        return http_error(409, redact(f"{type(found).__name__}: {found}"))
    if isinstance(found, (DataCheckError, OptionError)):
        return http_error(422, redact(f"{type(found).__name__}: {found}"))
    root = found
    while root.__cause__ is not None or root.__context__ is not None:  # MONAI's "applying transform" wrappers
        root = root.__cause__ or root.__context__
    return http_error(default, redact(f"{type(root).__name__}: {root}"))
