"""Strict, offline-friendly checkpoint handling for the teacher registry.

Weights come either from a local path or from a download into the standard cache
(``torch.hub.get_dir()/checkpoints``, or the Hugging Face cache for hub-hosted files). A file already placed at
the cache location is used without any network access. A download that cannot happen fails with a message that
names the file the user must place and where. Checkpoints are read with ``torch.load(weights_only=True)`` or
``safetensors``; an optional SHA-256 is checked. Loading into a model is strict: any missing, unexpected or
mis-shaped key raises an error naming the keys, never a silent fallback to other weights.
"""

from __future__ import annotations

import fnmatch
import os
import pickle
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from monai_rd.errors import MonaiRDError
from monai_rd.utils.files import atomic_path, file_sha256

__all__ = [
    "CheckpointKeyError",
    "UnsafeCheckpointError",
    "WeightsUnavailableError",
    "cache_dir",
    "check_sha256",
    "checked_file",
    "extract_state_dict",
    "load_into",
    "load_state_dict_file",
    "read_state_dict",
    "resolve_weights",
    "select_prefix",
]

_MAX_KEYS_SHOWN = 20
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")


class WeightsUnavailableError(MonaiRDError, FileNotFoundError):
    """The checkpoint is neither on disk nor downloadable; the message says which file to place where."""


class CheckpointKeyError(MonaiRDError, RuntimeError):
    """A checkpoint does not match the architecture key for key (strict loading)."""


class UnsafeCheckpointError(MonaiRDError, RuntimeError):
    """A weights file pickles Python objects (a whole model, a training checkpoint with extra objects), which
    monai_rd does not unpickle: loading it would run code from the file."""


def cache_dir() -> Path:
    """Directory where downloaded (or manually placed) teacher checkpoints live.

    Returns:
        ``torch.hub.get_dir()/checkpoints`` (honours ``TORCH_HOME`` and ``torch.hub.set_dir``).
    """
    return Path(torch.hub.get_dir()) / "checkpoints"


def check_sha256(path: str | os.PathLike, expected: str | None) -> None:
    """Verify a file's SHA-256 when an expected digest is given.

    Args:
        path: the checkpoint file.
        expected: expected hex digest (a unique prefix of at least 8 characters is accepted); None skips the check.

    Raises:
        ValueError: ``expected`` is shorter than 8 hex characters.
        RuntimeError: the digest differs (the file is corrupt, truncated or not the published one).
    """
    if expected is None:
        return
    expected = expected.strip().lower()
    if len(expected) < 8:
        raise ValueError(f"sha256 {expected!r} is too short; give at least 8 hex characters.")
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise RuntimeError(
            f"SHA-256 mismatch for {path}: expected {expected}, got {actual}. "
            "The file is corrupt, incomplete or not the published checkpoint; delete it and download it again."
        )


