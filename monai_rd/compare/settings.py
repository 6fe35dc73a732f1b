"""What each run of a comparison was made with, recorded in its folder, so a rerun with other settings is never
tabulated as if it were made with the new ones.

``python -m monai_rd.compare`` skips a run that already has test metrics. Rerun into the same ``--out`` with other
``--set`` values (more epochs, another image size or datalist), that would tabulate the old runs under the new
settings. Each run's folder therefore gets ``settings.json`` (the bundle, method, student, seed, the ``--set``
values, the bundle's own option values, and the SHA-256 of every file a ``--set`` value names, e.g. a datalist)
when it starts, and the grid refuses to go on while any run in ``--out`` was made with other settings, or with
unknown ones (a run folder without ``settings.json``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from monai_rd.errors import OutputFolderError
from monai_rd.utils.files import file_sha256, write_json_atomic

__all__ = ["SETTINGS_FILE", "check_recorded_settings", "record_settings", "run_settings"]

SETTINGS_FILE = "settings.json"
_SHOWN = 4


def _plain(value: Any) -> bool:
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, list):
        return all(_plain(v) and not isinstance(v, (list, dict)) for v in value)
    return value is None or isinstance(value, (bool, int, float))


def bundle_options(bundle: str) -> dict[str, Any]:
    """The plain top-level values (the options, not the components or expressions) of the bundle's train.json."""
    path = os.path.join(bundle, "configs", "train.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        config = json.load(f)
    return {k: v for k, v in config.items() if not k.startswith("_") and _plain(v)}


def run_settings(bundle: str, run: Any, overrides: Mapping[str, str]) -> dict[str, Any]:
    """The settings that make ``run`` (a :class:`~monai_rd.compare.grid.GridRun`) what it is.

    Args:
        bundle: the bundle folder.
        run: the run (its method, student and seed).
        overrides: the grid's ``--set`` values.

    Returns:
        ``{"bundle", "method", "student", "seed", "set", "bundle_options", "files"}``, JSON-serialisable.
    """
    return {
        "bundle": os.path.abspath(bundle),
        "method": run.method,
        "student": run.student,
        "seed": run.seed,
        "set": {k: str(v) for k, v in sorted(overrides.items())},
        "bundle_options": bundle_options(bundle),
        "files": {k: file_sha256(v) for k, v in sorted(overrides.items()) if os.path.isfile(str(v))},
    }


def _differences(recorded: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: recorded {old!r}, now {new!r}")
    return out


def check_recorded_settings(out: str, runs: Sequence[Any], current: Mapping[Any, Mapping[str, Any]]) -> None:
    """Refuse to go on when a run folder holds a run made with other settings than ``current[run]``.

    Args:
        out: the comparison's folder (for the message).
        runs: the grid's runs.
        current: each run's settings now (:func:`run_settings`).

    Raises:
        OutputFolderError: naming each such run and what differs (or that its settings are unknown), and what to do.
    """
    stale = []
    for run in runs:
        path = os.path.join(run.folder, SETTINGS_FILE)
        if os.path.isfile(path):
            with open(path) as f:
                diff = _differences(json.load(f), current[run])
        elif os.path.isdir(run.folder) and os.listdir(run.folder):
            diff = [f"no {SETTINGS_FILE}: made by an earlier monai_rd, with settings unknown"]
        else:
            continue
        if diff:
            stale.append(f"{run.label}: " + "; ".join(diff[:_SHOWN]) + (" ..." if len(diff) > _SHOWN else ""))
    if stale:
        raise OutputFolderError(
            f"{out} holds {len(stale)} run(s) made with other settings than this command's, which would be tabulated "
            "as its results:\n  " + "\n  ".join(stale) + f"\nUse another --out for these settings (the runs in {out} "
            "stay as they are), or rerun with the recorded settings."
        )


def record_settings(run: Any, settings: Mapping[str, Any]) -> None:
    """Write ``settings`` to the run's ``settings.json`` (before it trains)."""
    os.makedirs(run.folder, exist_ok=True)
    write_json_atomic(dict(settings), os.path.join(run.folder, SETTINGS_FILE))
