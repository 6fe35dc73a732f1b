import json
import os

import nibabel as nib
import numpy as np
import pytest

from demo_data.brain3d_classify import derive_brain3d_patches, patch_centre
from demo_data.brain_lobes import LOBE_CLASSES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = os.path.join(REPO, "bundles", "rd_brain3d_classify", "data")
MRICRON = "/usr/share/mricron/templates"
PATCH = 16


def _covered(name):
    """The voxels of the 2 mm volume a patch holds, from its centre (left: [c-8, c+8), mirrored right: [c-7, c+9))."""
    cx, cy, cz = patch_centre(name)
    x0 = cx - PATCH // 2 + (1 if "_R_" in name else 0)
    return {(x, y, z) for x in range(x0, x0 + PATCH) for y in range(cy - 8, cy + 8) for z in range(cz - 8, cz + 8)}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    # the image encodes each voxel's x, y and z, the labels change with every step along each axis,
    # so a patch shows where it came from
    tmp = tmp_path_factory.mktemp("brain3d")
    shape = (90, 108, 90)
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    image = (x * 10000 + y * 100 + z).astype(np.float32)
    labels = ((x + 2 * y + 3 * z) % 6).astype(np.uint8)  # 0 (background) and the five lobes
    datalist = derive_brain3d_patches(image, labels, str(tmp), max_per_class_slab=3)
    return tmp, image, labels, datalist


def test_labels_are_the_atlas_lobe_at_each_patch_centre(synthetic):
    """Catches a patch cut off its named centre (e.g. one voxel on the mirrored side) or a label from another voxel."""
    tmp, image, labels, datalist = synthetic
    assert json.load(open(tmp / "datalist.json"))["classes"] == list(LOBE_CLASSES)
    lo, hi = np.percentile(image[labels > 0], [0.5, 99.5])
    img8 = np.round(np.clip((image - lo) / (hi - lo), 0, 1) * 255)
    n = 0
    for items in datalist.values():
        for it in items:
            cx, cy, cz = patch_centre(it["image"])
            assert it["label"] == labels[cx, cy, cz] - 1  # lobe i + 1 in the atlas is class i
            vol = np.asarray(nib.load(tmp / it["image"]).dataobj).astype(float)
            x0 = cx - 8 + (1 if "_R_" in it["image"] else 0)
            expected = img8[x0 : x0 + PATCH, cy - 8 : cy + 8, cz - 8 : cz + 8]
            expected = expected[::-1] if "_R_" in it["image"] else expected
            assert np.array_equal(vol, expected), it["image"]  # the centre voxel sits at index 8 on every axis
            assert vol[8, 8, 8] == img8[cx, cy, cz]
            n += 1
    assert n == sum(len(v) for v in datalist.values()) > 0


def test_no_voxel_is_in_two_splits_and_training_is_the_left_hemisphere(synthetic):
    """Catches overlapping slabs or hemispheres (spatial leakage between training and evaluation)."""
    _, _, _, datalist = synthetic
    assert all(datalist[s] for s in ("training", "validation", "test"))
    voxels = {s: set().union(*(_covered(it["image"]) for it in items)) for s, items in datalist.items()}
    assert not voxels["training"] & voxels["validation"]
    assert not voxels["training"] & voxels["test"]
    assert not voxels["validation"] & voxels["test"]
    assert all("_L_" in it["image"] for it in datalist["training"])
    assert all("_R_" in it["image"] for s in ("validation", "test") for it in datalist[s])
    assert max(x for x, _, _ in voxels["training"]) < min(x for x, _, _ in voxels["validation"] | voxels["test"])


def test_right_hemisphere_patches_are_mirrored(synthetic):
    """Catches the mirroring being dropped: the right patches must show x decreasing along the stored x axis."""
    tmp, _, _, datalist = synthetic
    left = np.asarray(nib.load(tmp / datalist["training"][0]["image"]).dataobj).astype(float)
    right = np.asarray(nib.load(tmp / datalist["test"][0]["image"]).dataobj).astype(float)
    assert np.all(np.diff(left[:, 0, 0]) > 0) and np.all(np.diff(right[:, 0, 0]) < 0)


def test_bad_geometry_is_refused(tmp_path):
    with pytest.raises(ValueError, match="patch=15"):
        derive_brain3d_patches(np.zeros((90, 108, 90)), np.zeros((90, 108, 90), np.uint8), str(tmp_path), patch=15)
    with pytest.raises(ValueError, match="do not fit"):
        derive_brain3d_patches(np.zeros((50, 50, 50)), np.zeros((50, 50, 50), np.uint8), str(tmp_path))
    with pytest.raises(ValueError, match="not a patch name"):
        patch_centre("ch2_z012.nii.gz")


@pytest.mark.skipif(not os.path.isfile(os.path.join(MRICRON, "ch2.nii.gz")), reason="needs Debian's mricron-data")
def test_shipped_bundle_data_is_the_derivation_of_mricron_data(tmp_path):
    """Catches shipped patches or labels that differ from what the documented command derives from the atlas."""
    from demo_data.brain3d_classify import main

    main(["--out", str(tmp_path)])
    shipped = json.load(open(os.path.join(SHIPPED, "datalist.json")))
    assert json.load(open(tmp_path / "datalist.json")) == shipped
    assert all({it["label"] for it in shipped[s]} == set(range(5)) for s in ("training", "validation", "test"))
    for name in sorted(os.listdir(tmp_path / "images")):
        new = np.asarray(nib.load(tmp_path / "images" / name).dataobj)
        old = np.asarray(nib.load(os.path.join(SHIPPED, "images", name)).dataobj)
        assert np.array_equal(new, old), name
