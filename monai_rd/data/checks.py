"""Checks run once before training, each reporting every problem it finds in one error.

:func:`check_datalist` reads every listed file once with the loader the pipeline uses and checks that it decodes,
its channels and labels, and that no image is in two splits; :func:`check_writable` checks that the output folders
can be written. A bundle calls them in its ``initialize`` list, before any model is built::

    "$monai_rd.data.check_datalist(@datalist, @class_names, multi_label=False)",
    "$monai_rd.data.check_writable(@ckpt_dir, @output_dir)"
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from monai.data import PILReader
from monai.transforms import LoadImage
from monai.utils import convert_to_numpy

from monai_rd.data.datalist import NewDatalist, load_json
from monai_rd.data.pil_modes import convert_to_displayed_mode
from monai_rd.errors import DataCheckError, DiskFullError, OutputFolderError
from monai_rd.utils.constants import SPLITS

__all__ = ["check_datalist", "check_free_space", "check_writable", "default_image_loader", "describe_error"]

logger = logging.getLogger(__name__)

_NO_LABEL = object()
LEAK_FIX = "remove it from all but one split (for a saved split, edit the datalist JSON or delete it to re-split)"
# LoadImage's "cannot find a suitable reader" error appends each reader's traceback, the given reader's first
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", re.MULTILINE)


def default_image_loader() -> LoadImage:
    """The loader :func:`check_datalist` decodes with unless given one.

    MONAI's ``LoadImage`` with ``PILReader(converter=convert_to_displayed_mode)`` tried first (PNG, JPEG, BMP,
    TIFF) and MONAI's default readers as fallback (NIfTI, DICOM, NumPy), channel-first, float32: what a
    ``LoadImaged(keys="image", reader=<that PILReader>, ensure_channel_first=True)`` step yields.
    """
    return LoadImage(reader=PILReader(converter=convert_to_displayed_mode), image_only=True, ensure_channel_first=True)


@dataclass
class _Entry:
    pos: int  # position of the split in ``splits``: problems are reported in split, then item order
    index: int
    split: str
    path: str  # absolute, as listed (shown in messages)
    norm: str  # symlinks resolved, case-normalised: the identity of the file
    label: Any  # _NO_LABEL when the item has none

    @property
    def where(self) -> str:
        return f"{self.split}[{self.index}] {self.path}"


@dataclass
class _FileResult:
    digest: str | None = None  # SHA-256 of the decoded array; None when it did not decode
    problems: list[str] = field(default_factory=list)


_Found = list[tuple[tuple[int, int], str]]  # ((split position, item index), message)


def describe_error(e: BaseException) -> str:
    """An error in one line: its type and first line (for MONAI's "cannot find a suitable reader" error, the
    first reader's own error; under MONAI's "applying transform ..." wrapper, the error it wraps), at most 200
    characters."""
    while isinstance(e, RuntimeError) and str(e).startswith("applying transform") and e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip()
    m = _ERROR_LINE.search(text) if isinstance(e, RuntimeError) else None
    reason = f"{m.group(1)}: {m.group(2)}" if m else f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
    return reason if len(reason) <= 200 else reason[:197] + "..."


def _inspect_file(
    path: str, loader: Callable[[str], Any], channels: Sequence[int] | None, spatial_dims: int | None
) -> _FileResult:
    """Read and decode one file once: existence, size, decoding, shape, finiteness, and its pixel hash."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _FileResult(problems=["the file does not exist: restore it or remove the item from the datalist"])
    except OSError as e:
        return _FileResult(problems=[f"cannot be accessed ({e.strerror}): fix its permissions or remove the item"])
    if not stat.S_ISREG(st.st_mode):
        return _FileResult(problems=["is not a regular file (a folder?): list image files only"])
    if st.st_size == 0:
        return _FileResult(
            problems=["is empty (0 bytes; an interrupted download or copy?): restore the file or remove the item"]
        )
    try:
        arr = convert_to_numpy(loader(path))
    except Exception as e:  # any failure to decode is this file's problem, reported with the others
        return _FileResult(
            problems=[
                f"cannot be decoded as an image ({describe_error(e)}); it is corrupt, truncated or not an image "
                "despite its extension: re-export it (PNG, JPEG, NIfTI, DICOM) or remove the item"
            ]
        )
    out = _FileResult()
    if spatial_dims is not None and arr.ndim - 1 != spatial_dims:
        out.problems.append(
            f"has shape {tuple(arr.shape)} (channel first), {arr.ndim - 1} spatial dimensions where the pipeline "
            f"takes {spatial_dims}: convert it or remove the item"
        )
    elif channels is not None and arr.shape[0] not in channels:
        out.problems.append(
            f"has {arr.shape[0]} channels (shape {tuple(arr.shape)}, channel first) where the pipeline takes "
            f"{' or '.join(map(str, channels))}: save it as gray or RGB, or remove the item"
        )
    if arr.dtype.kind in "fc":
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            out.problems.append(f"has {bad} NaN or infinite values: fix the file or remove the item")
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    out.digest = h.hexdigest()
    return out


