import os
import re

import numpy as np
import pytest
from PIL import Image

from demo_data.brain_lobes import aal_lobe_map, derive_brain_lobe_patches


def test_aal_table_maps_codes_to_lobes(tmp_path):
    f = tmp_path / "aal.txt"
    f.write_text("1 Precentral_L 2001\n43 Calcarine_L 5001\n29 Insula_L 3001\n91 Cerebelum_Crus1_L 9001\n")
    assert aal_lobe_map(str(f)) == {1: "frontal", 43: "occipital", 91: "cerebellum"}
    f.write_text("1 Precentral_L\n")
    with pytest.raises(ValueError, match="aal.txt:1"):
        aal_lobe_map(str(f))


def test_patches_are_labelled_by_centre_and_skip_block_edges(tmp_path):
    shape = (40, 40, 30)
    image = np.random.default_rng(0).random(shape).astype(np.float32) + 1
    atlas = np.zeros(shape, np.int32)
    atlas[:20] = 1  # "frontal" in x < 20
    atlas[20:] = 43  # "occipital" in x >= 20
    counts = derive_brain_lobe_patches(
        image, atlas, {1: "frontal", 43: "occipital"}, str(tmp_path),
        patch=8, block=10, grid_step=3, max_per_class_block=100,
    )
    assert set(counts) == {"frontal", "occipital"}
    for lobe in counts:
        files = os.listdir(tmp_path / lobe)
        assert len(files) == counts[lobe]
        for name in files:
            z, y, x = (int(v) for v in re.match(r"ch2_z(\d+)_y(\d+)_x(\d+)\.png", name).groups())
            assert z % 10 not in (0, 9)  # neighbouring blocks never share adjacent slices
            assert (x < 20) == (lobe == "frontal")
            assert Image.open(tmp_path / lobe / name).size == (8, 8)
    with pytest.raises(ValueError, match="grid"):
        derive_brain_lobe_patches(image, atlas[:10], {}, str(tmp_path))
