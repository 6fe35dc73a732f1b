import json
import os

import nibabel as nib
import numpy as np
import pytest

from demo_data.brain_segment import SEGMENT_CLASSES, derive_brain_segment_slabs, downsample2, lobe_label_volume

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = {3: os.path.join(REPO, "bundles", "rd_brain_segment", "data"),
           2: os.path.join(REPO, "bundles", "rd_brain_segment_2d", "data")}
MRICRON = "/usr/share/mricron/templates"


def test_aal_values_become_lobe_labels():
    atlas = np.array([[0, 3, 7], [9, 3, 0]])
    labels = lobe_label_volume(atlas, {3: "frontal", 9: "temporal"})
    assert labels.tolist() == [[0, 2, 0], [5, 2, 0]]  # unlisted regions (7) are background
    assert SEGMENT_CLASSES[2] == "frontal" and SEGMENT_CLASSES[5] == "temporal"


def test_downsampling_averages_the_image_and_takes_the_label_majority():
    image = np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    labels = np.zeros((4, 4, 2), np.uint8)
    labels[:2, :2, :] = 3
    labels[0, 0, 0] = 1  # 7 of 8 voxels say 3
    labels[2:, 2:, :] = 4
    labels[2:, 2:, 0] = 0  # a 4-4 tie resolves to the lower label
    img, lab = downsample2(image, labels)
    assert img.shape == lab.shape == (2, 2, 1)
    assert img[0, 0, 0] == pytest.approx(image[:2, :2, :].mean())
    assert lab[:, :, 0].tolist() == [[3, 0], [0, 0]]


def test_slabs_split_by_hemisphere_without_shared_voxels(tmp_path):
    # the x coordinate is written into the image, so each slab shows where it came from
    shape = (90, 108, 90)
    image = np.broadcast_to(np.arange(shape[0], dtype=np.float32)[:, None, None], shape).copy()
    labels = np.ones(shape, np.uint8)
    datalist = derive_brain_segment_slabs(image, labels, str(tmp_path))
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [5, 2, 3]
    assert json.load(open(tmp_path / "datalist.json"))["classes"] == list(SEGMENT_CLASSES)
    seen = {}
    for split, items in datalist.items():
        for it in items:
            vol = np.asarray(nib.load(tmp_path / it["image"]).dataobj).astype(float)
            assert vol.shape == (40, 96, 16)
            # the image was rescaled to uint8 monotonically: compare orders, not values
            cols = vol[:, 0, 0]
            seen[it["image"]] = (split, cols)
    for name, (split, cols) in seen.items():
        if split == "training":
            assert np.all(np.diff(cols) >= 0) and "_L_" in name  # left hemisphere, as stored
        else:
            assert np.all(np.diff(cols) <= 0) and "_R_" in name  # right hemisphere, mirrored
    left_max = max(c.max() for s, c in seen.values() if s == "training")
    right_min = min(c.min() for s, c in seen.values() if s != "training")
    assert left_max < right_min  # no column of the volume is in both a training and an evaluation slab


@pytest.mark.skipif(not os.path.isfile(os.path.join(MRICRON, "ch2.nii.gz")), reason="needs Debian's mricron-data")
@pytest.mark.parametrize("dims", [3, 2])
def test_shipped_bundle_data_is_the_derivation_of_mricron_data(tmp_path, dims):
    from demo_data.brain_segment import main

    main(["--out", str(tmp_path), "--spatial_dims", str(dims)])
    assert json.load(open(tmp_path / "datalist.json")) == json.load(open(os.path.join(SHIPPED[dims], "datalist.json")))
    for name in sorted(os.listdir(tmp_path / "labels")):
        for folder in ("images", "labels"):
            new = np.asarray(nib.load(tmp_path / folder / name).dataobj)
            old = np.asarray(nib.load(os.path.join(SHIPPED[dims], folder, name)).dataobj)
            assert new.ndim == dims and np.array_equal(new, old), f"{folder}/{name}"


def test_2d_slices_are_single_slices_of_the_3d_split_and_every_one_shows_brain(tmp_path):
    """Catches 2D items taken from the wrong slice or hemisphere, slices without any labelled brain, and a 2D
    derivation that silently keeps a slab axis."""
    from demo_data.brain_segment import SLICES_2D, SlabLayout

    shape = (90, 108, 90)
    image = np.broadcast_to(np.arange(shape[2], dtype=np.float32)[None, None, :], shape).copy()  # z in the image
    labels = np.ones(shape, np.uint8)
    datalist = derive_brain_segment_slabs(image, labels, str(tmp_path), SLICES_2D, spatial_dims=2)
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [35, 17, 18]
    value_at = {}
    for split, items in datalist.items():
        for it in items:
            img = np.asarray(nib.load(tmp_path / it["image"]).dataobj)
            assert img.shape == (40, 96)
            z = int(it["image"].split("_z")[1][:3])
            assert len(np.unique(img)) == 1 and ("_L_" in it["image"]) == (split == "training")
            assert 8 <= z <= 76 and (z - 8) % 2 == 0  # every other slice of the labelled range
            value_at.setdefault(z, set()).add(int(img[0, 0]))
    # the image (rescaled monotonically) shows the slice its name says: one value per z, increasing with z
    values = [value_at[z] for z in sorted(value_at)]
    assert all(len(v) == 1 for v in values) and np.all(np.diff([v.pop() for v in values]) > 0)
    with pytest.raises(ValueError, match="one-slice slabs"):
        derive_brain_segment_slabs(image, labels, str(tmp_path / "x"), SlabLayout(), spatial_dims=2)
