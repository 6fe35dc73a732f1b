"""The app's datastore: MONAI Label's local datastore, with every id, tag and file a client sends checked.

MONAI Label's ``LocalDatastore`` joins the ids and tags of a request into paths unchecked: ``PUT /datastore/label``
with ``tag=../../../../tmp/x/pwn`` writes outside the studies folder (the client choosing the file's extension),
and ``DELETE /datastore/label`` with the same tag removes it. :class:`RDDatastore` subclasses it and:

- refuses, with HTTP 400, an id or tag that is not a plain name (:func:`check_name`: a path separator, ``..``,
  an absolute path) and, with 404, an image id it does not hold, before anything touches the disk; every path it
  writes is checked to lie in the studies folder;
- accepts uploads of the image types the app reads (:data:`IMAGE_PATTERNS`, readable) and labels that are a class
  label (``.json``, or the class in ``params``) or a NIfTI label map, checked against the served models when saved
  (``label_check``: HTTP 422 with the reason) rather than at the next training;
- removes the uploaded file when a save fails (MONAI Label removes it only after a successful answer);
- answers with paths relative to the studies folder (``GET /datastore/?output=train``, image info), never the
  server's absolute ones.

:class:`RDSessions` gives MONAI Label's sessions the same name checks and refuses archive uploads.
"""

from __future__ import annotations

import os
import pathlib
import threading
from collections.abc import Callable
from typing import Any

from monai.transforms import LoadImage
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.utils.sessions import Sessions

from monai_rd.errors import DataCheckError
from monai_rd.label.http_errors import http_error, refusal
from monai_rd.label.mask_labels import LABEL_MAP_EXTENSIONS
from monai_rd.label.redaction import PathRedactor
from monai_rd.label.uploads import UploadFolder

__all__ = ["IMAGE_PATTERNS", "LABEL_EXTENSIONS", "LabelCheck", "RDDatastore", "RDSessions", "check_name"]

# what LoadImage2D and the segmentation bundles read (monai_rd.data.IMAGE_EXTENSIONS), as datastore patterns
IMAGE_PATTERNS = ("*.png", "*.jpg", "*.jpeg", "*.bmp", "*.tif", "*.tiff", "*.dcm", "*.nii", "*.nii.gz")
# a class label (JSON, or any JSON with the class in the label's params) or a label map
LABEL_EXTENSIONS = (".json", *LABEL_MAP_EXTENSIONS)

# (image file, uploaded label file, label info) -> a file to store instead (the label conformed), or None to store the
# upload as it is; raises DataCheckError (HTTP 422) for a label that cannot be trained on
LabelCheck = Callable[[str, str, dict], "str | None"]


def check_name(value: Any, what: str) -> str:
    """``value`` if it is a plain name (an image id, a label tag, a session id), else HTTP 400.

    Raises:
        HTTPException: 400 for an empty value, a path separator, ``..``, ``.``, a NUL or control character, or an
            overlong name: it could make a path outside the studies folder.
    """
    if not isinstance(value, str) or not value.strip():
        raise http_error(400, f"{what} is missing.")
    if (
        len(value) > 255
        or value in (".", "..")
        or ".." in value
        or any(c in value for c in ("/", "\\", "\x00"))
        or any(ord(c) < 32 for c in value)
        or os.path.isabs(value)
    ):
        # the value is not echoed: it may be a path, and no answer names one
        raise http_error(400, f"{what} is not a name: ids and tags are plain names, without path separators or '..'.")
    return value


def _extension(path: str, allowed: tuple[str, ...]) -> str:
    lower = os.path.basename(path).lower()
    return next((e for e in sorted(allowed, key=len, reverse=True) if lower.endswith(e)), "")


