"""Refuse an unknown ``--key`` of a bundle command, naming the closest known options.

MONAI's bundle command line (``python -m monai.bundle run``, python-fire) takes any ``--key value`` and writes it
into the config, where a mistyped option (``--epoch 2`` for ``--epochs 2``) becomes a new, unused key and the run
goes on with the default. :func:`check_command_line`, the first entry of every recipe's ``initialize`` list after
the excepthook, stops such a run before any work::

    monai_rd: OptionError: unknown option --epoch: did you mean --epochs? ...

A key is known when it is

- an id of the config files the command reads (merged as MONAI merges them): a top-level option (``--epochs``) or
  a nested id (``--train#augmentation``, ``--validate#handlers#1``);
- a new argument of an existing component (a nested id whose parent has a ``_target_``, e.g.
  ``--validate#dataset#cache_rate``): the component itself refuses an argument it does not take;
- an argument of MONAI's own commands (``config_file``, ``meta_file``, ``logging_file``, ``args_file``, ``run_id``,
  ``init_id``, ``final_id``, ``tracking``, ..., read from their signatures), or under ``_meta_``; with
  ``--tracking``, the settings MONAI's tracking adds (``experiment_name``, ``run_name``, ...).

Where the overrides are seen: the command is found on the call stack (MONAI's ``create_workflow``, which
``monai.bundle run`` calls from the command line, from Python, and in every ``torchrun`` worker; or an exporter such
as ``ckpt_export``), whose arguments are exactly what MONAI applied, ``--args_file`` values included. When it is not
there (MONAI changed), the process's own command line is parsed (``sys.argv`` of ``python -m monai.bundle``, and
its ``--args_file``). A ``ConfigWorkflow`` built directly in Python has neither: its overrides are the caller's
keyword arguments, which :func:`check_overrides` checks when called with them. ``compare --set`` and
``monai_rd.export``'s overrides are checked by the same :func:`check_overrides`.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle import scripts as bundle_scripts
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS
from monai.utils import ensure_tuple

from monai_rd.errors import OptionError

__all__ = [
    "EXPORT_COMMANDS",
    "RUN_ARGUMENTS",
    "check_command_line",
    "check_overrides",
    "config_ids",
    "parse_bundle_argv",
    "running_command",
]

_WORKFLOW_COMMANDS = (bundle_scripts.run, bundle_scripts.run_workflow, bundle_scripts.create_workflow)
_EXPORT_COMMANDS = (bundle_scripts.ckpt_export, bundle_scripts.onnx_export, bundle_scripts.trt_export)
#: MONAI's commands that embed the config's ``_meta_`` in the exported model
EXPORT_COMMANDS = tuple(f.__name__ for f in _EXPORT_COMMANDS)


def _parameters(*functions: Any) -> frozenset[str]:
    return frozenset(
        name
        for f in functions
        for name, p in inspect.signature(f).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self"
    )


#: the arguments of MONAI's ``run`` (and of the workflow it builds) themselves, never config overrides
RUN_ARGUMENTS = _parameters(*_WORKFLOW_COMMANDS, ConfigWorkflow.__init__)
_MAX_SUGGESTIONS = 3


def config_ids(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every id of a config (MONAI's ``a#b#0`` form, list positions as numbers) -> its value."""
    out: dict[str, Any] = {}
    items = config.items() if isinstance(config, Mapping) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        cid = f"{prefix}#{key}" if prefix else str(key)
        out[cid] = value
        out.update(config_ids(value, cid))
    return out


def _tracking_keys(tracking: Any) -> set[str]:
    if tracking is None:
        return set()
    try:
        settings = (
            DEFAULT_EXP_MGMT_SETTINGS[tracking]
            if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS
            else tracking if isinstance(tracking, Mapping) else ConfigParser.load_config_files(tracking)
        )
    except Exception:  # MONAI reports a bad tracking file itself, with its own message
        return set()
    return set(settings.get("configs", {})) if isinstance(settings, Mapping) else set()


def _known(key: str, ids: Mapping[str, Any], extra: set[str]) -> bool:
    if key in ids or key in extra or key in RUN_ARGUMENTS or key.split("#")[0] == "_meta_":
        return True
    parent = key.rpartition("#")[0]
    # a new argument of a component: the component refuses one it does not take when it is built
    return bool(parent) and isinstance(ids.get(parent), Mapping) and "_target_" in ids[parent]


def _suggestions(key: str, ids: Mapping[str, Any], extra: set[str]) -> list[str]:
    parent, _, last = key.rpartition("#")
    if parent and isinstance(ids.get(parent), (Mapping, list)):  # a typo of one level: match among the siblings
        siblings = [i.rpartition("#")[2] for i in ids if i.rpartition("#")[0] == parent]
        return [f"{parent}#{m}" for m in difflib.get_close_matches(last, siblings, n=_MAX_SUGGESTIONS, cutoff=0.6)]
    depth = key.count("#")
    candidates = [i for i in ids if i.count("#") == depth] + ([] if parent else sorted(extra | RUN_ARGUMENTS))
    return difflib.get_close_matches(key, candidates, n=_MAX_SUGGESTIONS, cutoff=0.6)


