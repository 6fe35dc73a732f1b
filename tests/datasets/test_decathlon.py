"""The Decathlon splits helper on a tiny task written in the MSD layout (no download)."""

import json
import os
import tarfile

import nibabel as nib
import numpy as np
import pytest

from monai_rd.datasets.decathlon import decathlon_datalist
from monai_rd.errors import OptionError

TASK = "Task09_Spleen"


def write_decathlon_task(root, num_cases=4, num_test=1, shape=(24, 24, 12), spacing=(3.0, 3.0, 4.0), seed=0):
    """A tiny Task09_Spleen in the MSD layout: CT-like volumes in HU (air, a body, a bright ellipsoid "spleen").

    The affine is LPS-like (x and y flipped), so an orientation transform to RAS has work to do.

    Returns:
        The task folder.
    """
    rng = np.random.default_rng(seed)
    task = os.path.join(root, TASK)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(task, sub), exist_ok=True)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij"))
    body = (grid[0] ** 2 + grid[1] ** 2) < 0.8
    training = []
    for i in range(num_cases + num_test):
        centre = rng.uniform(-0.3, 0.3, 3)
        axes = np.array([0.35, 0.25, 0.5])[:, None, None, None]
        spleen = (((grid - centre[:, None, None, None]) / axes) ** 2).sum(0) < 1
        ct = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, shape)
        ct[spleen] = 110.0 + rng.normal(0, 10, int(spleen.sum()))
        name = f"spleen_{i}.nii.gz"
        if i < num_cases:
            nib.save(nib.Nifti1Image(ct.astype(np.int16), affine), os.path.join(task, "imagesTr", name))
            nib.save(nib.Nifti1Image(spleen.astype(np.uint8), affine), os.path.join(task, "labelsTr", name))
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            nib.save(nib.Nifti1Image(ct.astype(np.int16), affine), os.path.join(task, "imagesTs", name))
    meta = {"name": "Spleen", "description": "tiny synthetic stand-in", "reference": "test", "licence": "CC-BY-SA 4.0",
            "tensorImageSize": "3D", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"},
            "numTraining": num_cases, "numTest": num_test, "training": training,
            "test": [f"./imagesTs/spleen_{i}.nii.gz" for i in range(num_cases, num_cases + num_test)]}
    with open(os.path.join(task, "dataset.json"), "w") as f:
        json.dump(meta, f)
    return task


def test_splits_are_disjoint_labelled_and_reproducible(tmp_path):
    """Catches a case in two splits, an empty test split, or a split that changes between runs with one seed."""
    write_decathlon_task(str(tmp_path), num_cases=8)
    splits = decathlon_datalist(str(tmp_path), TASK, val_frac=0.5, seed=0)
    assert [len(splits[k]) for k in ("training", "validation", "test")] == [4, 2, 2]
    images = [it["image"] for items in splits.values() for it in items]
    assert len(set(images)) == 8 and all(os.path.isabs(p) and os.path.isfile(p) for p in images)
    assert all(os.path.isfile(it["label"]) for items in splits.values() for it in items)
    assert decathlon_datalist(str(tmp_path), TASK, val_frac=0.5, seed=0) == splits


def test_missing_task_without_download_names_the_option(tmp_path):
    with pytest.raises(OptionError, match="--download true"):
        decathlon_datalist(str(tmp_path), TASK)
    write_decathlon_task(str(tmp_path), num_cases=2)
    with pytest.raises(OptionError, match="empty"):
        decathlon_datalist(str(tmp_path), TASK, val_frac=0.2)
    with pytest.raises(OptionError, match="val_frac"):
        decathlon_datalist(str(tmp_path), TASK, val_frac=1.0)


def test_download_goes_through_monai_download_and_extract(tmp_path, monkeypatch):
    """Catches the download option not reaching MONAI's DecathlonDataset (its URL, MD5 and extraction)."""
    import monai.apps.datasets as datasets

    src = tmp_path / "src"
    write_decathlon_task(str(src), num_cases=4)
    tar = tmp_path / "mirror.tar"
    with tarfile.open(tar, "w") as t:
        t.add(src / TASK, arcname=TASK)
    calls = []

    def fake_download_and_extract(url, filepath, output_dir, hash_val, hash_type, progress):
        calls.append((url, hash_val))
        with tarfile.open(tar) as t:
            t.extractall(output_dir, filter="data")

    monkeypatch.setattr(datasets, "download_and_extract", fake_download_and_extract)
    root = tmp_path / "root"  # created by the helper
    splits = decathlon_datalist(str(root), TASK, download=True, val_frac=0.5)
    assert len(calls) == 1 and calls[0][0] == datasets.DecathlonDataset.resource[TASK]
    assert calls[0][1] == datasets.DecathlonDataset.md5[TASK]
    assert sum(len(v) for v in splits.values()) == 4