class RDDatastore(LocalDatastore):
    """MONAI Label's ``LocalDatastore`` with checked ids, tags, uploads and labels (see the module docstring).

    Args:
        datastore_path: the studies folder.
        label_check: checks a label being saved (see :data:`LabelCheck`); None accepts any label of
            :data:`LABEL_EXTENSIONS`.
        uploads: the server's upload folder (an upload that fails to save is removed from it).
        redactor: removes server paths from the reasons of refused requests (a reader's error names its file).
        kwargs: ``LocalDatastore``'s (``extensions`` defaults to :data:`IMAGE_PATTERNS`).
    """

    def __init__(
        self,
        datastore_path: str,
        label_check: LabelCheck | None = None,
        uploads: UploadFolder | None = None,
        redactor: PathRedactor | None = None,
        **kwargs: Any,
    ):
        self.label_check = label_check
        self.uploads = uploads
        self.redactor = redactor or PathRedactor({"studies": datastore_path})
        self._local = threading.local()
        kwargs.setdefault("extensions", list(IMAGE_PATTERNS))
        super().__init__(datastore_path, **kwargs)
        self._root = os.path.realpath(datastore_path)

    # ids, tags and paths ----------------------------------------------------------------------------------------

    def _image(self, image_id: Any) -> str:
        check_name(image_id, "image id")
        if image_id not in self._datastore.objects:
            raise http_error(404, f"image {image_id!r} is not in the datastore (GET /datastore/ lists the images).")
        return image_id

    def _tag(self, tag: Any) -> str:
        return check_name(tag if tag else DefaultLabelTag.FINAL.value, "label tag")

    def _inside(self, path: str) -> str:
        # ids and tags are names, so this cannot fail; it stays as the last guard before a write or a removal
        if os.path.commonpath([self._root, os.path.realpath(path)]) != self._root:
            raise http_error(400, "the request names a file outside the datastore.")
        return path

    def _discard_upload(self, path: str) -> None:
        if self.uploads is not None:
            self.uploads.discard(path)

    def _relative(self, path: str) -> str:
        return os.path.relpath(path, self._root) if path else path

    # reading --------------------------------------------------------------------------------------------------

    def get_image(self, image_id: str, params: Any = None) -> Any:
        return super().get_image(self._image(image_id), params)

    def get_image_uri(self, image_id: str) -> str:
        return super().get_image_uri(self._image(image_id))

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """The image's info, its file named relative to the studies folder (``path``) rather than absolute."""
        info = super().get_image_info(self._image(image_id))
        if "path" in info:
            info["path"] = self._relative(info["path"])
        return info

    def get_label(self, label_id: str, label_tag: str, params: Any = None) -> Any:
        return super().get_label(self._image(label_id), self._tag(label_tag), params)

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        return super().get_label_uri(self._image(label_id), self._tag(label_tag))

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        return super().get_label_info(self._image(label_id), self._tag(label_tag))

    def get_labels_by_image_id(self, image_id: str) -> dict[str, str]:
        return super().get_labels_by_image_id(self._image(image_id))

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        return super().get_label_by_image_id(self._image(image_id), self._tag(tag))

    def get_labeled_images(self, label_tag: str | None = None, labels: Any = None) -> list[str]:
        """The images with a label under ``label_tag`` (default ``final``; MONAI Label's ignores the tag)."""
        tag = self._tag(label_tag)
        return [k for k, v in self._datastore.objects.items() if v.labels.get(tag)]

    def get_unlabeled_images(self, label_tag: str | None = None, labels: Any = None) -> list[str]:
        """The images without a label under ``label_tag`` (default ``final``)."""
        tag = self._tag(label_tag)
        return [k for k, v in self._datastore.objects.items() if not v.labels.get(tag)]

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """The ``final``-labelled images and labels, relative to the studies folder (what ``GET /datastore/
        ?output=train`` answers); absolute only inside the server (:meth:`get_dataset_archive`)."""
        items = super().datalist(full_path=True)
        if getattr(self._local, "absolute", False):
            return items
        return [{k: self._relative(v) for k, v in item.items()} for item in items]

    def get_dataset_archive(self, limit_cases: int | None) -> str:
        self._local.absolute = True
        try:
            return super().get_dataset_archive(limit_cases)
        finally:
            self._local.absolute = False

    # writing --------------------------------------------------------------------------------------------------

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Add an uploaded image: a new plain id, an image type of :data:`IMAGE_PATTERNS`, a file that reads.

        Raises:
            HTTPException: 400 for an id that is not a name, 409 for an id already in the datastore, 422 for a file
                type the app does not read or a file that does not read as an image.
        """
        try:
            ext = _extension(image_filename, tuple(p.lstrip("*") for p in IMAGE_PATTERNS))
            if not ext:
                raise http_error(422, f"the upload is not an image the app reads (file types {list(IMAGE_PATTERNS)}).")
            image_id = check_name(image_id or os.path.basename(image_filename)[: -len(ext)], "image id")
            if image_id in self._datastore.objects:
                raise http_error(
                    409, f"image {image_id!r} is already in the datastore: remove it first or use another id."
                )
            try:
                LoadImage(image_only=True)(image_filename)
            except Exception as e:
                raise DataCheckError(f"the upload does not read as an image: {e}") from e
            self._inside(os.path.join(self._datastore.image_path(), image_id + ext))
            return super().add_image(image_id, image_filename, image_info)
        except Exception as e:
            self._discard_upload(image_filename)
            raise refusal(e, default=500, redact=self.redactor) from e

    def remove_image(self, image_id: str) -> None:
        super().remove_image(self._image(image_id))

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Save an uploaded label after :attr:`label_check` accepted it (see the module docstring).

        Raises:
            HTTPException: 400 for an id or tag that is not a name, 404 for an unknown image, 422 for a label file
                type other than :data:`LABEL_EXTENSIONS` or a label the served models cannot train on.
        """
        conformed = None
        try:
            image_id, tag = self._image(image_id), self._tag(label_tag)
            ext = _extension(label_filename, LABEL_EXTENSIONS)
            if not ext:
                suffix = "".join(pathlib.Path(label_filename).suffixes) or "no extension"
                raise http_error(
                    422, f"a label is a class label (.json) or a NIfTI label map (.nii.gz, .nii), not {suffix!r}."
                )
            info = dict(label_info or {})
            if self.label_check is not None:
                conformed = self.label_check(super().get_image_uri(image_id), label_filename, info)
            stored = conformed or label_filename
            self._inside(os.path.join(self._datastore.label_path(tag), image_id + _extension(stored, LABEL_EXTENSIONS)))
            return super().save_label(image_id, stored, tag, info)
        except Exception as e:
            self._discard_upload(label_filename)
            raise refusal(e, default=500, redact=self.redactor) from e
        finally:
            if conformed and os.path.isfile(conformed):
                os.remove(conformed)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        image_id, tag = self._image(label_id), self._tag(label_tag)
        uri = super().get_label_uri(image_id, tag)
        if not uri:
            raise http_error(404, f"image {image_id!r} has no {tag!r} label.")
        self._inside(uri)
        super().remove_label(image_id, tag)

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        super().update_image_info(self._image(image_id), info)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        """Update a label's info; the label with its new info must still pass :attr:`label_check` (a class named
        in the info is checked as when the label was saved)."""
        image_id, tag = self._image(label_id), self._tag(label_tag)
        uri = super().get_label_uri(image_id, tag)
        if not uri:
            raise http_error(404, f"image {image_id!r} has no {tag!r} label.")
        if self.label_check is not None:
            merged = {**super().get_label_info(image_id, tag), **dict(info or {})}
            try:
                conformed = self.label_check(super().get_image_uri(image_id), uri, merged)
            except Exception as e:
                raise refusal(e, default=500, redact=self.redactor) from e
            if conformed and os.path.isfile(conformed):
                os.remove(conformed)
        super().update_label_info(image_id, tag, info)

    def _list_files(self, path: str, patterns: Any) -> dict[str, str]:
        # MONAI Label lists every matching name; a file the app could not name in a request is left out
        return {k: v for k, v in super()._list_files(path, patterns).items() if ".." not in k}


