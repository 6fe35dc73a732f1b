"""The server's own folder for the files clients upload, so that an upload is told apart from a server path.

MONAI Label's endpoints write every uploaded file (``POST /infer`` ``file``, ``PUT /datastore/image|label``) to
``tempfile.NamedTemporaryFile(...).name`` and hand the app its path; they remove it only after a successful answer.
:class:`UploadFolder` makes a private folder (mode 0700, random name) the process's temporary folder, so:

- an image path is an upload exactly when it lies directly in that folder (:meth:`UploadFolder.holds`); any other
  path a client names is refused, and the folder's name appears in no answer;
- an upload is removed when its request fails (:meth:`UploadFolder.discard`), files that a request failing inside
  MONAI Label's own endpoint code left behind are removed by :meth:`UploadFolder.sweep` (run on every request the
  app serves), and the folder goes when the process exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time

__all__ = ["UploadFolder"]


class UploadFolder:
    """A private temporary folder for this process's uploads.

    Args:
        max_age_s: :meth:`sweep` removes files older than this (longer than any request takes).
        install: make it ``tempfile``'s folder for this process (MONAI Label's endpoints write uploads there).
    """

    def __init__(self, max_age_s: float = 3600.0, install: bool = True):
        self.path = os.path.realpath(tempfile.mkdtemp(prefix="monai_rd_label_"))
        self.max_age_s = float(max_age_s)
        if install:
            tempfile.tempdir = self.path
        atexit.register(shutil.rmtree, self.path, True)

    def holds(self, path: object) -> bool:
        """Whether ``path`` is a file directly in this folder (an upload), never a path outside it."""
        if not isinstance(path, str) or not os.path.isabs(path):
            return False
        real = os.path.realpath(path)
        return os.path.dirname(real) == self.path and os.path.isfile(real)

    def discard(self, *paths: object) -> None:
        """Remove the uploads among ``paths``: for a path in this folder, the entry of the folder that holds it (the
        file, or the folder MONAI Label made for a multi-file upload); other values are ignored."""
        for path in paths:
            if not isinstance(path, str) or not os.path.isabs(path):
                continue
            relative = os.path.relpath(os.path.realpath(path), self.path)
            if relative == "." or relative.startswith(".."):
                continue
            top = os.path.join(self.path, relative.split(os.sep)[0])
            if os.path.isdir(top) and not os.path.islink(top):
                shutil.rmtree(top, ignore_errors=True)
            elif os.path.lexists(top):
                os.remove(top)

    def sweep(self) -> None:
        """Remove files and folders older than ``max_age_s`` (left by requests that failed before the app saw them)."""
        cutoff = time.time() - self.max_age_s
        for entry in os.scandir(self.path):
            try:
                if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.remove(entry.path)
            except FileNotFoundError:  # removed meanwhile by the request's own clean-up
                continue