def check_overrides(
    overrides: Iterable[str],
    config_file: str | Sequence[str] | Mapping[str, Any],
    tracking: Any = None,
    source: str = "the command line",
) -> None:
    """Refuse every key of ``overrides`` that the config (files) does not know, with the closest known ones.

    Args:
        overrides: the ``--key`` names given (without ``--``).
        config_file: the config file(s) the command reads, merged in order as MONAI merges them, or the config.
        tracking: the command's ``--tracking`` (its settings' keys are known then).
        source: where the keys came from, for the message.

    Raises:
        OptionError: naming each unknown key, the closest known ones, and the config file(s).
    """
    config = config_file if isinstance(config_file, Mapping) else ConfigParser.load_config_files(config_file)
    ids, extra = config_ids(config), _tracking_keys(tracking)
    unknown = [k for k in dict.fromkeys(str(k).lstrip("-") for k in overrides) if not _known(k, ids, extra)]
    if not unknown:
        return
    lines = []
    for key in unknown:
        close = _suggestions(key, ids, extra)
        hint = f": did you mean {' or '.join(f'--{c}' for c in close)}?" if close else ""
        lines.append(f"--{key}{hint}")
    files = "the config" if isinstance(config_file, Mapping) else ", ".join(map(str, ensure_tuple(config_file)))
    raise OptionError(
        f"unknown option(s) on {source}: " + "; ".join(lines) + f" (not in {files}). Each --key must be an option "
        "of the bundle (the plain values at the top of its configs/train.json or inference.json), a config id such "
        "as --train#augmentation, or an argument of MONAI's command (--config_file, --meta_file, --args_file, ...); "
        "a mistyped option would otherwise be ignored silently."
    )


def _truthy(token: str) -> bool:
    return token.startswith("--") and len(token) > 2


def parse_bundle_argv(argv: Sequence[str]) -> tuple[str | None, dict[str, Any]]:
    """The command and keyword arguments of a ``python -m monai.bundle <command> ...`` command line, as python-fire
    reads them (``--key value``, ``--key=value``, a bare ``--flag``; positional values skipped), with the values of
    an ``--args_file`` under those given (MONAI's ``update_kwargs``).

    Args:
        argv: ``sys.argv`` of the process (``argv[0]`` is ``.../monai/bundle/__main__.py``).

    Returns:
        ``(command, {key: value})``; ``(None, {})`` for another program.
    """
    if len(argv) < 2 or not os.path.normpath(argv[0]).endswith(os.path.join("monai", "bundle", "__main__.py")):
        return None, {}
    tokens, kwargs, i = list(argv[2:]), {}, 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not _truthy(token):
            continue  # a positional argument (e.g. run's run_id)
        key, sep, value = token[2:].partition("=")
        if not sep:
            has_value = i < len(tokens) and not _truthy(tokens[i])
            value = tokens[i] if has_value else True
            i += has_value
        kwargs[key.replace("-", "_")] = value
    args_file = kwargs.get("args_file")
    if isinstance(args_file, str) and os.path.isfile(args_file):
        kwargs = {**ConfigParser.load_config_file(args_file), **kwargs}
    return argv[1], kwargs


def _from_stack() -> tuple[str, Any, dict[str, Any]] | None:
    """``(command, config files, the arguments besides them)`` of the MONAI bundle command on the call stack (the
    workflow commands as ``run``), or None."""
    exporters = {f.__code__: f.__name__ for f in _EXPORT_COMMANDS}
    frame = sys._getframe(1)
    while frame is not None:
        local = frame.f_locals
        if frame.f_code is bundle_scripts.create_workflow.__code__ and "config_file" in local:
            if isinstance(local.get("_args"), dict):
                return "run", local["config_file"], dict(local["_args"])
        if frame.f_code in exporters and isinstance(local.get("_args"), dict) and "config_file_" in local:
            return exporters[frame.f_code], local["config_file_"], dict(local["_args"])
        frame = frame.f_back
    return None


def running_command() -> str | None:
    """The MONAI bundle command this config is being run by (``"run"`` for ``run``/``run_workflow``, or an
    exporter's name such as ``"ckpt_export"``), from the call stack, else from ``sys.argv``; None in Python."""
    found = _from_stack()
    return found[0] if found is not None else parse_bundle_argv(sys.argv)[0]


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Refuse an unknown ``--key`` of the bundle command running this config (a recipe's ``initialize`` entry).

    The command's config files and overrides are read from MONAI's command on the call stack, else from
    ``argv`` (default ``sys.argv``) when the process is ``python -m monai.bundle``; otherwise (a ``ConfigWorkflow``
    built in Python) there is nothing to check here.

    Args:
        argv: the command line to read when no MONAI command is on the stack (tests pass one).

    Raises:
        OptionError: an unknown key, with the closest known ones (see :func:`check_overrides`).
    """
    found = _from_stack() if argv is None else None
    if found is None:
        command, kwargs = parse_bundle_argv(sys.argv if argv is None else argv)
        if "config_file" not in kwargs:
            return
        own = _parameters(getattr(bundle_scripts, command)) if hasattr(bundle_scripts, command) else set()
        found = (command, kwargs["config_file"], {k: v for k, v in kwargs.items() if k not in own})
    _, config_file, kwargs = found
    if isinstance(config_file, str) and config_file.strip().startswith("["):
        config_file = ast.literal_eval(config_file)  # "['train.json','evaluate.json']", as fire reads it
    check_overrides(
        [k for k in kwargs if k not in RUN_ARGUMENTS], config_file, tracking=kwargs.get("tracking"),
        source="the bundle command line",
    )