def _label_problem(label: Any, class_names: Sequence[str], multi_label: bool) -> tuple[str | None, list[int]]:
    """What is wrong with ``label`` (None when nothing) and the class indices it marks."""
    n = len(class_names)
    if multi_label:
        if isinstance(label, (str, bytes, Mapping)) or np.ndim(label) != 1:
            return f"label {label!r} is not a list of {n} values (one 0/1 per class of class_names)", []
        try:
            values = np.asarray(label, dtype=np.float64)
        except (TypeError, ValueError):
            return f"label {label!r} holds non-numbers; use one 0/1 per class of class_names", []
        if values.shape[0] != n:
            return f"label has {values.shape[0]} values, expected {n} (one 0/1 per class of class_names)", []
        if not np.isin(values, (0.0, 1.0)).all():
            return f"label {list(label)} has values other than 0 and 1: use a multi-hot vector", []
        return None, [int(i) for i in np.flatnonzero(values)]
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        return (
            f"label {label!r} ({type(label).__name__}) is not an integer class index: use an int in [0, {n}) for "
            f"{list(class_names)}",
            [],
        )
    if not 0 <= int(label) < n:
        return f"label {int(label)} is out of range [0, {n}) for classes {list(class_names)}: fix it or remove it", []
    return None, [int(label)]


def _format(problems: list[str], source: str, max_reported: int) -> str:
    shown = problems[:max_reported]
    head = (
        f"{len(problems)} problem(s) in {source}"
        + (f" (first {len(shown)} shown)" if len(shown) < len(problems) else "")
        + "; fix them and run again:"
    )
    tail = [f"  ... and {len(problems) - len(shown)} more"] if len(shown) < len(problems) else []
    return "\n".join([head, *(f"  - {p}" for p in shown), *tail])


