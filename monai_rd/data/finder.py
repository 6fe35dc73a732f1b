"""The one way monai_rd finds input files in a folder: images (by extension, or DICOM by content whatever its name)
and volumes (NIfTI files, and folders of one DICOM series), with every file left out counted by reason.

``make_datalist``, the inference recipes (``list_images``, ``list_volumes``), ``python -m monai_rd.export`` and the
MONAI Label app list their inputs with these functions, so a file one of them reads is a file all of them read.
Symbolic links are followed, to folders too (a patient folder linked into a class folder counts), with loop
protection: a folder or file reached a second time (a link back up the tree, or two links to one place) is listed
once and the other paths are reported. What is left out, and why, is returned in :class:`FoundFiles` and logged:

- ``hidden``: names starting with ``.`` (``.DS_Store``, editor swap files), and hidden folders;
- ``DICOMDIR``: a DICOM export's index, not an image;
- ``excluded``: names matching an ``exclude`` pattern;
- ``not an image``: no image extension and no DICOM marker;
- ``broken link``: a symbolic link to nothing;
- ``already listed``: a second path to a file or folder found before;
- ``unreadable``: a folder that cannot be listed (permissions).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
from collections.abc import Iterator, Sequence

from monai_rd.data.dicom_reader import is_dicom_file
from monai_rd.errors import DataCheckError

__all__ = [
    "IMAGE_EXTENSIONS",
    "LEFT_OUT_REASONS",
    "VOLUME_EXTENSIONS",
    "FoundFiles",
    "find_images",
    "find_volumes",
    "list_images",
    "list_volumes",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz")
VOLUME_EXTENSIONS = (".nii", ".nii.gz")
HIDDEN, DICOMDIR, EXCLUDED, NOT_IMAGE, BROKEN_LINK, REPEATED, UNREADABLE = (
    "hidden",
    "DICOMDIR",
    "excluded",
    "not an image",
    "broken link",
    "already listed",
    "unreadable",
)
LEFT_OUT_REASONS = (HIDDEN, DICOMDIR, EXCLUDED, NOT_IMAGE, BROKEN_LINK, REPEATED, UNREADABLE)
_EXAMPLES = 3


@dataclasses.dataclass
class FoundFiles:
    """What a search of ``folder`` found (``items``) and what it left out, by reason (``left_out``).

    Attributes:
        folder: the folder searched (absolute).
        items: ``{"image": absolute path}`` items, sorted by path.
        left_out: reason (one of :data:`LEFT_OUT_REASONS`) -> the paths left out for it, sorted.
    """

    folder: str
    items: list[dict] = dataclasses.field(default_factory=list)
    left_out: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def leave_out(self, reason: str, path: str) -> None:
        """Record ``path`` as left out for ``reason``."""
        self.left_out.setdefault(reason, []).append(path)

    def describe_left_out(self) -> str:
        """One line per reason: how many were left out and the first few, or ``""`` when none was."""
        lines = []
        for reason in LEFT_OUT_REASONS:
            paths = sorted(self.left_out.get(reason, []))
            if paths:
                shown = ", ".join(os.path.relpath(p, self.folder) for p in paths[:_EXAMPLES])
                more = f" and {len(paths) - _EXAMPLES} more" if len(paths) > _EXAMPLES else ""
                lines.append(f"{len(paths)} {reason} ({shown}{more})")
        return "; ".join(lines)

    def log(self, what: str = "image") -> None:
        """Log :meth:`summary`: a warning when a file was left out for a reason the user may not expect (not an
        image, a broken link, a repeat, unreadable), else at info level."""
        unexpected = set(self.left_out) - {HIDDEN, DICOMDIR, EXCLUDED}
        (logger.warning if unexpected else logger.info)(self.summary(what))

    def summary(self, what: str = "image") -> str:
        """``"12 images under /data; left out: 2 not an image (a.txt, b.csv); 1 hidden (.DS_Store)"``."""
        left = self.describe_left_out()
        return f"{len(self.items)} {what}(s) under {self.folder}" + (f"; left out: {left}" if left else "")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _walk(found: FoundFiles, recursive: bool, seen: set) -> Iterator[tuple[str, list[str]]]:
    """``(folder, file paths)`` for each folder under ``found.folder`` once, links followed, hidden entries, loops,
    repeats and broken links recorded in ``found`` (files are yielded once, by their first path)."""

    def unreadable(err: OSError) -> None:
        found.leave_out(UNREADABLE, os.path.abspath(err.filename or found.folder))

    for root, dirs, files in os.walk(found.folder, followlinks=True, onerror=unreadable):
        key = _identity(root)
        if key in seen:  # a link back up the tree, or a second link to a folder listed before
            found.leave_out(REPEATED, root)
            dirs[:] = []
            continue
        seen.add(key)
        for d in [d for d in dirs if d.startswith(".")]:
            found.leave_out(HIDDEN, os.path.join(root, d))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        paths = []
        for name in sorted(files):
            path = os.path.join(root, name)
            if name.startswith("."):
                found.leave_out(HIDDEN, path)
                continue
            key = _identity(path)
            if key is None:
                found.leave_out(BROKEN_LINK if os.path.islink(path) else UNREADABLE, path)
            elif key in seen:
                found.leave_out(REPEATED, path)
            else:
                seen.add(key)
                paths.append(path)
        yield root, paths


def _is_image(path: str, extensions: tuple[str, ...]) -> bool:
    return path.lower().endswith(extensions) or is_dicom_file(path)


def _start(folder: str, what: str) -> FoundFiles:
    folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"input folder {folder!r} does not exist; pass --input_dir <folder of {what}s>.")
    return FoundFiles(folder)


def find_images(
    folder: str,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    exclude: Sequence[str] = (),
    recursive: bool = True,
    seen: set | None = None,
) -> FoundFiles:
    """Every image file under ``folder``: an image extension, or DICOM by content (the ``DICM`` marker), any name.

    Args:
        folder: the folder to search (links followed).
        extensions: accepted name endings (case-insensitive); DICOM files are found by content besides.
        exclude: glob patterns of file names to leave out.
        recursive: search sub-folders too.
        seen: identities of files and folders already listed by an earlier search (e.g. another class folder of
            the same dataset), updated; a file listed there is left out here as ``already listed``.

    Returns:
        The images (``{"image": path}``, sorted) and what was left out, by reason.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
    """
    found = _start(folder, "image")
    exts = tuple(e.lower() for e in extensions)
    for _, paths in _walk(found, recursive, set() if seen is None else seen):
        for path in paths:
            name = os.path.basename(path)
            if name.upper() == DICOMDIR:
                found.leave_out(DICOMDIR, path)
            elif any(fnmatch.fnmatch(name, p) for p in exclude):
                found.leave_out(EXCLUDED, path)
            elif _is_image(path, exts):
                found.items.append({"image": path})
            else:
                found.leave_out(NOT_IMAGE, path)
    found.items.sort(key=lambda it: it["image"])
    return found


def _series_uids(folder: str, files: Sequence[str]) -> set[str]:
    import pydicom

    uids = set()
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception as e:  # pydicom raises several types for a damaged file
            raise DataCheckError(f"{path} is not a readable DICOM file ({e}).") from e
        uids.add(str(getattr(ds, "SeriesInstanceUID", "")))
    return uids


def find_volumes(folder: str, extensions: Sequence[str] = VOLUME_EXTENSIONS) -> FoundFiles:
    """The volumes under ``folder``: every NIfTI file, and every folder of DICOM files (by content, any name) as one
    volume (MONAI's ``PydicomReader`` reads a folder as one series, sorted by slice position).

    Args:
        folder: the folder to search, recursively (links followed).
        extensions: volume file name endings (case-insensitive) besides DICOM series.

    Returns:
        ``{"image": path}`` items (a file for a NIfTI volume, a folder for a DICOM series), sorted, and what was left
        out, by reason.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        DataCheckError: a folder holds DICOM files of more than one series (they would be stacked into one volume),
            or a DICOM file that cannot be read; names the folder.
    """
    found = _start(folder, "volume")
    exts = tuple(e.lower() for e in extensions)
    for root, paths in _walk(found, True, set()):
        dicom = []
        for path in paths:
            if os.path.basename(path).upper() == DICOMDIR:
                found.leave_out(DICOMDIR, path)
            elif path.lower().endswith(exts):
                found.items.append({"image": path})
            elif is_dicom_file(path):
                dicom.append(path)
            else:
                found.leave_out(NOT_IMAGE, path)
        if dicom:
            uids = _series_uids(root, dicom)
            if len(uids) > 1:
                raise DataCheckError(
                    f"{root} holds DICOM files of {len(uids)} series ({', '.join(sorted(uids))}); a folder is read as "
                    "one volume, so put each series in a folder of its own."
                )
            found.items.append({"image": root})
    found.items.sort(key=lambda it: it["image"])
    return found


def _report(found: FoundFiles, what: str, how: str) -> list[dict]:
    if not found.items:
        left = found.describe_left_out()
        raise FileNotFoundError(f"no {what} ({how}) under {found.folder!r}" + (f"; left out: {left}." if left else "."))
    found.log(what)
    return found.items


def list_images(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = True) -> list[dict]:
    """All images under ``folder`` as ``{"image": path}`` items, sorted (an inference datalist); what was left out is
    logged by reason (see :func:`find_images`).

    Raises:
        FileNotFoundError: ``folder`` is missing or holds no image (names it, the extensions and what was left out).
    """
    found = find_images(folder, extensions, recursive=recursive)
    return _report(found, "image", f"a file ending {', '.join(extensions)}, or a DICOM file of any name")


def list_volumes(folder: str, extensions: Sequence[str] = VOLUME_EXTENSIONS) -> list[dict]:
    """The volumes under ``folder`` as ``{"image": path}`` items, sorted (a segmentation inference datalist); what
    was left out is logged by reason (see :func:`find_volumes`).

    Raises:
        FileNotFoundError: ``folder`` is missing or holds no volume.
        DataCheckError: a folder holds DICOM files of several series, or an unreadable DICOM file.
    """
    found = find_volumes(folder, extensions)
    return _report(found, "volume", f"a file ending {', '.join(extensions)}, or a folder of DICOM files")
