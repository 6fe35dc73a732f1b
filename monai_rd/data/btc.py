"""Brain tumour MRI classification (BTC): the Kaggle "Brain Tumor MRI Dataset" (M. Nickparvar, 2021), 4 classes in
``Training/`` and ``Testing/`` class folders."""

from __future__ import annotations

import os

from monai_rd.data.datalist import list_class_folder, load_saved_datalist, save_datalist, split_datalist

__all__ = ["BTC_CLASSES", "btc_datalist", "load_saved_datalist", "save_datalist"]

BTC_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")

BTC_LAYOUT = """expected layout (the Kaggle 'Brain Tumor MRI Dataset' by Masoud Nickparvar, unzipped):
  {root}/Training/glioma/Tr-gl_0010.jpg ...   and Training/meningioma, Training/notumor, Training/pituitary
  {root}/Testing/glioma/Te-gl_0010.jpg ...    and Testing/meningioma, Testing/notumor, Testing/pituitary
Download it from https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset
(kaggle datasets download -d masoudnickparvar/brain-tumor-mri-dataset && unzip brain-tumor-mri-dataset.zip)
and pass --dataset_dir <the folder holding Training/ and Testing/>."""


def _layout(root: str) -> str:
    return BTC_LAYOUT.format(root=root)


def btc_datalist(
    dataset_dir: str, datalist_json: str | None = None, seed: int = 0, val_fraction: float = 0.15
) -> dict[str, list[dict]]:
    """BTC with the dataset's own test set and a stratified, seeded validation split of ``Training/``.

    ``Testing/`` is the test split. ``Training/`` is split per class into training and validation
    (``val_fraction``, seeded). When ``datalist_json`` exists it is read instead (so the validation split is fixed
    once written) after checking its classes, seed and fraction and that every listed image exists; otherwise the
    split is written there.

    Args:
        dataset_dir: folder holding ``Training/`` and ``Testing/``.
        datalist_json: where the split is written and later re-read; None keeps it in memory.
        seed: validation-split seed.
        val_fraction: fraction of each ``Training/`` class used for validation.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image": absolute path, "label": class index}`` with
        classes ``glioma, meningioma, notumor, pituitary``.

    Raises:
        FileNotFoundError: ``dataset_dir``, ``Training``/``Testing``, a class folder or a listed image is missing
            (the message gives the expected layout and where to download).
        ValueError: a class folder holds no image, or the saved datalist was written for other settings.
    """
    root = os.path.abspath(dataset_dir)
    meta = {"classes": list(BTC_CLASSES), "seed": seed, "val_fraction": val_fraction}
    if not os.path.isdir(root):
        raise FileNotFoundError(f"BTC not found: {dataset_dir!r} does not exist.\n{_layout(dataset_dir)}")
    if datalist_json and os.path.isfile(datalist_json):
        return load_saved_datalist(datalist_json, root, **meta)
    found = sorted(os.listdir(root))
    parts = {}
    for part in ("Training", "Testing"):
        folder = os.path.join(root, part)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"BTC folder {folder!r} is missing (found in {root}: {found[:20]}).\n{_layout(dataset_dir)}")
        try:
            parts[part] = list_class_folder(folder, BTC_CLASSES)
        except (FileNotFoundError, ValueError) as e:
            raise type(e)(f"{e}\n{_layout(dataset_dir)}") from e
    out = split_datalist(parts["Training"], val_fraction=val_fraction, test_fraction=0.0, seed=seed)
    out["test"] = sorted(parts["Testing"], key=lambda it: it["image"])
    if datalist_json:
        save_datalist(out, datalist_json, root, **meta)
    return out
