"""Typed bundle options: what ``python -m monai.bundle run --key value`` passes, checked and converted.

MONAI's command line (python-fire) passes ``--distill false`` as the *string* ``"false"``, which Python treats as
true, and ``--phi_hidden null`` as the string ``"null"``. The recipe therefore keeps each user-facing option as
typed and reads it only through these converters (``"opt": {"distill": "$monai_rd.bundle.as_bool(@distill,
'distill')"}``), so a flag means what the user typed, and a value it cannot take stops the run before any work
with a message that names the option.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from typing import Any

from monai_rd.errors import OptionError

__all__ = [
    "as_bool",
    "as_float",
    "as_float_list",
    "as_int",
    "as_int_list",
    "as_optional_float",
    "as_optional_float_list",
    "as_optional_int",
    "as_optional_int_list",
    "as_optional_str",
    "epoch_length",
]

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")
_NONE = ("none", "null", "")


def as_bool(value: Any, name: str) -> bool:
    """``True``/``False``, ``true``/``false`` (any case), ``1``/``0`` and ``yes``/``no`` as a bool.

    Args:
        value: the option's value as the config or the command line gives it.
        name: the option's name, for the error message.

    Returns:
        The boolean.

    Raises:
        OptionError: any other value (e.g. ``2``, ``"flase"``, ``None``).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise OptionError(f"--{name} must be true or false (also True/False/1/0), got {value!r}.")


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE)


def as_int(value: Any, name: str, min_value: int | None = None) -> int:
    """An integer option; ``"8"`` and ``8.0`` are accepted, ``8.5`` and ``"eight"`` are not.

    Args:
        value: the option's value.
        name: the option's name, for the error message.
        min_value: the smallest allowed value.

    Returns:
        The integer.

    Raises:
        OptionError: not an integer, a bool, or below ``min_value``.
    """
    out: int | None = None
    if not isinstance(value, bool):
        try:
            f = float(value)
            if math.isfinite(f) and f == int(f):
                out = int(f)
        except (TypeError, ValueError):
            out = None
    if out is None:
        raise OptionError(f"--{name} must be an integer, got {value!r}.")
    if min_value is not None and out < min_value:
        raise OptionError(f"--{name} must be at least {min_value}, got {out}.")
    return out


def as_float(value: Any, name: str, min_value: float | None = None, positive: bool = False) -> float:
    """A finite float option.

    Args:
        value: the option's value.
        name: the option's name, for the error message.
        min_value: the smallest allowed value.
        positive: the value must be > 0.

    Returns:
        The float.

    Raises:
        OptionError: not a finite number, a bool, below ``min_value``, or not positive when required.
    """
    try:
        out = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        out = math.nan
    if not math.isfinite(out):
        raise OptionError(f"--{name} must be a finite number, got {value!r}.")
    if positive and out <= 0:
        raise OptionError(f"--{name} must be positive, got {out}.")
    if min_value is not None and out < min_value:
        raise OptionError(f"--{name} must be at least {min_value}, got {out}.")
    return out


def as_optional_int(value: Any, name: str, min_value: int | None = None) -> int | None:
    """Like :func:`as_int`, but ``None``, ``null`` and ``none`` mean "not set" and give None."""
    return None if _is_none(value) else as_int(value, name, min_value)


def as_optional_float(
    value: Any, name: str, positive: bool = False, min_value: float | None = None
) -> float | None:
    """Like :func:`as_float`, but ``None``, ``null`` and ``none`` mean "not set" and give None."""
    return None if _is_none(value) else as_float(value, name, min_value=min_value, positive=positive)


def _as_list(value: Any, name: str, length: int | None, example: str) -> list:
    """A list/tuple option (or its text, e.g. ``"[96,96,96]"`` from a shell) as a list of the given length."""
    items = value
    if isinstance(value, str):
        try:
            items = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            items = value
    if isinstance(items, (int, float)) and not isinstance(items, bool) and length is not None:
        items = [items] * length  # one number for every axis, as MONAI's transforms take it
    if isinstance(items, str) or not isinstance(items, Sequence) or len(items) == 0:
        raise OptionError(f"--{name} must be a list, e.g. {example}; got {value!r}.")
    if length is not None and len(items) != length:
        raise OptionError(f"--{name} must have {length} values (one per axis), e.g. {example}; got {value!r}.")
    return list(items)


def as_int_list(value: Any, name: str, length: int | None = None, min_value: int | None = None) -> list[int]:
    """A list of integers, e.g. a window size per axis; ``"[96,96,64]"`` as typed in a shell is accepted.

    Args:
        value: the option's value.
        name: the option's name, for the error message.
        length: the number of values required (a single number is repeated to it); None: any.
        min_value: the smallest allowed value of each.

    Returns:
        The integers.

    Raises:
        OptionError: not a list of integers, of another length, or a value below ``min_value``.
    """
    items = _as_list(value, name, length, "[96,96,96]")
    return [as_int(v, f"{name}[{i}]", min_value) for i, v in enumerate(items)]


def as_float_list(value: Any, name: str, length: int | None = None, positive: bool = False) -> list[float]:
    """A list of finite floats, e.g. a voxel size per axis in mm or an intensity window.

    Args:
        value: the option's value.
        name: the option's name, for the error message.
        length: the number of values required (a single number is repeated to it); None: any.
        positive: each value must be > 0.

    Returns:
        The floats.

    Raises:
        OptionError: not a list of finite numbers, of another length, or a value not positive when required.
    """
    items = _as_list(value, name, length, "[1.5,1.5,2.0]")
    return [as_float(v, f"{name}[{i}]", positive=positive) for i, v in enumerate(items)]


def as_optional_int_list(
    value: Any, name: str, length: int | None = None, min_value: int | None = None
) -> list[int] | None:
    """Like :func:`as_int_list`, but ``None``, ``null`` and ``none`` mean "not set" and give None."""
    return None if _is_none(value) else as_int_list(value, name, length, min_value)


def as_optional_float_list(
    value: Any, name: str, length: int | None = None, positive: bool = False
) -> list[float] | None:
    """Like :func:`as_float_list`, but ``None``, ``null`` and ``none`` mean "not set" and give None."""
    return None if _is_none(value) else as_float_list(value, name, length, positive)


def as_optional_str(value: Any, name: str) -> str | None:
    """A text option, or None for ``None``, ``null``, ``none`` and the empty string.

    Raises:
        OptionError: neither text nor None (e.g. a number or a list).
    """
    if _is_none(value):
        return None
    if not isinstance(value, str):
        raise OptionError(f"--{name} must be text (or null), got {value!r}.")
    return value.strip()


def epoch_length(num_items: int, batch_size: int) -> int:
    """Iterations per epoch of a loader that drops the last incomplete batch.

    Args:
        num_items: training items.
        batch_size: items per batch.

    Returns:
        ``num_items // batch_size``.

    Raises:
        OptionError: the batch is larger than the training set, so an epoch would have no iteration.
    """
    if batch_size > num_items:
        raise OptionError(
            f"--batch_size {batch_size} is larger than the {num_items} training images, so an epoch would have no "
            f"iteration (the last incomplete batch is dropped); use --batch_size {max(num_items, 1)} or less."
        )
    return num_items // batch_size
