"""The Breast Ultrasound Images dataset (BUSI; Al-Dhabyani et al., Data in Brief 2020)."""

from __future__ import annotations

from monai_rd.data.datalist import make_class_folder_datalist
from monai_rd.datasets.spec import DatasetSpec

__all__ = ["BUSI_CLASSES", "BUSI_SPEC", "busi_datalist"]

BUSI_CLASSES = ("benign", "malignant", "normal")
BUSI_LAYOUT = """expected layout ('Dataset_BUSI_with_GT', Al-Dhabyani et al. 2020, unpacked):
  {root}/benign/*.png, {root}/malignant/*.png, {root}/normal/*.png   (the *_mask* files are left out)
Download it from https://scholar.cu.edu.eg/?q=afahmy/pages/dataset and pass --dataset_dir <that folder>.
To try RD without downloading anything, run the offline demo:
  python -m monai.bundle run --config_file bundles/rd_demo/configs/train.json"""
BUSI_SPEC = DatasetSpec("BUSI", BUSI_CLASSES, BUSI_LAYOUT)


def busi_datalist(
    dataset_dir: str,
    datalist_json: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> dict[str, list[dict]]:
    """Stratified, seeded split of ``Dataset_BUSI_with_GT/{benign,malignant,normal}/*.png``, masks excluded.

    Args:
        dataset_dir: the ``Dataset_BUSI_with_GT`` folder.
        datalist_json: where the split is written and later re-read.
        seed: split seed.
        val_fraction: validation fraction.
        test_fraction: test fraction.

    Returns:
        ``{"training", "validation", "test"}`` item lists.

    Raises:
        FileNotFoundError: the folder is missing, with where to get BUSI and how to run the demo instead.
    """
    return make_class_folder_datalist(
        dataset_dir,
        BUSI_CLASSES,
        datalist_json,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        exclude=("*_mask*",),
        missing_message=str(BUSI_SPEC.not_found(dataset_dir)),
    )
