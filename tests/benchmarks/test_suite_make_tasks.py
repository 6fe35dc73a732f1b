"""benchmarks/suite/make_tasks.py on a synthetic volume: labels, split by slice blocks without leaks, RGB slabs."""

import json
import re

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from suite_modules import load_suite_module  # tests/benchmarks, on sys.path under pytest

from monai_rd.data import check_datalist

mt = load_suite_module("make_tasks")


def _volume():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 32, 60), dtype=np.uint8)
    atlas = np.zeros(image.shape, np.int32)
    atlas[:15] = 7  # class "a" on the left, "b" (two label values) on the right
    atlas[15:, :16] = 3
    atlas[15:, 16:] = 4
    return image, atlas


def _slices(datalist, split):
    return [int(re.search(r"_s(\d+)_", it["image"]).group(1)) for it in datalist[split]]


@pytest.mark.parametrize("rgb_offset", [0, 2])
def test_patches_are_labelled_at_their_centre_and_splits_share_no_slice(tmp_path, rgb_offset):
    """Catches a wrong label lookup, a patch cut from the wrong place, and splits that share a slice (or, for
    the RGB slab s-d, s, s+d, any of its slices)."""
    image, atlas = _volume()
    d = mt.derive_task(image, atlas, {"a": (7,), "b": (3, 4)}, str(tmp_path), axis=2, patch=8, rgb_offset=rgb_offset,
                       per_class={"training": 3, "validation": 2, "test": 4}, grid_step=2, min_train=3)
    assert d["counts"] == {s: {"a": n, "b": n} for s, n in (("training", 3), ("validation", 2), ("test", 4))}
    assert json.load(open(tmp_path / "datalist.json"))["test"] == d["test"]
    used = {}
    for split in mt.SPLITS:
        for it, s in zip(d[split], _slices(d, split)):
            r, c = map(int, re.search(r"_r(\d+)_c(\d+)", it["image"]).groups())
            assert it["label"] == (0 if atlas[r, c, s] == 7 else 1)
            arr = np.asarray(Image.open(tmp_path / it["image"]))
            planes = [s - rgb_offset, s, s + rgb_offset] if rgb_offset else [s]
            tiles = [np.rot90(image[r - 4 : r + 4, c - 4 : c + 4, z]) for z in planes]
            assert np.array_equal(arr, np.stack(tiles, -1) if rgb_offset else tiles[0])
            for z in range(s - rgb_offset, s + rgb_offset + 1):
                assert used.setdefault(z, split) == split, f"slice {z} in {used[z]} and {split}"
    check_datalist(str(tmp_path / "datalist.json"), d["classes"], base_dir=str(tmp_path))


def test_block_split_keeps_a_margin_at_block_edges():
    """Catches centres on block edges: a neighbouring block (another split) would then hold the adjacent slice."""
    split = mt.block_split(24, block=6, margin=1)
    assert sorted(split) == [s for s in range(24) if s % 6 not in (0, 5)]
    assert [split[s] for s in (1, 7, 13, 19)] == list(mt.BLOCK_PATTERN)
    with pytest.raises(ValueError, match="keeps no slice"):
        mt.block_split(24, block=4, margin=2)


def test_too_few_candidates_name_the_class_and_split(tmp_path):
    """Catches a task silently built with fewer images than asked (e.g. a class absent from validation)."""
    image, atlas = _volume()
    with pytest.raises(ValueError, match=r"b \(validation: \d+ < 500\)"):
        mt.derive_task(image, atlas, {"a": (7,), "b": (3, 4)}, str(tmp_path), axis=2, patch=8,
                       per_class={"training": 3, "validation": 500, "test": 1}, min_train=3)


def test_atlas_is_resampled_through_the_affines(tmp_path):
    """Catches ignoring the atlas' flipped, shifted grid (Harvard-Oxford's x axis runs the other way)."""
    ref = nib.Nifti1Image(np.zeros((4, 5, 3), np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))
    labels = np.arange(6 * 7 * 4, dtype=np.int32).reshape(6, 7, 4)
    flip = np.array([[-1.0, 0, 0, 4], [0, 1, 0, -1], [0, 0, 1, 0], [0, 0, 0, 1]])  # x' = 4 - x, y' = y + 1
    nib.save(nib.Nifti1Image(labels, flip), str(tmp_path / "atlas.nii.gz"))
    out = mt.load_on_grid(str(tmp_path / "atlas.nii.gz"), ref)
    for x, y, z in [(0, 0, 0), (3, 4, 2), (1, 2, 1)]:
        assert out[x, y, z] == labels[4 - x, y + 1, z]


def test_label_tables_group_left_and_right(tmp_path):
    """Catches a class regex that also takes sub-regions (Frontal_Sup_Orb is not Frontal_Sup)."""
    table = tmp_path / "t.txt"
    table.write_text("1 Frontal_Sup_L 2101\n2 Frontal_Sup_R 2102\n3 Frontal_Sup_Orb_L 2111\n")
    assert mt._by_name(str(table), {"frontal_sup": r"Frontal_Sup_[LR]"}) == {"frontal_sup": (1, 2)}
    with pytest.raises(ValueError, match="no label matches"):
        mt._by_name(str(table), {"x": r"Nothing"})


def test_unlabelled_patches_come_from_training_blocks_and_leave_the_labelled_splits_unchanged(tmp_path):
    """Catches unlabelled patches that change the labelled task (another random draw), that come from a
    validation or test slice, that repeat a training patch, or that carry a label or a class folder."""
    image, atlas = _volume()
    kw = dict(axis=2, patch=8, grid_step=2, min_train=3)
    per_class = {"training": 3, "validation": 2, "test": 4}
    plain = mt.derive_task(image, atlas, {"a": (7,), "b": (3, 4)}, str(tmp_path / "plain"), per_class=per_class, **kw)
    d = mt.derive_task(image, atlas, {"a": (7,), "b": (3, 4)}, str(tmp_path / "u"),
                       per_class={**per_class, "unlabelled": 5}, **kw)
    assert "unlabelled" not in plain and all(d[s] == plain[s] for s in mt.SPLITS)
    assert len(d["unlabelled"]) == 10 and all(set(it) == {"image"} for it in d["unlabelled"])
    assert all(it["image"].startswith("unlabelled/") for it in d["unlabelled"])
    names = {it["image"].split("/")[-1] for it in d["training"]}
    assert not names & {it["image"].split("/")[-1] for it in d["unlabelled"]}
    held_out = set(_slices(d, "validation")) | set(_slices(d, "test"))
    assert not held_out & set(_slices(d, "unlabelled"))
    split_of = mt.block_split(image.shape[2], block=6, margin=1)  # derive_task's default blocks for gray patches
    assert {split_of[s] for s in _slices(d, "unlabelled")} == {"training"}
    check_datalist(str(tmp_path / "u" / "datalist.json"), d["classes"], base_dir=str(tmp_path / "u"),
                   unlabelled_splits=["unlabelled"])
