"""Derive the 3D segmentation demo: slabs of the Colin27 brain MRI (``ch2``) at 2 mm with the AAL atlas grouped
into lobes as labels, written as NIfTI files plus a MONAI (Decathlon-style) ``datalist.json``.

Source: Debian's ``mricron-data`` package (``/usr/share/mricron/templates/ch2.nii.gz``, ``aal.nii.gz`` and
``aal.nii.txt``; MRIcron, Copyright 2006-2010 Chris Rorden, BSD-3-Clause; Colin27 template: Holmes et al. 1998;
AAL atlas: Tzourio-Mazoyer et al. 2002).

Labels: 0 background (outside the brain and the AAL regions outside the five lobes: central, limbic/insula and
subcortical regions), 1 cerebellum, 2 frontal, 3 occipital, 4 parietal, 5 temporal (the AAL region code's first digit,
:data:`~monai_rd.data.brain_lobes.AAL_LOBES`).

Split without spatial leakage: the brain has one subject, so the split is by place. The volume (1 mm, RAS) is
block-averaged to 2 mm; the left hemisphere (x < -1 mm) gives the training slabs and the right hemisphere
(x > +1 mm, mirrored to the left's orientation so both halves show the same anatomy) the validation and test slabs,
with the two voxels around the midline left out. Each hemisphere is cut into ``num_slabs`` axial slabs of ``slab``
slices, one slice apart; right slabs alternate between test (even) and validation (odd). No voxel is in two items,
training never sees the right hemisphere, and validation and test slabs are one slice (2 mm) apart.

Run ``python -m monai_rd.data.brain_segment --out bundles/rd_brain_segment/data`` to regenerate.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from monai_rd.data.brain_lobes import LOBE_CLASSES, MRICRON_DIR, aal_lobe_map

__all__ = ["SEGMENT_CLASSES", "derive_brain_segment_slabs", "downsample2", "lobe_label_volume"]

SEGMENT_CLASSES = ("background", *LOBE_CLASSES)


def lobe_label_volume(atlas: np.ndarray, lobe_of_label: Mapping[int, str]) -> np.ndarray:
    """AAL region values -> lobe labels (0 background, 1.. in the order of :data:`SEGMENT_CLASSES`).

    Args:
        atlas: AAL label volume.
        lobe_of_label: AAL value -> lobe name (:func:`~monai_rd.data.brain_lobes.aal_lobe_map`).

    Returns:
        uint8 volume of the atlas' shape.
    """
    lut = np.zeros(int(atlas.max()) + 1, dtype=np.uint8)
    for value, lobe in lobe_of_label.items():
        if value < lut.size:
            lut[value] = SEGMENT_CLASSES.index(lobe)
    return lut[atlas]


def downsample2(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Halve the resolution: 2 x 2 x 2 block mean of the image, block majority of the labels.

    Args:
        image: (X, Y, Z) volume.
        labels: (X, Y, Z) integer labels on the same grid.

    Returns:
        ``(image, labels)`` of shape (X // 2, Y // 2, Z // 2), float32 and uint8.

    Raises:
        ValueError: the shapes differ.
    """
    if image.shape != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must share one grid.")
    sx, sy, sz = (s // 2 * 2 for s in image.shape)
    blocks = (sx // 2, 2, sy // 2, 2, sz // 2, 2)
    img = image[:sx, :sy, :sz].astype(np.float32).reshape(blocks).mean((1, 3, 5))
    lab = labels[:sx, :sy, :sz].reshape(blocks).transpose(0, 2, 4, 1, 3, 5).reshape(*img.shape, 8)
    counts = np.stack([(lab == c).sum(-1) for c in range(len(SEGMENT_CLASSES))], -1)
    return img, counts.argmax(-1).astype(np.uint8)


def derive_brain_segment_slabs(
    image: np.ndarray,
    labels: np.ndarray,
    out_dir: str,
    midline: int = 45,
    width: int = 40,
    y_range: tuple[int, int] = (6, 102),
    z_start: int = 4,
    slab: int = 16,
    num_slabs: int = 5,
    spacing: float = 2.0,
) -> dict[str, list[dict]]:
    """Cut hemisphere slabs from a 2 mm volume, save them as NIfTI and write ``out_dir/datalist.json``.

    Args:
        image: (X, Y, Z) 2 mm MRI volume, RAS (X grows to the right).
        labels: (X, Y, Z) lobe labels on the same grid.
        out_dir: output folder (``images/`` and ``labels/`` are created in it).
        midline: first voxel index of the right hemisphere's gap: left is ``[midline - 1 - width, midline - 1)``,
            right ``[midline + 1, midline + 1 + width)`` (mirrored).
        width: slab width in X (voxels).
        y_range: kept anterior-posterior range.
        z_start: first slice of the first slab.
        slab: slices per slab.
        num_slabs: slabs per hemisphere (one slice apart).
        spacing: voxel size in mm, written in the NIfTI headers.

    Returns:
        The datalist: ``{"training": [...], "validation": [...], "test": [...]}`` of ``{"image", "label"}`` paths
        relative to ``out_dir``.

    Raises:
        ValueError: the shapes differ or the slabs do not fit the volume.
    """
    import nibabel as nib

    if image.shape != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must share one grid.")
    left = (midline - 1 - width, midline - 1)
    right = (midline + 1, midline + 1 + width)
    z_end = z_start + num_slabs * (slab + 1) - 1
    if left[0] < 0 or right[1] > image.shape[0] or y_range[1] > image.shape[1] or z_end > image.shape[2]:
        raise ValueError(f"slabs x {left}/{right}, y {y_range}, z [{z_start}, {z_end}) do not fit {image.shape}.")
    lo, hi = np.percentile(image[labels > 0], [0.5, 99.5])
    img8 = (np.clip((image - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "labels"), exist_ok=True)
    datalist: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    for side, (x0, x1) in (("L", left), ("R", right)):
        for k in range(num_slabs):
            z0 = z_start + k * (slab + 1)
            sl = np.s_[x0:x1, y_range[0] : y_range[1], z0 : z0 + slab]
            vol, lab = img8[sl], labels[sl]
            if side == "R":  # mirrored: medial edge on the same side as the left slabs'
                vol, lab = vol[::-1], lab[::-1]
            name = f"ch2_{side}_z{z0:03d}.nii.gz"
            for folder, data in (("images", vol), ("labels", lab)):
                nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), os.path.join(out_dir, folder, name))
            split = "training" if side == "L" else ("test" if k % 2 == 0 else "validation")
            datalist[split].append({"image": f"images/{name}", "label": f"labels/{name}"})
    with open(os.path.join(out_dir, "datalist.json"), "w") as f:
        json.dump({"classes": list(SEGMENT_CLASSES), **datalist}, f, indent=2)
    return datalist


def main(argv: Sequence[str] | None = None) -> None:
    import nibabel as nib

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (images/, labels/ and datalist.json are written)")
    p.add_argument("--mricron-dir", default=MRICRON_DIR, help="folder with ch2.nii.gz, aal.nii.gz, aal.nii.txt")
    a = p.parse_args(argv)
    paths = [os.path.join(a.mricron_dir, f) for f in ("ch2.nii.gz", "aal.nii.gz", "aal.nii.txt")]
    for f in paths:
        if not os.path.isfile(f):
            raise SystemExit(f"{f} not found: install Debian's mricron-data (apt-get install mricron-data).")
    image = np.asarray(nib.load(paths[0]).dataobj, dtype=np.float32)
    labels = lobe_label_volume(np.asarray(nib.load(paths[1]).dataobj, dtype=np.int32), aal_lobe_map(paths[2]))
    datalist = derive_brain_segment_slabs(*downsample2(image, labels), a.out)
    print({k: len(v) for k, v in datalist.items()})


if __name__ == "__main__":
    main()
