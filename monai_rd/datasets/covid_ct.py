"""COVID-CT (UCSD-AI4H; Zhao et al., arXiv:2003.13865): CT slices, ``CT_COVID`` vs ``CT_NonCOVID``, with the
official train/val/test split files."""

from __future__ import annotations

import os

from monai_rd.data.datalist import read_split_file, save_datalist
from monai_rd.datasets.spec import DatasetSpec
from monai_rd.utils.constants import SPLITS

__all__ = ["COVID_CT_SPEC", "COVID_CT_CLASSES", "covid_ct_datalist", "read_split_file"]

# label order of the official data loader (CovidCTDataset: classes = ['CT_COVID', 'CT_NonCOVID'])
COVID_CT_CLASSES = ("CT_COVID", "CT_NonCOVID")
# split-file folder and suffix for each class
_SPLIT_DIRS = {"CT_COVID": ("COVID", "CT_COVID"), "CT_NonCOVID": ("NonCOVID", "CT_NonCOVID")}
_SPLIT_PREFIX = {"training": "train", "validation": "val", "test": "test"}

COVID_CT_LAYOUT = """expected layout (a clone of https://github.com/UCSD-AI4H/COVID-CT with the image zips \
unpacked in place):
  {root}/Images-processed/CT_COVID/*.png|*.jpg        (from Images-processed/CT_COVID.zip)
  {root}/Images-processed/CT_NonCOVID/*.png|*.jpg     (from Images-processed/CT_NonCOVID.zip)
  {root}/Data-split/COVID/trainCT_COVID.txt, valCT_COVID.txt, testCT_COVID.txt
  {root}/Data-split/NonCOVID/trainCT_NonCOVID.txt, valCT_NonCOVID.txt, testCT_NonCOVID.txt
Each split file lists one image file name per line. Get it with
  git clone https://github.com/UCSD-AI4H/COVID-CT && cd COVID-CT/Images-processed && unzip CT_COVID.zip \
&& unzip CT_NonCOVID.zip
and pass --dataset_dir <the COVID-CT folder>."""
COVID_CT_SPEC = DatasetSpec("COVID-CT", COVID_CT_CLASSES, COVID_CT_LAYOUT)



def covid_ct_datalist(dataset_dir: str, datalist_json: str | None = None, seed: int = 0) -> dict[str, list[dict]]:
    """The official COVID-CT train/val/test split (``Data-split/*/{train,val,test}CT_*.txt``).

    The split files are the source of truth on every call (``seed`` is unused and recorded); ``datalist_json``,
    when given, is (re)written as a record of what was used, with paths relative to ``dataset_dir``.

    Args:
        dataset_dir: the COVID-CT repository folder (holding ``Images-processed`` and ``Data-split``).
        datalist_json: where to write the resulting datalist; None writes nothing.
        seed: unused (official split); written to the JSON.

    Returns:
        ``{"training", "validation", "test"}`` lists of ``{"image": absolute path, "label": 0 CT_COVID,
        1 CT_NonCOVID}``.

    Raises:
        FileNotFoundError: a folder, a split file or a listed image is missing (the message gives the expected
            layout, the download command, and the missing image's path).
        ValueError: a split file is empty, repeats a name, or one image is listed in two splits.
    """
    root = os.path.abspath(dataset_dir)
    if not os.path.isdir(root):
        raise COVID_CT_SPEC.not_found(dataset_dir)
    images_dir = os.path.join(root, "Images-processed")
    for cls in COVID_CT_CLASSES:
        folder = os.path.join(images_dir, cls)
        if not os.path.isdir(folder):
            hint = (
                f" {folder}.zip is there: unzip it in {images_dir}."
                if os.path.isfile(folder + ".zip")
                else ""
            )
            raise COVID_CT_SPEC.missing(f"COVID-CT image folder {folder!r} is missing.{hint}", dataset_dir)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    seen: dict[str, str] = {}
    for label, cls in enumerate(COVID_CT_CLASSES):
        sub, suffix = _SPLIT_DIRS[cls]
        for split in SPLITS:
            txt = os.path.join(root, "Data-split", sub, f"{_SPLIT_PREFIX[split]}{suffix}.txt")
            if not os.path.isfile(txt):
                raise COVID_CT_SPEC.missing(f"COVID-CT split file {txt!r} is missing.", dataset_dir)
            for name in read_split_file(txt):
                path = os.path.join(images_dir, cls, name)
                if path in seen:
                    raise ValueError(f"{path} is listed in both the {seen[path]} and the {split} split ({txt}).")
                seen[path] = split
                out[split].append({"image": path, "label": label})
    missing = [it["image"] for s in SPLITS for it in out[s] if not os.path.isfile(it["image"])]
    if missing:
        raise COVID_CT_SPEC.missing(
            f"{len(missing)} images listed in the COVID-CT split files are missing, first: {missing[0]}.", dataset_dir
        )
    for s in SPLITS:
        out[s].sort(key=lambda it: it["image"])
    if datalist_json:
        save_datalist(out, datalist_json, root, classes=list(COVID_CT_CLASSES), seed=seed, split="official")
    return out
