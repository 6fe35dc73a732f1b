"""Typed bundle options: the command line's strings mean what the user typed."""

import pytest

from monai_rd.errors import OptionError
from monai_rd.utils.options import as_bool, as_float, as_int, as_optional_float, as_optional_int, epoch_length


@pytest.mark.parametrize("value", [True, "true", "True", "TRUE", 1, "1", "yes"])
def test_as_bool_true(value):
    assert as_bool(value, "distill") is True


@pytest.mark.parametrize("value", [False, "false", "False", 0, "0", "no"])
def test_as_bool_false(value):
    # the bug this catches: bool("false") is True, so `--distill false` trained RD
    assert as_bool(value, "distill") is False


@pytest.mark.parametrize("value", ["flase", 2, None, "", 0.5, [False]])
def test_as_bool_rejects_and_names_the_option(value):
    with pytest.raises(OptionError, match="--resume must be true or false"):
        as_bool(value, "resume")


def test_numbers():
    assert as_int("8", "epochs") == 8 and as_int(8.0, "epochs") == 8
    with pytest.raises(OptionError, match="--epochs must be an integer"):
        as_int(8.5, "epochs")
    with pytest.raises(OptionError, match="--epochs must be an integer"):
        as_int(True, "epochs")
    with pytest.raises(OptionError, match="--epochs must be at least 1"):
        as_int(0, "epochs", min_value=1)
    assert as_float("1e-3", "lr", positive=True) == 1e-3
    for bad in ("nan", "inf", "fast"):
        with pytest.raises(OptionError, match="--lr must be a finite number"):
            as_float(bad, "lr")
    with pytest.raises(OptionError, match="--lr must be positive"):
        as_float(0, "lr", positive=True)


@pytest.mark.parametrize("value", [None, "null", "None", "none"])
def test_optional_values_accept_null(value):
    # the demo docs' own `--phi_hidden null` failed deep inside ReprogrammingNet
    assert as_optional_int(value, "phi_hidden") is None
    assert as_optional_float(value, "grad_clip_norm") is None


def test_optional_values_check_numbers():
    assert as_optional_int("64", "phi_hidden") == 64
    with pytest.raises(OptionError, match="--phi_hidden"):
        as_optional_int("wide", "phi_hidden")


def test_epoch_length_refuses_an_empty_epoch():
    assert epoch_length(10, 3) == 3
    with pytest.raises(OptionError, match="--batch_size 32 is larger than the 8 training images"):
        epoch_length(8, 32)


def test_list_options_as_a_shell_types_them():
    """Catches a window or voxel size typed as text (`--roi_size "[96,96,64]"`) reaching MONAI as a string, a list of
    the wrong length passing, and `null` not meaning "no resampling"."""
    from monai_rd.utils.options import as_float_list, as_int_list, as_optional_float_list, as_optional_str

    assert as_int_list("[96,96,64]", "roi_size", length=3) == [96, 96, 64]
    assert as_int_list(32, "roi_size", length=2) == [32, 32]  # one number for every axis
    assert as_float_list((-1000, 200), "intensity_range", length=2) == [-1000.0, 200.0]
    assert as_optional_float_list("null", "pixdim", length=3) is None
    assert as_optional_str(" RAS ", "axcodes") == "RAS" and as_optional_str("None", "axcodes") is None
    for call, match in (
        (lambda: as_int_list("[96,96]", "roi_size", length=3), "--roi_size must have 3 values"),
        (lambda: as_int_list("[96,0,96]", "roi_size", min_value=1), r"--roi_size\[1\] must be at least 1"),
        (lambda: as_int_list("ninety", "roi_size"), "--roi_size must be a list"),
        (lambda: as_optional_float_list("[1,-1]", "pixdim", positive=True), r"--pixdim\[1\] must be positive"),
        (lambda: as_optional_str(3, "axcodes"), "--axcodes must be text"),
    ):
        with pytest.raises(OptionError, match=match):
            call()
