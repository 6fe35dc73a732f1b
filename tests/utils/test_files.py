"""Atomic writes and file digests (monai_rd.utils.files)."""

import hashlib
import json
import os
import stat

import pytest

from monai_rd.utils.files import atomic_path, file_sha256, write_json_atomic


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_write_json_atomic_honours_the_umask_and_keeps_an_existing_mode(tmp_path, umask):
    path = tmp_path / "sub" / "m.json"
    old = os.umask(umask)
    try:
        write_json_atomic({"a": 1}, str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    assert json.load(open(path)) == {"a": 1}
    os.chmod(path, 0o640)
    write_json_atomic({"a": 2}, str(path))  # a rewrite keeps the file's mode, as open(path, "w") does
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 and json.load(open(path)) == {"a": 2}
    assert os.listdir(path.parent) == ["m.json"]  # no temporary file left


def test_a_failed_write_leaves_the_previous_file_and_no_temporary_file(tmp_path):
    """Catches a writer that truncates the target first, or leaves its temporary file behind on an error."""
    path = tmp_path / "m.json"
    write_json_atomic({"a": 1}, path)
    with pytest.raises(RuntimeError, match="disk"):
        with atomic_path(path) as tmp:
            open(tmp, "w").write("{half")
            raise RuntimeError("disk full")
    assert json.load(open(path)) == {"a": 1}
    assert os.listdir(tmp_path) == ["m.json"]


def test_file_sha256_is_the_digest_of_the_bytes(tmp_path):
    """Catches a digest of the name or of a partial read (several chunks)."""
    path = tmp_path / "f.bin"
    data = os.urandom(3000)
    path.write_bytes(data)
    assert file_sha256(path, chunk_size=1024) == hashlib.sha256(data).hexdigest()
