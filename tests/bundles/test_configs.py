"""Every bundle's configs parse, reference only ids they define, and name importable components."""

import glob
import hashlib
import json
import os
import re

import pytest
from monai.bundle import ConfigParser

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLES = sorted(glob.glob(os.path.join(REPO, "bundles", "*", "configs")))
REF = re.compile(r"@([\w#]+)")
REQUIRED_META = (
    "version", "changelog", "monai_version", "pytorch_version", "task", "description", "network_data_format"
)


def _walk(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)
    elif isinstance(obj, str):
        yield obj


def _parser(*files, **overrides):
    p = ConfigParser()
    p.read_config(list(files))
    p.update(overrides)
    return p


def _recipe(configs):
    return json.load(open(os.path.join(configs, "overrides.json"))).get("recipe", "classification")


def _trained_spec(configs, ckpt_dir):
    """models/model_meta.json as training with the bundle's defaults writes it (no training needed)."""
    from monai_rd.bundle import write_model_spec

    train = _parser(os.path.join(configs, "train.json"))
    write_model_spec(train.get_parsed_content("model_spec"), str(ckpt_dir))
    # evaluation, inference and export refuse a model_meta.json without its model.pt (a run that saved no model)
    open(os.path.join(str(ckpt_dir), "model.pt"), "wb").close()
    return str(ckpt_dir)


def _check_references(parser):
    missing = [
        ref
        for s in _walk(parser.get())
        for ref in REF.findall(s)
        if ref.replace("#", "::") not in parser and ref not in parser
    ]
    assert not missing, f"undefined references: {sorted(set(missing))}"


def test_bundles_exist():
    names = {os.path.basename(os.path.dirname(b)) for b in BUNDLES}
    assert {"rd_demo", "rd_busi"} <= names


@pytest.mark.parametrize("configs", BUNDLES, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_bundle_layout_and_references(configs, tmp_path):
    root = os.path.dirname(configs)
    for f in ("metadata.json", "train.json", "evaluate.json", "inference.json", "logging.conf"):
        assert os.path.isfile(os.path.join(configs, f)), f
    assert os.path.isfile(os.path.join(root, "docs", "README.md"))
    assert os.path.isfile(os.path.join(root, "LICENSE"))
    meta = json.load(open(os.path.join(configs, "metadata.json")))
    for key in REQUIRED_META:
        assert key in meta, key
    train = _parser(os.path.join(configs, "train.json"))
    _check_references(train)
    for key in ("network", "network_def", "train#trainer", "validate#evaluator", "datalist", "run", "initialize"):
        assert key in train, key
    segmentation = _recipe(configs) == "segmentation"
    # the method object builds the trainer of its scheme (monai_rd.methods)
    assert train["train"]["trainer"]["_target_"] == "$@method_def.trainer"
    assert train["method_def"]["_target_"] == "monai_rd.methods.create_method"
    _check_references(_parser(os.path.join(configs, "train.json"), os.path.join(configs, "evaluate.json")))
    infer = _parser(os.path.join(configs, "inference.json"), ckpt_dir=_trained_spec(configs, tmp_path))
    _check_references(infer)
    for key in ("network_def", "preprocessing", "postprocessing", "inferer"):
        assert key in infer, key
    # the deployed network builds from the inference config and its output channels match the metadata
    net = infer.get_parsed_content("network_def")
    n_out = meta["network_data_format"]["outputs"]["pred"]["num_channels"]
    assert (net.head.out_channels if segmentation else net.head.out_features) == n_out
    # post-processing turns logits into probabilities (segmentation: then a label map, saved)
    post = [t for t in infer["postprocessing"]["transforms"] if t["_target_"].endswith("Activationsd")]
    assert post and (post[-1].get("softmax") or post[-1].get("sigmoid"))
    if not segmentation:
        assert infer["postprocessing"]["transforms"][-1] is post[-1]
    # components are referenced by full dotted paths into the installed package, never bundle scripts
    for s in _walk(train.get()):
        assert "scripts." not in s, s


SCHEMA = os.path.join(REPO, "monai_rd", "bundle", "schema", "metadata_schema.json")
SCHEMA_MD5 = hashlib.md5(open(SCHEMA, "rb").read()).hexdigest()


@pytest.mark.parametrize("configs", BUNDLES, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_monai_verifies_metadata_offline_and_network_shapes(configs, tmp_path):
    from monai.bundle import verify_metadata, verify_net_in_out

    # the shipped schema is used as-is (no download, its hash checked): a metadata file lacking a field fails
    verify_metadata(meta_file=os.path.join(configs, "metadata.json"), filepath=SCHEMA, hash_val=SCHEMA_MD5)
    verify_net_in_out(net_id="network_def", meta_file=os.path.join(configs, "metadata.json"),
                      config_file=os.path.join(configs, "inference.json"), ckpt_dir=_trained_spec(configs, tmp_path))


def test_schema_rejects_incomplete_metadata(tmp_path):
    from monai.bundle import verify_metadata

    meta = json.load(open(os.path.join(BUNDLES[0], "metadata.json")))
    del meta["network_data_format"]["outputs"]["pred"]["num_channels"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="num_channels"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=SCHEMA, hash_val=SCHEMA_MD5)
