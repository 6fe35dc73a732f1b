"""Training, validation and test splits of a Medical Segmentation Decathlon task through MONAI's ``DecathlonDataset``.

MONAI's :class:`monai.apps.DecathlonDataset` downloads and extracts a task (``download=True``: the tar file from the
MSD mirror, MD5-checked, into ``root_dir/<task>``) and splits the labelled cases into its ``training`` and
``validation`` sections (``val_frac``, seeded). The MSD test cases (``imagesTs``) have no labels, so the labelled
held-out cases are halved here: the first half is the validation split (checkpoint selection), the rest the test
split (reported once). Items are ``{"image": path, "label": path}`` with absolute paths, the form the segmentation
recipe's ``datalist`` takes.
"""

from __future__ import annotations

import os

from monai_rd.errors import OptionError

__all__ = ["decathlon_datalist"]


def decathlon_datalist(
    root_dir: str, task: str, download: bool = False, val_frac: float = 0.2, seed: int = 0
) -> dict[str, list[dict]]:
    """Split a Decathlon task's labelled cases into training, validation and test, downloading it first if asked.

    Args:
        root_dir: the folder holding (or to receive) ``<task>/dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesTs``.
        task: the MSD task, e.g. ``"Task09_Spleen"``.
        download: download and extract the task's tar file into ``root_dir`` first (MONAI skips a tar file that is
            already there with the right MD5).
        val_frac: fraction of the labelled cases held out; half of them (rounded up) validate, the rest test.
        seed: seed of MONAI's split.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``.

    Raises:
        OptionError: ``val_frac`` outside (0, 1), the task folder is missing and ``download`` is false, or a split
            comes out empty (too few cases for ``val_frac``).
    """
    from monai.apps import DecathlonDataset

    if not 0.0 < val_frac < 1.0:
        raise OptionError(f"val_frac={val_frac} must be in (0, 1): the fraction of labelled cases held out.")
    if download:
        os.makedirs(root_dir, exist_ok=True)
    elif not os.path.isfile(os.path.join(root_dir, task, "dataset.json")):
        raise OptionError(
            f"{os.path.join(root_dir, task, 'dataset.json')} does not exist: run once with `--download true` (MONAI "
            f"downloads and extracts {task} into {root_dir}), or point `dataset_dir` at the folder holding {task}/."
        )

    def section(name: str, get: bool) -> list[dict]:
        ds = DecathlonDataset(root_dir, task, name, transform=lambda x: x, download=get, seed=seed,
                              val_frac=val_frac, cache_rate=0.0, progress=False)
        return list(ds.data)

    training = section("training", download)
    held = section("validation", False)
    n_val = (len(held) + 1) // 2
    splits = {"training": training, "validation": held[:n_val], "test": held[n_val:]}
    empty = [k for k, v in splits.items() if not v]
    if empty:
        raise OptionError(
            f"{task} in {root_dir}: split(s) {empty} are empty ({len(training) + len(held)} labelled cases, "
            f"val_frac={val_frac}); raise val_frac or add cases."
        )
    return splits