class RDSessions(Sessions):
    """MONAI Label's sessions with plain session ids and no archive uploads.

    ``Sessions`` joins the session id of a request into paths (``DELETE /session/..`` reaches the sessions folder's
    parent) and unpacks uploaded archives without checking their member paths. Here an id that is not a name is
    no session, and ``uncompress`` is refused (HTTP 422): upload the image files themselves.

    Args:
        store_path, expiry: ``Sessions``'.
        uploads: the server's upload folder (a refused upload is removed from it).
    """

    def __init__(self, store_path: str = "", expiry: int = 3600, uploads: UploadFolder | None = None):
        super().__init__(store_path, expiry)
        self.uploads = uploads

    def get_session(self, session_id: str, update_ts: bool = True, fetch_cache: bool = True) -> Any:
        try:
            check_name(session_id, "session id")
        except Exception:
            return None  # the endpoints answer 404 for no session
        return super().get_session(session_id, update_ts, fetch_cache)

    def remove_session(self, session_id: str) -> None:
        super().remove_session(check_name(session_id, "session id"))

    def add_session(self, data_file: str, expiry: int = 0, uncompress: bool = False, session_id: Any = None) -> Any:
        try:
            if uncompress:
                raise http_error(422, "uncompress is not supported: upload the image files themselves.")
            if session_id is not None:
                check_name(session_id, "session id")
        except Exception:
            if self.uploads is not None:
                self.uploads.discard(data_file)
            raise
        return super().add_session(data_file, expiry, uncompress=False, session_id=session_id)

    def holds(self, path: Any) -> bool:
        """Whether ``path`` is a session's image (in the sessions folder)."""
        if not isinstance(path, str) or not os.path.isabs(path):
            return False
        root = os.path.realpath(self.store_path)
        return os.path.commonpath([root, os.path.realpath(path)]) == root and os.path.exists(path)