def checked_file(path: str | os.PathLike, *, name: str, sha256: str | None = None) -> Path:
    """A checkpoint file given by the user: it must exist, and match ``sha256`` when one is given.

    Args:
        path: the file.
        name: teacher name, for messages.
        sha256: optional expected SHA-256 (see :func:`check_sha256`).

    Returns:
        The path, with ``~`` expanded.

    Raises:
        FileNotFoundError: the file does not exist.
        RuntimeError: the SHA-256 does not match.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint for teacher {name!r} not found: {path} does not exist or is not a file.")
    check_sha256(path, sha256)
    return path


def _download_url(url: str, target: Path) -> None:
    with atomic_path(target, suffix=".partial") as tmp:
        torch.hub.download_url_to_file(url, tmp, progress=False)


def resolve_weights(
    weights: str | os.PathLike | None,
    *,
    filename: str,
    name: str,
    url: str | None = None,
    hf_repo: str | None = None,
    hf_filename: str | None = None,
    manual: str | None = None,
    sha256: str | None = None,
) -> Path:
    """Find a teacher's checkpoint: a given path, a file already in the cache, or a download into the cache.

    Args:
        weights: a local file given by the user, or None to use the cache / download.
        filename: the file's name inside :func:`cache_dir` (may contain a sub-folder, e.g. ``"lvm_med/x.pth"``).
        name: teacher name, for messages.
        url: direct download URL (``torch.hub.download_url_to_file`` into the cache), if any.
        hf_repo: Hugging Face repository id holding the file, if any.
        hf_filename: file name inside ``hf_repo`` (defaults to the base name of ``filename``).
        manual: where a human can get the file when there is no automatic source (shown in the error).
        sha256: optional expected SHA-256 of the file.

    Returns:
        Path of the checkpoint on disk.

    Raises:
        FileNotFoundError: ``weights`` points to a file that does not exist.
        WeightsUnavailableError: no local file and the download is impossible (no source or no network); the
            message names the file to place and the folder to place it in.
        RuntimeError: the SHA-256 does not match.
    """
    if weights is not None:
        return checked_file(weights, name=name, sha256=sha256)

    target = cache_dir() / filename
    if target.is_file():
        check_sha256(target, sha256)
        return target

    place = f"place `{Path(filename).name}` at {target} (or pass weights=<path to the file>)"
    error: Exception | None = None
    if url is not None:
        try:
            _download_url(url, target)
        except Exception as e:  # network errors come in many types (URLError, OSError, HTTPError, ...)
            error = e
        else:
            check_sha256(target, sha256)
            return target
    elif hf_repo is not None:
        try:
            from huggingface_hub import hf_hub_download

            local = hf_hub_download(repo_id=hf_repo, filename=hf_filename or Path(filename).name)
        except Exception as e:  # offline, gated repo, missing package, ...
            error = e
        else:
            check_sha256(local, sha256)
            return Path(local)

    source = url or (
        f"https://huggingface.co/{hf_repo}/blob/main/{hf_filename or Path(filename).name}" if hf_repo else None
    )
    source = source or manual or "the authors' release page"
    reason = f" ({type(error).__name__}: {error})" if error is not None else ""
    raise WeightsUnavailableError(
        f"weights for teacher {name!r} are not available offline and could not be downloaded{reason}. "
        f"Download `{Path(filename).name}` from {source} and {place}."
    )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file safely.

    ``.safetensors`` files are read with safetensors; everything else with ``torch.load(weights_only=True)``
    (plain tensors and containers only, no pickled code).

    Args:
        path: checkpoint file.

    Returns:
        The loaded object (usually a mapping of key to tensor, possibly nested, see :func:`extract_state_dict`).

    Raises:
        UnsafeCheckpointError: the file pickles Python objects (names the first one, says what the file probably is
            and how to convert it to a plain ``state_dict`` or safetensors).
        CheckpointKeyError: the file is not a checkpoint torch can read (a TorchScript archive, or damaged).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for a damaged or foreign file
            raise CheckpointKeyError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e}).") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"the Python object `{found.group(1)}`" if found else "Python objects"
        raise UnsafeCheckpointError(
            f"{path} is not a plain weights file: it pickles {what}, and monai_rd loads weights without unpickling "
            "(that would run code from the file). It is probably a whole saved model (torch.save(model)) or a "
            "training checkpoint with extra objects. Convert it once, with the code that saved it, where you trust "
            "the file: load the model there and save its weights alone, `torch.save(model.state_dict(), "
            "'weights.pt')` or `safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')`; then pass "
            "that file."
        ) from None  # torch's text suggests weakening the load: not an option here
    except Exception as e:
        raise CheckpointKeyError(
            f"{path} cannot be read as a checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "Only plain state_dict files (tensors in dicts/lists, or .safetensors) are accepted; for a TorchScript "
            "file use the name 'torchscript:<path>'."
        ) from e


def extract_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Unwrap a training checkpoint to its tensor mapping.

    Follows the usual nesting (``{"state_dict": {...}}``, ``{"model": {...}}``, ...) until a mapping whose values
    are all tensors is reached.

    Args:
        obj: object returned by :func:`load_state_dict_file`.
        source: file name for error messages.

    Returns:
        Flat mapping of key to tensor.

    Raises:
        CheckpointKeyError: no tensor mapping is found.
    """
    for _ in range(4):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, Mapping):
            nested = next((obj[k] for k in _NESTED_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if nested is not None:
                obj = nested
                continue
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
        break
    keys = list(obj.keys())[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointKeyError(f"{source} holds no state_dict of tensors (top-level keys: {keys}).")


def select_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keep the keys under ``prefix`` and strip it (e.g. the ``visual.`` tower of a CLIP checkpoint).

    Args:
        state: full state dict.
        prefix: key prefix including the trailing dot.

    Returns:
        Sub-dict with the prefix removed.
    """
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_state_dict(
    path: str | os.PathLike, *, strip: str | None = None, select: str | Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state dict in the published layout of one model.

    Args:
        path: checkpoint file (see :func:`load_state_dict_file`; nesting is unwrapped by :func:`extract_state_dict`).
        strip: prefix removed from every key that has it (e.g. a DistributedDataParallel ``"module."``).
        select: prefix(es), tried in order after ``strip``: the first one some key starts with keeps only the keys
            under it, with the prefix removed (see :func:`select_prefix`); when no key has any of them, all keys
            are kept.

    Returns:
        Mapping of key to tensor.

    Raises:
        RuntimeError: the file cannot be read safely.
        CheckpointKeyError: the file holds no state dict of tensors.
    """
    state = extract_state_dict(load_state_dict_file(path), source=str(path))
    if strip:
        state = {k.removeprefix(strip): v for k, v in state.items()}
    for prefix in (select,) if isinstance(select, str) else select:
        if prefix and any(k.startswith(prefix) for k in state):
            return select_prefix(state, prefix)
    return state


def _shorten(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = f" ... and {len(keys) - _MAX_KEYS_SHOWN} more" if len(keys) > _MAX_KEYS_SHOWN else ""
    return f"[{shown}{more}]"


def load_into(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    ignore: Iterable[str] = (),
    rename: Callable[[str], str] | None = None,
) -> nn.Module:
    """Load a state dict strictly, naming every missing, unexpected or mis-shaped key.

    Args:
        model: the architecture.
        state: tensors in the published key layout (after prefix selection).
        source: the file (or description) the weights came from, for messages.
        ignore: ``fnmatch`` patterns of checkpoint keys that are deliberately not used (e.g. a classifier head of a
            backbone teacher). Only unexpected keys can be ignored; every key of the model must be present.
        rename: optional key mapping applied before matching (published layout -> module layout).

    Returns:
        The model, with its weights loaded.

    Raises:
        CheckpointKeyError: keys are missing, unexpected or have the wrong shape.
    """
    patterns = tuple(ignore)
    if rename is not None:
        state = {rename(k): v for k, v in state.items()}
    expected = model.state_dict()
    unexpected = [k for k in state if k not in expected and not any(fnmatch.fnmatchcase(k, p) for p in patterns)]
    missing = [k for k in expected if k not in state]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) {_shorten(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) {_shorten(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) [{'; '.join(shapes[:_MAX_KEYS_SHOWN])}]")
        raise CheckpointKeyError(
            f"checkpoint {source} does not match {type(model).__name__}: " + "; ".join(parts) + ". "
            "Check that the file is the published checkpoint for this teacher (strict loading: no key may be "
            "missing or unexpected)."
        )
    model.load_state_dict({k: state[k] for k in expected}, strict=True)
    return model


def copy_into_cache(path: str | os.PathLike, filename: str) -> Path:
    """Copy a local file to the cache location that :func:`resolve_weights` looks up (helper for users/tests).

    Args:
        path: existing checkpoint.
        filename: name (optionally with a sub-folder) inside :func:`cache_dir`.

    Returns:
        The destination path.
    """
    dst = cache_dir() / filename
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, dst)
    return dst
