import os

import numpy as np
import pytest
from PIL import Image

from monai_rd.datasets import BUSI_CLASSES, busi_datalist


def test_busi_layout_masks_excluded_and_split_stratified(tmp_path):
    for c, n in zip(BUSI_CLASSES, (20, 10, 7)):
        (tmp_path / c).mkdir()
        for i in range(n):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / c / f"{c} ({i}).png")
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / c / f"{c} ({i})_mask.png")
    out = busi_datalist(str(tmp_path), str(tmp_path / "dl.json"), seed=0)
    paths = [i["image"] for s in out.values() for i in s]
    assert len(paths) == 37 and not any("_mask" in os.path.basename(p) for p in paths)
    assert {i["label"] for i in out["test"]} == {0, 1, 2}


def test_missing_busi_says_where_to_get_it_and_how_to_run_the_demo(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        busi_datalist(str(tmp_path / "Dataset_BUSI_with_GT"))
    msg = str(e.value)
    assert "Dataset_BUSI_with_GT" in msg and "rd_demo" in msg and "--dataset_dir" in msg
