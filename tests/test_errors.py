"""User-fixable errors are the top-level message of a failed bundle run, not MONAI's wrapper."""

import subprocess
import sys

from monai_rd.errors import OptionError, find_rd_error


def test_find_rd_error_walks_the_chain():
    try:
        try:
            raise OptionError("--distill must be true or false")
        except OptionError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as wrapped:
        assert str(find_rd_error(wrapped)) == "--distill must be true or false"
    assert find_rd_error(RuntimeError("other")) is None


CODE = """
import monai_rd.errors as e
e.install_excepthook()
try:
    raise e.OptionError('--epochs must be an integer')
except e.OptionError as x:
    raise RuntimeError('Failed to evaluate ConfigExpression') from x
"""


def test_hook_prints_our_message_last_and_keeps_the_traceback_on_request():
    run = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()
    assert "monai_rd: OptionError: --epochs must be an integer" in last[-2]
    assert "Failed to evaluate" not in run.stderr
    full = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env={"MONAI_RD_TRACEBACK": "1"})
    assert "Failed to evaluate ConfigExpression" in full.stderr and full.returncode == 1


def test_builtin_errors_raised_by_monai_rd_count_but_others_do_not(tmp_path):
    from monai_rd.data import list_images

    try:
        list_images(str(tmp_path / "nowhere"))
    except FileNotFoundError as e:
        assert find_rd_error(RuntimeError("wrapper")) is None
        try:
            raise RuntimeError("Failed to instantiate") from e
        except RuntimeError as wrapped:
            assert find_rd_error(wrapped) is e
    try:
        open(tmp_path / "missing")  # raised by Python, not by monai_rd: a bug to show in full
    except FileNotFoundError as e:
        assert find_rd_error(e) is None


def test_a_full_disk_anywhere_in_the_chain_is_the_message(tmp_path):
    """Catches ENOSPC (or torch.save's "file write failed", a RuntimeError) buried under MONAI's wrapper line: a
    full disk is the user's to fix whoever raised it."""
    import errno

    from monai_rd.errors import DiskFullError

    def wrapped(inner):
        try:
            try:
                raise inner
            except Exception as e:
                raise RuntimeError("Failed to evaluate ConfigExpression") from e
        except RuntimeError as outer:
            return find_rd_error(outer)

    err = wrapped(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "models" / "checkpoint.pt")))
    assert isinstance(err, DiskFullError) and f"writing {tmp_path / 'models' / 'checkpoint.pt'} failed" in str(err)
    torch_save = RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                              "data/3: file write failed")
    assert "the disk is full: saving a checkpoint or model (torch.save) failed" in str(wrapped(torch_save))
    assert wrapped(OSError(errno.EACCES, "Permission denied")) is None  # not ours, not a full disk: a bug shown in full
