"""An unknown --key on a bundle command stops the run with the closest known options (monai_rd.bundle.command_line)."""

import json
import os
import subprocess
import sys

import monai.bundle
import pytest

from monai_rd.bundle import check_command_line, check_overrides
from monai_rd.bundle.command_line import parse_bundle_argv
from monai_rd.errors import OptionError, find_rd_error

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "bundles", "rd_demo", "configs")
TRAIN, EVALUATE = os.path.join(CONFIGS, "train.json"), os.path.join(CONFIGS, "evaluate.json")
MAIN = os.path.join(os.path.dirname(monai.bundle.__file__), "__main__.py")  # sys.argv[0] of `python -m monai.bundle`


def test_a_mistyped_option_on_the_command_line_stops_the_run_naming_the_option_it_meant(tmp_path):
    """Catches `--epoch 2` silently ignored (the run trained "Epoch n/240") by `python -m monai.bundle run` as typed."""
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", TRAIN, "--epoch", "2", "--ckpt_dir",
         str(tmp_path / "models"), "--dataset_dir", str(tmp_path / "nowhere")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-2]
    assert last.startswith("monai_rd: OptionError: unknown option(s)") and "--epoch: did you mean --epochs?" in last
    assert not os.path.exists(tmp_path / "models")  # stopped before any work


def test_monai_bundle_run_from_python_is_checked_too(tmp_path):
    """Catches the check reading only sys.argv: `monai.bundle.run(...)` from a script passes its overrides as
    arguments (pytest's own sys.argv is not a bundle command line and must not be read as one)."""
    with pytest.raises(Exception) as info, pytest.warns(UserWarning, match="parsing config_file"):
        monai.bundle.run(config_file=[TRAIN, EVALUATE], ckpt_dir=str(tmp_path), lrr=0.1)
    err = find_rd_error(info.value)
    assert isinstance(err, OptionError) and "--lrr: did you mean --lr?" in str(err)
    check_command_line()  # no MONAI command on the stack and not `python -m monai.bundle`: nothing to check


def test_known_keys_nested_ids_component_arguments_and_monais_own_arguments_pass():
    """Catches a correct override refused: a recipe option, a nested id, a new argument of a component, an id only
    the second config file has, MONAI's run arguments, _meta_ ids and the tracking settings."""
    check_overrides(
        ["epochs", "train#augmentation", "train#augmentation#0#prob", "validate#dataset#cache_rate", "given#method",
         "_meta_#version"],
        [TRAIN, EVALUATE],
    )
    check_overrides(["experiment_name", "run_name"], TRAIN, tracking="mlflow")
    check_command_line([MAIN, "run", "training", "--config_file", f"['{TRAIN}','{EVALUATE}']", "--run_id", "run",
                        "--meta_file", os.path.join(CONFIGS, "metadata.json"), "--logging_file", "x.conf",
                        "--init_id", "initialize", "--epochs=2", "--amp", "--given#method", "rd"])


def test_unknown_keys_are_named_with_their_closest_known_ones():
    """Catches a typo of a nested id accepted as a new key, and suggestions drawn from the wrong level."""
    with pytest.raises(OptionError) as info:
        check_overrides(["train#augmentaton", "batchsize", "zzz"], TRAIN)
    text = str(info.value)
    assert "--train#augmentaton: did you mean --train#augmentation?" in text
    assert "--batchsize: did you mean --batch_size?" in text and "--zzz (" in text.replace("; --zzz", "--zzz")
    with pytest.raises(OptionError, match="--experiment_name"):
        check_overrides(["experiment_name"], TRAIN)  # a tracking setting only counts with --tracking


def test_the_command_line_fallback_reads_sys_argv_and_the_args_file(tmp_path):
    """Catches the fallback (used when MONAI's command is not on the stack) missing `--key=value`, a bare flag, or
    a typo that only the --args_file holds."""
    assert parse_bundle_argv([MAIN, "run", "net", "--a", "1", "--b=2", "--flag", "--c-d", "x"]) == (
        "run", {"a": "1", "b": "2", "flag": True, "c_d": "x"}
    )
    assert parse_bundle_argv(["pytest", "-q", "--epoch", "2"]) == (None, {})
    with pytest.raises(OptionError, match="--epoch: did you mean --epochs"):
        check_command_line([MAIN, "run", "--config_file", TRAIN, "--epoch", "2"])
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"config_file": TRAIN, "weight_decy": 0.1}))
    with pytest.raises(OptionError, match="--weight_decy: did you mean --weight_decay"):
        check_command_line([MAIN, "run", "--args_file", str(args)])
    # an exporter's own arguments are not overrides
    check_command_line([MAIN, "ckpt_export", "network_def", "--filepath", "m.ts", "--ckpt_file", "m.pt",
                        "--config_file", os.path.join(CONFIGS, "inference.json"), "--input_dir", "x"])
