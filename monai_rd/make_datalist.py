"""Build the datalist a classification bundle trains on, from a folder of class sub-folders or a CSV/JSON table.

Usage::

    python -m monai_rd.make_datalist <folder of class sub-folders | table.csv | table.json> --out datalist.json \\
        [--val 0.15 --test 0.15 --seed 0 --classes a b c --exclude '*.txt' --overwrite]

- A **folder** holds one sub-folder per class (its name is the class); images (PNG/JPEG/BMP/TIFF, DICOM with or
  without ``.dcm``, NIfTI) may sit directly in it or in sub-folders at any depth. A sub-folder of a class folder is a
  **group** (e.g. one patient): all its files, under whichever class folder, land in the same split.
- A **CSV** has the columns ``image`` and ``label`` (the class name), optionally ``group`` (or ``patient``) and
  ``split`` (``training``/``validation``/``test``, or ``train``/``val``/``test``); paths are relative to the CSV's
  folder. A **JSON** is a list of such objects, or ``{"training": [...], "validation": [...], "test": [...]}``;
  an integer ``label`` there is a position in ``--classes``.

Without a ``split`` the items are split with a seeded shuffle: stratified by class, or, when any item has a
group, by group (``monai_rd.data.split_datalist``). Every file is then read once, by the loader the bundles use
(:class:`monai_rd.transforms.LoadImage2D`), through :func:`monai_rd.data.check_datalist`: unreadable files, bad
shapes and images in two splits are reported by path, all at once, and nothing is written. A class with no image,
or with no image in one split, is refused with what to change. The class counts per split are printed, and the
datalist is written with paths relative to ``dataset_dir`` (recorded in the file)::

    {"classes": [...], "dataset_dir": "/data/xray", "seed": 0, "val_fraction": 0.15, "test_fraction": 0.15,
     "class_counts": {...}, "training": [{"image": "normal/P001/IM1.dcm", "label": 0, "group": "P001"}, ...],
     "validation": [...], "test": [...]}

Bundles read it with :func:`load_or_make_datalist` (``--datalist_json``), which also builds it from
``--dataset_dir`` when it does not exist yet.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monai_rd.data.checks import check_datalist
from monai_rd.data.datalist import NewDatalist, load_json, load_saved_datalist, split_datalist
from monai_rd.data.finder import IMAGE_EXTENSIONS, FoundFiles, find_images
from monai_rd.errors import DataCheckError, OptionError, OutputFolderError
from monai_rd.transforms.load_image_2d import LoadImage2D
from monai_rd.utils.constants import SPLITS
from monai_rd.utils.files import write_json_atomic

__all__ = [
    "datalist_class_names",
    "load_or_make_datalist",
    "main",
    "make_datalist",
    "read_table",
    "scan_class_folders",
    "write_datalist",
]

logger = logging.getLogger("monai_rd.make_datalist")  # not "__main__" under `python -m`

SPLIT_NAMES = {"training": "training", "train": "training", "validation": "validation", "val": "validation",
               "valid": "validation", "test": "test", "testing": "test"}
GROUP_COLUMNS = ("group", "patient", "patient_id")
def scan_class_folders(
    root: str, classes: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> tuple[list[dict], list[str], dict[str, list[str]]]:
    """List ``root/<class>/**/<image>`` as items; a class folder's sub-folder is the group of the files under it.

    Files are found by :func:`monai_rd.data.find_images` (an image extension, or DICOM by content whatever its name;
    linked folders followed, each file listed once even when linked into two class folders).

    Args:
        root: folder holding one sub-folder per class.
        classes: the classes in label order; default: every (non-hidden) sub-folder, sorted by name.
        exclude: glob patterns of file names to skip (hidden files and ``DICOMDIR`` are always skipped).

    Returns:
        ``(items, classes, left_out)``: ``{"image": absolute path, "label": int[, "group": sub-folder name]}``
        sorted by path; the class names; the files left out, by reason (see :class:`monai_rd.data.FoundFiles`).

    Raises:
        DataCheckError: ``root`` is not a folder, has no sub-folder, lacks a named class folder, or a class folder
            holds no image (each message says what to change).
    """
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DataCheckError(f"{root} is not a folder: pass a folder of class sub-folders, or a CSV/JSON table.")
    found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    classes = list(classes) if classes else found
    if not classes:
        raise DataCheckError(
            f"{root} has no sub-folder: put the images of each class in a sub-folder named after the class "
            f"({root}/<class>/<image>)."
        )
    missing = [c for c in classes if c not in found]
    if missing:
        raise DataCheckError(
            f"class folder(s) {missing} are missing in {root} (its sub-folders: {found}); fix --classes."
        )
    if set(found) - set(classes):
        logger.info(f"sub-folder(s) {sorted(set(found) - set(classes))} of {root} are not in --classes: left out.")
    items, empty, seen = [], [], set()
    left_out: dict[str, list[str]] = {}
    for label, cls in enumerate(classes):
        folder = os.path.join(root, cls)
        search = find_images(folder, exclude=exclude, seen=seen)
        for reason, paths in search.left_out.items():
            left_out.setdefault(reason, []).extend(paths)
        if not search.items:
            empty.append(folder)
        for it in search.items:
            parts = os.path.relpath(os.path.dirname(it["image"]), folder).split(os.sep)
            items.append({**it, "label": label, **({"group": parts[0]} if parts[0] != "." else {})})
    if empty:
        raise DataCheckError(
            f"class folder(s) {empty} hold no image ({', '.join(IMAGE_EXTENSIONS)} or DICOM files): add images of "
            "that class, or leave the class out (--classes)."
        )
    return sorted(items, key=lambda it: it["image"]), classes, left_out


def _class_order(names: Sequence[str]) -> list[str]:
    unique = sorted(set(names))
    return sorted(unique, key=int) if all(n.lstrip("-").isdigit() for n in unique) else unique


def read_table(path: str, classes: Sequence[str] | None = None) -> tuple[list[dict], list[str]]:
    """Read a CSV or JSON table of ``image, label[, group][, split]`` into items.

    Args:
        path: a ``.csv`` file, or a ``.json`` list of objects / dict of split lists (see the module docstring).
        classes: the classes in label order; default: the labels found, sorted (numerically when all are integers).

    Returns:
        ``(items, classes)``: ``{"image": absolute path, "label": int[, "group": str][, "split": str]}`` in table
        order, and the class names.

    Raises:
        DataCheckError: the table is missing or malformed, lacks a column, has an empty cell, an unknown split or
            a label not in ``classes`` (names the row).
    """
    base = os.path.dirname(os.path.abspath(path))
    rows: list[tuple[str, Mapping]] = []
    if path.lower().endswith(".csv"):
        if not os.path.isfile(path):
            raise DataCheckError(f"table {path} does not exist.")
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            absent = [c for c in ("image", "label") if c not in (reader.fieldnames or [])]
            if absent:
                raise DataCheckError(f"{path} lacks the column(s) {absent} (its header: {reader.fieldnames}).")
            rows = [(f"{path}, line {line}", row) for line, row in enumerate(reader, start=2)]
    elif path.lower().endswith(".json"):
        table = load_json(path, what="table")
        if isinstance(table, Mapping):
            unknown = sorted(k for k in table if k in SPLIT_NAMES and not isinstance(table[k], list))
            if unknown or not any(k in table for k in SPLITS):
                raise DataCheckError(f"{path}: expected a list of items or a dict of lists {list(SPLITS)}.")
            rows = [
                (f"{path}, {s}[{i}]", {**row, "split": s} if isinstance(row, Mapping) else row)
                for s in SPLITS
                for i, row in enumerate(table.get(s, []))
            ]
        elif isinstance(table, list):
            rows = [(f"{path}, item {i}", row) for i, row in enumerate(table)]
        else:
            raise DataCheckError(f"{path} holds a {type(table).__name__}: expected a list of {{image, label}} items.")
    else:
        raise DataCheckError(f"{path}: a table must be a .csv or .json file (or pass a folder of class sub-folders).")
    if not rows:
        raise DataCheckError(f"{path} lists no image.")
    parsed, names = [], []
    for where, row in rows:
        if not isinstance(row, Mapping):
            raise DataCheckError(f"{where}: expected an object with 'image' and 'label', got {row!r}.")
        image, label = row.get("image"), row.get("label")
        if isinstance(label, int) and not isinstance(label, bool):
            if not classes or not 0 <= label < len(classes):
                raise DataCheckError(
                    f"{where}: integer label {label} needs --classes naming the classes in label order (label < "
                    f"{len(classes or [])}), or write the class name as the label."
                )
            label = classes[label]
        if not isinstance(image, str) or not image.strip() or label is None or not str(label).strip():
            raise DataCheckError(f"{where}: empty or missing image or label in {dict(row)}.")
        path = os.path.abspath(os.path.join(base, os.path.expanduser(image.strip())))
        item = {"image": path, "label": str(label).strip()}
        group = next((str(row[c]).strip() for c in GROUP_COLUMNS if row.get(c) not in (None, "")), None)
        if group:
            item["group"] = group
        split = row.get("split")
        if split not in (None, ""):
            if str(split).strip().lower() not in SPLIT_NAMES:
                raise DataCheckError(f"{where}: split {split!r} is not one of training/validation/test (or train/val).")
            item["split"] = SPLIT_NAMES[str(split).strip().lower()]
        parsed.append((where, item))
        names.append(item["label"])
    classes = list(classes) if classes else _class_order(names)
    index = {c: k for k, c in enumerate(classes)}
    for where, item in parsed:
        if item["label"] not in index:
            raise DataCheckError(f"{where}: label {item['label']!r} is not one of --classes {classes}.")
        item["label"] = index[item["label"]]
    return [item for _, item in parsed], classes


def _split(
    items: list[dict], val_fraction: float, test_fraction: float, seed: int, source: str
) -> dict[str, list[dict]]:
    given = [it for it in items if "split" in it]
    if given and len(given) < len(items):
        first = next(it["image"] for it in items if "split" not in it)
        raise DataCheckError(
            f"{source}: {len(given)} of {len(items)} items have a split and the others do not (first without: "
            f"{first}); give every item a split, or none to have them split."
        )
    if given:
        return {s: sorted((it for it in items if it["split"] == s), key=lambda it: it["image"]) for s in SPLITS}
    if any("group" in it for it in items):
        group_of = {it["image"]: it.get("group", f"file:{it['image']}") for it in items}
        return split_datalist(items, val_fraction, test_fraction, seed, groups=group_of.__getitem__)
    return split_datalist(items, val_fraction, test_fraction, seed)


def _counts(splits: Mapping[str, Sequence[dict]], classes: Sequence[str]) -> dict[str, dict[str, int]]:
    return {s: {c: sum(it["label"] == k for it in splits[s]) for k, c in enumerate(classes)} for s in SPLITS}


def _format_counts(counts: Mapping[str, Mapping[str, int]], classes: Sequence[str]) -> str:
    width = max(len("class"), *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  " + "  ".join(f"{s:>10}" for s in SPLITS)]
    lines += [f"{c:<{width}}  " + "  ".join(f"{counts[s][c]:>10}" for s in SPLITS) for c in classes]
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{sum(counts[s].values()):>10}" for s in SPLITS))
    return "\n".join(lines)


def make_datalist(
    source: str,
    out: str | None = None,
    classes: Sequence[str] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    exclude: Sequence[str] = (),
    overwrite: bool = False,
    check_files: bool = True,
    loader: Callable[[str], Any] | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Build, check and (with ``out``) write a single-label datalist from class folders or a CSV/JSON table.

    Args:
        source: a folder of class sub-folders, or a ``.csv``/``.json`` table (see the module docstring).
        out: the datalist JSON to write (paths relative to the recorded ``dataset_dir``); None writes nothing.
        classes: the classes in label order; default: the sub-folders (or labels) found, sorted.
        val_fraction: fraction of items (of groups, with groups) for validation, when the table gives no split.
        test_fraction: the same for test.
        seed: the split's seed.
        exclude: glob patterns of file names a folder scan skips.
        overwrite: replace an existing ``out`` (it fixes the split of any run trained with it).
        check_files: read every file once with ``loader`` through :func:`monai_rd.data.check_datalist`.
        loader: ``path -> channel-first image``; default :class:`monai_rd.transforms.LoadImage2D`.
        num_workers: threads reading files.

    Returns:
        The datalist as written: ``classes``, ``dataset_dir``, ``seed``, the fractions, ``class_counts`` and the
        three splits (absolute image paths in the returned dict).

    Raises:
        DataCheckError: the source is malformed, a class has no image or none in a split, or files cannot be read
            (all listed by path).
        OutputFolderError: ``out`` exists and ``overwrite`` is not set.
        OptionError: the fractions are out of range.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise OptionError(f"--val {val_fraction} and --test {test_fraction} must be >= 0 and sum to less than 1.")
    if out and os.path.exists(out) and not overwrite:
        raise OutputFolderError(
            f"{out} exists; it fixes the split of the runs trained with it. Pass --overwrite to replace it, or choose "
            "another --out."
        )
    source = os.path.abspath(os.path.expanduser(source))
    if not os.path.exists(source):
        raise DataCheckError(f"{source} does not exist: pass a folder of class sub-folders, or a CSV/JSON table.")
    if os.path.isdir(source):
        items, classes, left_out = scan_class_folders(source, classes, exclude)
        dataset_dir = source
        report = FoundFiles(source, items, left_out)
        report.log("image")
    else:
        items, classes = read_table(source, classes)
        dataset_dir = os.path.commonpath([os.path.dirname(it["image"]) for it in items])
    empty = [c for k, c in enumerate(classes) if not any(it["label"] == k for it in items)]
    if empty:
        raise DataCheckError(
            f"{source}: class(es) {empty} have no image: add images of them, or leave them out of --classes."
        )
    splits = _split(items, val_fraction, test_fraction, seed, source)
    counts = _counts(splits, classes)
    grouped = any("group" in it for it in items)
    absent = [(s, c) for s in SPLITS for c in classes if counts[s][c] == 0]
    if absent:
        how = (
            "the split is by group (patient): a class with few groups can miss a split"
            if grouped
            else "the split is stratified by class: too few images for the fractions"
        )
        raise DataCheckError(
            f"{source}: " + "; ".join(f"class {c!r} has no image in {s}" for s, c in absent) + f" ({how}).\n"
            + _format_counts(counts, classes)
            + "\nEvery class needs images in every split to be trained, selected and tested: add images of those "
            "classes, raise --val/--test, try another --seed, or give the split yourself (a 'split' column)."
        )
    if check_files:
        check_datalist(splits, classes, loader=loader if loader is not None else LoadImage2D(), num_workers=num_workers)
    summary = (
        f"{sum(map(len, splits.values()))} images of {len(classes)} classes from {source}"
        + (f", {len({it['group'] for it in items if 'group' in it})} groups kept whole" if grouped else "")
        + ("" if "split" in items[0] else f" (seed {seed}, val {val_fraction}, test {test_fraction})")
        + ":\n"
        + _format_counts(counts, classes)
    )
    logger.info(summary)
    meta = {
        "classes": list(classes),
        "dataset_dir": dataset_dir,
        "source": source,
        "seed": seed,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "class_counts": counts,
    }
    splits = {s: [{k: v for k, v in it.items() if k != "split"} for it in splits[s]] for s in SPLITS}
    made = {**meta, **splits}
    if out:
        write_datalist(made, out)
    return made


def write_datalist(made: Mapping[str, Any], out: str) -> None:
    """Write a datalist of :func:`make_datalist` to ``out`` (atomically), paths relative to its ``dataset_dir``."""
    root = made["dataset_dir"]
    relative = {s: [{**it, "image": os.path.relpath(it["image"], root)} for it in made[s]] for s in SPLITS}
    write_json_atomic({**made, **relative}, out)


def datalist_class_names(datalist_json: str | None = None, dataset_dir: str | None = None) -> list[str]:
    """The classes of a run: those recorded in its datalist JSON, else the class sub-folders of ``dataset_dir``.

    Args:
        datalist_json: a datalist written by :func:`make_datalist` (or with a ``classes`` field).
        dataset_dir: a folder of class sub-folders, used when ``datalist_json`` does not exist.

    Returns:
        The class names in label order.

    Raises:
        DataCheckError: neither exists, or the datalist records no classes (says to pass ``--class_names``).
    """
    if datalist_json and os.path.isfile(datalist_json):
        classes = load_json(datalist_json, what="datalist").get("classes")
        if not isinstance(classes, list) or not classes:
            raise DataCheckError(
                f"{datalist_json} records no 'classes': pass --class_names \"['a','b',...]\" in label order, or "
                "write the datalist with `python -m monai_rd.make_datalist`."
            )
        return [str(c) for c in classes]
    if dataset_dir and os.path.isdir(dataset_dir):
        return scan_class_folders(dataset_dir)[1]
    raise DataCheckError(
        f"no datalist at {datalist_json} and no class folders at {dataset_dir}: pass --dataset_dir <folder of class "
        "sub-folders>, or write the datalist first with `python -m monai_rd.make_datalist <folder or table> "
        "--out <ckpt_dir>/datalist.json` (or pass its path as --datalist_json)."
    )


def load_or_make_datalist(
    datalist_json: str,
    dataset_dir: str | None,
    class_names: Sequence[str],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """The splits a bundle trains on: read from ``datalist_json``, or built from ``dataset_dir`` and written there.

    Args:
        datalist_json: the datalist (e.g. from :func:`make_datalist`); once written it fixes the split.
        dataset_dir: a folder of class sub-folders, used when ``datalist_json`` does not exist yet.
        class_names: the classes the run trains; must equal the datalist's when it records them.
        val_fraction: see :func:`make_datalist` (only when building).
        test_fraction: see :func:`make_datalist` (only when building).
        seed: see :func:`make_datalist` (only when building).

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image": absolute path, "label": int, ...}``. Files are
        not read here: the bundle's ``check_datalist`` does that once, with its own loader; a datalist built here
        (a :class:`~monai_rd.data.datalist.NewDatalist`) is written to ``datalist_json`` only when that check
        passes.

    Raises:
        DataCheckError: neither exists; the datalist's classes differ from ``class_names``; it is malformed.
        FileNotFoundError: a listed image is missing.
    """
    if not os.path.isfile(datalist_json):
        if not dataset_dir:
            datalist_class_names(datalist_json, dataset_dir)  # raises, saying what to pass
        made = make_datalist(dataset_dir, None, class_names, val_fraction, test_fraction, seed, check_files=False)
        return NewDatalist({s: made[s] for s in SPLITS}, lambda: write_datalist(made, datalist_json))
    saved = load_json(datalist_json, what="datalist")
    if not isinstance(saved, dict):
        raise DataCheckError(
            f"{datalist_json} holds a {type(saved).__name__}, not a datalist; write it with make_datalist."
        )
    recorded = saved.get("classes")
    if recorded is not None and list(recorded) != list(class_names):
        raise DataCheckError(
            f"{datalist_json} was written for the classes {recorded}, but the run has --class_names "
            f"{list(class_names)}: use the datalist's classes (leave --class_names out), or rewrite the datalist."
        )
    # paths are relative to the recorded dataset_dir (make_datalist), else to --dataset_dir, else to the file's folder
    here = os.path.dirname(os.path.abspath(datalist_json))
    root = os.path.join(here, saved.get("dataset_dir") or dataset_dir or here)
    return load_saved_datalist(datalist_json, root)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line of :func:`make_datalist`; returns the exit status (1 with the reason on stderr)."""
    parser = argparse.ArgumentParser(
        prog="python -m monai_rd.make_datalist",
        description="Build, check and write a classification datalist from class folders or a CSV/JSON table.",
    )
    parser.add_argument(
        "source", help="folder of class sub-folders, or a CSV/JSON table with image,label[,group][,split]"
    )
    parser.add_argument("--out", required=True, help="the datalist JSON to write (e.g. <run>/models/datalist.json)")
    parser.add_argument("--val", type=float, default=0.15, help="validation fraction (of groups, with groups)")
    parser.add_argument("--test", type=float, default=0.15, help="test fraction (of groups, with groups)")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--classes", nargs="+", help="the classes in label order (default: all found, sorted)")
    parser.add_argument("--exclude", nargs="+", default=[], help="file-name glob patterns to skip, e.g. '*.txt'")
    parser.add_argument("--num_workers", type=int, default=4, help="threads reading the files")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    # monai_rd's messages (counts, volumes and frames read) on stdout; not MONAI's per-file reader messages
    handler, package = logging.StreamHandler(sys.stdout), logging.getLogger("monai_rd")
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        make_datalist(
            args.source, args.out, args.classes, args.val, args.test, args.seed, args.exclude, args.overwrite,
            num_workers=args.num_workers,
        )
    except (DataCheckError, OptionError, OutputFolderError) as e:
        print(f"make_datalist: {e}", file=sys.stderr)
        return 1
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
    print(f"written: {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
