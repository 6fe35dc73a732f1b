"""One recipe for every bundle: the committed configs are the generator's output."""

import json
import os

import pytest

from monai_rd.bundle.generate import GENERATED, OVERLAYS, generate_bundle, main, set_by_id

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLES = sorted(
    os.path.join(REPO, "bundles", b)
    for b in os.listdir(os.path.join(REPO, "bundles"))
    if os.path.isfile(os.path.join(REPO, "bundles", b, "configs", "overrides.json"))
)


def test_every_bundle_is_generated():
    assert {os.path.basename(b) for b in BUNDLES} >= {
        "rd_demo", "rd_busi", "rd_isic2018", "rd_covid_ct", "rd_btc", "rd_chestxray"
    }


@pytest.mark.parametrize("bundle", BUNDLES, ids=os.path.basename)
def test_committed_configs_equal_the_generator_output(bundle):
    for fname, text in generate_bundle(bundle).items():
        with open(os.path.join(bundle, "configs", fname)) as f:
            assert f.read() == text, f"{fname} of {bundle} is stale: run `python -m monai_rd.bundle.generate`"


def test_overrides_hold_only_what_is_specific():
    # the recipe is shared: each bundle's overrides are a small fraction of its generated train.json
    for bundle in BUNDLES:
        overrides = json.load(open(os.path.join(bundle, "configs", "overrides.json")))
        train = open(os.path.join(bundle, "configs", "train.json")).read()
        assert len(json.dumps(overrides)) < 0.4 * len(train), bundle


def test_set_by_id_and_unknown_ids():
    config = {"train": {"augmentation": [{"prob": 0.5}]}}
    set_by_id(config, "train#augmentation#0#prob", 0.1)
    set_by_id(config, "train#epochs", 3)
    assert config == {"train": {"augmentation": [{"prob": 0.1}], "epochs": 3}}
    with pytest.raises(KeyError, match="no 'validate'"):
        set_by_id(config, "validate#epochs", 3)


def test_check_mode_reports_a_stale_file(tmp_path, monkeypatch, capsys):
    bundle = tmp_path / "bundles" / "rd_x" / "configs"
    bundle.mkdir(parents=True)
    (bundle / "overrides.json").write_text(
        json.dumps({"common": {"image_size": 32, "batch_size": 8}, "train": {"epochs": 2}})
    )
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    assert all((bundle / f).is_file() for f in GENERATED)
    train = json.loads((bundle / "train.json").read_text())
    infer = json.loads((bundle / "inference.json").read_text())
    assert train["epochs"] == 2 and train["image_size"] == 32 and train["batch_size"] == infer["batch_size"] == 8
    assert infer["image_size"] is None  # inference takes the size the model was trained at
    assert train["bundle_root"] == "bundles/rd_x"
    assert main(["--check"]) == 0
    (bundle / "train.json").write_text("{}")
    assert main(["--check"]) == 1
    assert "train.json" in capsys.readouterr().err


@pytest.mark.parametrize("bundle", BUNDLES, ids=os.path.basename)
def test_multi_gpu_overlay_is_generated_for_every_bundle(bundle):
    """Catches a bundle without the overlay, and an overlay whose initialize drops train.json's own entries
    (a later config file replaces the whole list, so the generator must repeat them after the overlay's)."""
    out = generate_bundle(bundle)
    assert set(out) == {*GENERATED, *OVERLAYS}
    train, overlay = json.loads(out["train.json"]), json.loads(out["multi_gpu_train.json"])
    assert overlay["initialize"][: -len(train["initialize"])] == ["$@device"]
    assert overlay["initialize"][-len(train["initialize"]):] == train["initialize"]
    assert "<bundle>" not in out["multi_gpu_train.json"]
    assert f"bundles/{os.path.basename(bundle)}/configs/multi_gpu_train.json" in overlay["_desc_"]


def test_check_mode_reports_a_stale_overlay(tmp_path, monkeypatch, capsys):
    bundle = tmp_path / "bundles" / "rd_x" / "configs"
    bundle.mkdir(parents=True)
    (bundle / "overrides.json").write_text(json.dumps({"common": {"image_size": 32}}))
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0 and (bundle / "multi_gpu_train.json").is_file()
    assert main(["--check"]) == 0
    (bundle / "multi_gpu_train.json").write_text("{}")
    assert main(["--check"]) == 1
    assert "multi_gpu_train.json" in capsys.readouterr().err


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v) if not isinstance(v, str) else [v]
            if k == "_disabled_" and isinstance(v, str):
                yield v
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


@pytest.mark.parametrize("bundle", BUNDLES, ids=os.path.basename)
def test_train_json_is_short_and_declares_no_method_logic(bundle):
    """Catches the recipe growing back into a program: train.json over 250 lines, a `$` expression over 120
    characters, or a conditional that picks what to build by the method (the method object decides that)."""
    text = generate_bundle(bundle)["train.json"]
    assert len(text.splitlines()) <= 250
    config = json.loads(text)
    expressions = [s for s in _strings(config) if s.startswith("$")]
    assert expressions and all(len(e) <= 121 for e in expressions), [e for e in expressions if len(e) > 121]
    method_words = ("method", "spec", "distill", "phi")
    conditional = [e for e in expressions if " if " in f" {e} " and any(w in e for w in method_words)]
    disabled = [v for v in _strings(config) if "method" in v and v.startswith("$not")]
    assert not conditional and not disabled, conditional + disabled


@pytest.mark.parametrize("bundle", ["rd_demo", "rd_brain_segment"])
def test_every_option_is_a_plain_top_level_value_read_by_the_options_dataclass(bundle):
    """Catches an option of the dataclass missing from train.json (a command-line override would be ignored) or
    referenced under another name."""
    import dataclasses

    from monai.utils import optional_import

    config = json.loads(generate_bundle(os.path.join(REPO, "bundles", bundle))["train.json"])
    target = config["options"]["_target_"]
    cls, _ = optional_import(target.rpartition(".")[0], name=target.rpartition(".")[2])
    names = [f.name for f in dataclasses.fields(cls)]
    refs = {k: v for k, v in config["options"].items() if k != "_target_"}
    assert set(refs) == set(names) and all(refs[n] == f"@{n}" for n in names)
    assert all(n in config for n in names)


def test_dump_json_shares_lines_only_within_the_width():
    """Catches the formatter writing lines past its width, or packing members of different rows together."""
    from monai_rd.bundle.generate import LINE_WIDTH, dump_json

    obj = {"a": 1, "b": [1, 2], "c": {"x": "y" * 200}, "d": 2, "e": 3}
    text = dump_json(obj, rows=[("a", "b"), ("d", "e")])
    assert json.loads(text) == obj
    lines = text.splitlines()
    assert '    "a": 1, "b": [1, 2],' in lines and '    "d": 2, "e": 3' in lines
    assert all(len(line) <= LINE_WIDTH for line in lines if "yyyy" not in line)