def check_datalist(
    datalist: Mapping[str, Sequence[Mapping]] | str | os.PathLike,
    class_names: Sequence[str],
    multi_label: bool = False,
    splits: Sequence[str] = SPLITS,
    unlabelled_splits: Sequence[str] = (),
    check_duplicates: bool = True,
    channels: Sequence[int] | None = (1, 3),
    spatial_dims: int | None = None,
    loader: Callable[[str], Any] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    base_dir: str | None = None,
    max_reported: int = 50,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Check a datalist and every file in it before training; raise one error listing every problem.

    Each distinct file (by resolved path) is read once, with ``loader``, the same ``LoadImage`` the pipeline
    uses, so a file that passes here loads in training. Checked: the datalist's structure; each file exists, is
    not empty, decodes, has a usable channel count (and ``spatial_dims``), holds no NaN/inf; each label is
    present and valid (single-label: an int in ``[0, C)``; multi-label: ``C`` values, each 0 or 1); and, with
    ``check_duplicates``, that no image is in two splits, either as the same file (same resolved path) or as the
    same pixels (SHA-256 of the decoded array, its dtype and shape, so byte-identical copies and lossless
    re-encodings under another name are found; resized or lossy re-saved copies are not). A class with no item
    (multi-label: no positive) in ``training`` is refused: it cannot be learned. In another split it is not an
    error, but is logged and listed under ``absent_classes``:
    its recall and ROC-AUC are undefined on that split.

    Args:
        datalist: ``{split: [{image_key: path, label_key: label, ...}, ...]}``, or a path to such a JSON file.
        class_names: the classes, in label order; ``C = len(class_names)``.
        multi_label: labels are multi-hot vectors (True) or class indices (False).
        splits: the splits that must be present (a non-empty list each) and are checked.
        unlabelled_splits: further splits of images without labels (``unlabelled``, see
            :mod:`monai_rd.data.unlabelled`), checked the same way except that an item must have no label; their
            images count in the duplicate check, so an unlabelled image that is also a test image is refused.
        check_duplicates: check for the same image in two splits.
        channels: channel counts the pipeline takes after loading; None skips the check.
        spatial_dims: number of spatial dimensions the pipeline takes (2 for slices); None skips the check.
        loader: ``path -> channel-first image``; default :func:`default_image_loader`.
        image_key: key of the image path in each item.
        label_key: key of the label in each item.
        base_dir: folder relative image paths are resolved against; default: the JSON file's folder when
            ``datalist`` is a path (as ``monai.data.load_decathlon_datalist``), else the working directory.
        max_reported: at most this many problems are written out (the total is always given).
        num_workers: threads decoding files in parallel (0: in this thread).

    Returns:
        A summary: ``num_items`` ``{split: n}``, ``class_counts`` ``{split: {class: n}}`` (multi-label: positives),
        ``absent_classes`` ``{split: [class, ...]}``, ``num_files`` (distinct files read) and
        ``within_split_duplicates`` ``{split: n}`` (items whose image repeats an earlier one of the same split;
        not an error, but it weighs that image more; 0 without ``check_duplicates``).

    Raises:
        DataCheckError: listing every problem (up to ``max_reported``, with the total), each with its split, index,
            path, what is wrong and what to do.
    """
    class_names, labelled = list(class_names), list(splits)
    splits = labelled + [s for s in unlabelled_splits if s not in labelled]
    if not class_names:
        raise DataCheckError("class_names is empty; pass the class names in label order.")
    source = "the datalist"
    if isinstance(datalist, (str, os.PathLike)):
        source = os.fspath(datalist)
        datalist = load_json(source, what="datalist")
        base_dir = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(source))
    if not isinstance(datalist, Mapping):
        raise DataCheckError(
            f"{source} must be a dict of splits {list(splits)}, each a list of {{{image_key!r}: path, "
            f"{label_key!r}: label}} items; got a {type(datalist).__name__}."
        )
    found, entries = _entries(datalist, splits, source, image_key, label_key, base_dir, set(splits) - set(labelled))
    loader = loader if loader is not None else default_image_loader()
    files = sorted({e.norm for e in entries})

    def inspect(p: str) -> _FileResult:
        return _inspect_file(p, loader, channels, spatial_dims)

    if num_workers > 0:
        with ThreadPoolExecutor(num_workers) as pool:
            results = dict(zip(files, pool.map(inspect, files)))
    else:
        results = {p: inspect(p) for p in files}

    counts = {s: Counter() for s in splits}
    mislabelled: set[str] = set()  # splits with a bad or missing label: their class counts are incomplete
    for e in entries:
        found += [((e.pos, e.index), f"{e.where}: {p}") for p in results[e.norm].problems]
        if e.label is not _NO_LABEL:  # a missing label is reported with the structure
            problem, marked = _label_problem(e.label, class_names, multi_label)
            if problem:
                found.append(((e.pos, e.index), f"{e.where}: {problem}"))
                mislabelled.add(e.split)
            counts[e.split].update(marked)
    within = {s: 0 for s in splits}
    if check_duplicates:
        found += _leaks(entries, results, splits, within)
    train = SPLITS[0]
    listed = train in labelled and train not in mislabelled and isinstance(datalist.get(train), list) and bool(
        datalist[train]
    )
    untrained = [c for k, c in enumerate(class_names) if not counts[train][k]] if listed else []
    if untrained:
        what = "positive item" if multi_label else "item"
        found.append(((labelled.index(train), -1), (
            f"{train} has no {what} of class(es) {untrained}: the model cannot learn them (their recall would be 0, "
            f"their ROC-AUC undefined); add {train} images of them, or leave them out of --class_names"
        )))
    if found:
        raise DataCheckError(_format([text for _, text in sorted(found, key=lambda f: f[0])], source, max_reported))
    if isinstance(datalist, NewDatalist):
        datalist.save()  # a new split is kept only once its files passed

    summary = {
        "num_items": {s: len(datalist[s]) for s in splits},
        "class_counts": {s: {c: counts[s][k] for k, c in enumerate(class_names)} for s in labelled},
        "absent_classes": {s: [c for k, c in enumerate(class_names) if not counts[s][k]] for s in labelled},
        "num_files": len(files),
        "within_split_duplicates": within,
    }
    for s, absent in summary["absent_classes"].items():
        if absent:
            logger.warning(
                f"{s} has no {'positive ' if multi_label else ''}item of class(es) {absent}: their recall and ROC-AUC "
                f"are undefined on {s}."
            )
    return summary


def _entries(
    datalist: Mapping,
    splits: Sequence[str],
    source: str,
    image_key: str,
    label_key: str,
    base_dir: str | None,
    unlabelled: set[str],
) -> tuple[_Found, list[_Entry]]:
    """The datalist's structural problems, and its items with resolved paths (``unlabelled``: splits whose items
    must have no label)."""
    found: _Found = []
    entries: list[_Entry] = []
    for pos, split in enumerate(splits):
        items = datalist.get(split)
        if split not in datalist:
            what = f"has no split {split!r} (its keys: {sorted(map(str, datalist))})"
            found.append(((pos, -1), f"{source} {what}: add it, or leave it out of `splits`"))
            continue
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
            found.append(((pos, -1), f"{source}[{split!r}] is a {type(items).__name__}, not a list of items"))
            continue
        if not items:
            found.append(((pos, -1), f"{source}[{split!r}] is empty: add items, or leave it out of `splits`"))
        for i, item in enumerate(items):
            where = f"{split}[{i}]"
            if not isinstance(item, Mapping):
                what = f"the item is a {type(item).__name__}, not a dict with {image_key!r} and {label_key!r}"
                found.append(((pos, i), f"{where}: {what}"))
                continue
            if image_key not in item:
                what = f"the item has no {image_key!r} key (its keys: {sorted(map(str, item))})"
                found.append(((pos, i), f"{where}: {what}"))
                continue
            path = item[image_key]
            if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
                found.append(((pos, i), f"{where}: {image_key!r} is {path!r}, not the path of one image file"))
                continue
            path = os.path.expanduser(os.fspath(path))
            path = os.path.abspath(os.path.join(base_dir, path) if base_dir else path)
            norm = os.path.normcase(os.path.realpath(path))
            entry = _Entry(pos, i, split, path, norm, item.get(label_key, _NO_LABEL))
            if split in unlabelled and entry.label is not _NO_LABEL:
                what = f"an unlabelled image has a {label_key!r}: move it to 'training', or drop the label"
                found.append(((pos, i), f"{entry.where}: {what}"))
                entry.label = _NO_LABEL
            elif entry.label is _NO_LABEL and split not in unlabelled:
                found.append(((pos, i), f"{entry.where}: the item has no {label_key!r}: add its label, or remove it"))
            entries.append(entry)
    return found, entries


def _leaks(
    entries: list[_Entry], results: Mapping[str, _FileResult], splits: Sequence[str], within: dict[str, int]
) -> _Found:
    """One problem per image in several splits (same pixels, or same path when it did not decode); counts
    repeats inside a split into ``within``."""
    groups: dict[str, list[_Entry]] = {}
    for e in entries:
        groups.setdefault(results[e.norm].digest or f"path:{e.norm}", []).append(e)
    found: _Found = []
    for members in groups.values():
        in_splits = [s for s in splits if any(e.split == s for e in members)]
        for s in in_splits:
            within[s] += sum(e.split == s for e in members) - 1
        if len(in_splits) > 1:
            same = "file" if len({e.norm for e in members}) == 1 else "pixels"
            listed = ", ".join(e.where for e in members[:6])
            listed += f" and {len(members) - 6} more" if len(members) > 6 else ""
            what = f"the same {same} in {' and '.join(in_splits)} (a leak between splits)"
            found.append(((len(splits), 0), f"{what}: {listed}; {LEAK_FIX}"))
    return found


def check_writable(*folders: str | os.PathLike) -> list[str]:
    """Check that each folder exists and takes new files, or can be created; raise one error naming all that fail.

    A folder is tested by creating (and removing) a temporary file in it, or, when it does not exist yet, in its
    nearest existing parent, where the run will create it; nothing is created otherwise. This catches what
    permission bits alone do not (read-only mounts, ACLs) and what they wrongly flag.

    Args:
        folders: output folders (``~`` expanded).

    Returns:
        The folders as absolute paths.

    Raises:
        OutputFolderError: listing each folder that cannot be written or created, with the reason.
    """
    out, problems = [], []
    for folder in folders:
        path = os.path.abspath(os.path.expanduser(os.fspath(folder)))
        out.append(path)
        parent = path
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            why = "" if parent == path else f" cannot be created: {parent}"
            problems.append(f"{path}{why} is a file, not a folder")
            continue
        try:
            with tempfile.NamedTemporaryFile(dir=parent, prefix=".monai_rd_write_check_"):
                pass
        except OSError as e:
            what = "" if parent == path else f" (it does not exist, and its parent {parent} does not take new files)"
            problems.append(f"{path}: cannot write there{what}: {e.strerror or e}")
    if problems:
        raise OutputFolderError(
            "output folder(s) not writable; choose other folders (e.g. --ckpt_dir, --output_dir) or fix the "
            "permissions:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return out


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> int:
    """Check that the disk of ``folder`` has room for ``needed`` more bytes, before a run writes them.

    Args:
        folder: where the files go (it, or its nearest existing parent, is measured).
        needed: the bytes about to be written (an estimate: e.g. a checkpoint and ``model.pt``).
        what: what they are, for the message.

    Returns:
        The free bytes.

    Raises:
        DiskFullError: fewer than ``needed`` bytes are free (names the folder, both sizes and what to do).
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    free = shutil.disk_usage(path).free
    if free < needed:
        raise DiskFullError(
            f"{folder} has {_size(free)} free on its disk, but {what} needs about {_size(needed)}: free space there, "
            "or write the run to another disk (--ckpt_dir, --output_dir)."
        )
    return free
