"""Derive the 3D classification demo: cubic patches of the Colin27 brain MRI (``ch2``) at 2 mm, each labelled by
the brain lobe (AAL atlas) at its centre voxel, written as NIfTI files plus a saved datalist (``datalist.json``).

Source: Debian's ``mricron-data`` package (``/usr/share/mricron/templates/ch2.nii.gz``, ``aal.nii.gz`` and
``aal.nii.txt``; MRIcron, Copyright 2006-2010 Chris Rorden, BSD-3-Clause; Colin27 template: Holmes et al. 1998;
AAL atlas: Tzourio-Mazoyer et al. 2002). The volume is reduced to 2 mm lobe labels exactly as for the segmentation
demo (:func:`~demo_data.brain_segment.load_lobe_volume_2mm`).

Classes: :data:`~demo_data.brain_lobes.LOBE_CLASSES` (cerebellum, frontal, occipital, parietal, temporal), the
lobe of the voxel that sits at index ``patch // 2`` on every axis of the stored patch.

Split without spatial leakage (one subject, so the split is by place, with the segmentation demo's
:class:`~demo_data.brain_segment.SlabLayout`): the
left hemisphere (x < -1 mm) gives the training patches and the right hemisphere (x > +1 mm, mirrored to the left's
orientation) the validation and test patches; each hemisphere is cut into ``num_slabs`` axial slabs of ``slab``
slices, one slice apart, and every patch lies wholly inside one slab of one hemisphere. Right slabs alternate
between test (even) and validation (odd). Patches of one slab overlap each other, but no voxel is in two splits.

Run ``python -m demo_data.brain3d_classify --out bundles/rd_brain3d_classify/data`` to regenerate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np

from demo_data.brain_lobes import LOBE_CLASSES, mricron_arg_parser
from demo_data.brain_segment import SEGMENT_CLASSES, SlabLayout, load_lobe_volume_2mm, window_uint8

__all__ = ["derive_brain3d_patches", "patch_centre"]

_DEFAULT_LAYOUT = SlabLayout()


def patch_centre(name: str) -> tuple[int, int, int]:
    """The (x, y, z) voxel of the 2 mm volume at a patch's centre, read from its file name (``..._x012_y034_z056``).

    Args:
        name: a file name written by :func:`derive_brain3d_patches`.

    Returns:
        The centre voxel's indices in the un-mirrored 2 mm volume.

    Raises:
        ValueError: the name holds no ``_x###_y###_z###`` part.
    """
    import re

    m = re.search(r"_x(\d+)_y(\d+)_z(\d+)", os.path.basename(name))
    if m is None:
        raise ValueError(f"{name!r} is not a patch name of the form ch2_<side>_x###_y###_z###.nii.gz.")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def derive_brain3d_patches(
    image: np.ndarray,
    labels: np.ndarray,
    out_dir: str,
    patch: int = 16,
    stride: int = 2,
    max_per_class_slab: int = 24,
    layout: SlabLayout = _DEFAULT_LAYOUT,
    spacing: float = 2.0,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Cut lobe-labelled cubic patches from hemisphere slabs, save them as NIfTI and write ``out_dir/datalist.json``.

    Args:
        image: (X, Y, Z) 2 mm MRI volume, RAS (X grows to the right).
        labels: (X, Y, Z) lobe labels on the same grid (0 background, ``i + 1`` for ``LOBE_CLASSES[i]``).
        out_dir: output folder (``images/`` is created in it).
        patch: patch side in voxels (even).
        stride: spacing of candidate centres on each axis.
        max_per_class_slab: at most this many patches per lobe and slab, chosen at random (balances classes).
        layout: the slabs of :func:`~demo_data.brain_segment.derive_brain_segment_slabs` (``slab`` and ``width``
            at least ``patch``); right patches are stored mirrored.
        spacing: voxel size in mm, written in the NIfTI headers.
        seed: RNG seed for choosing among candidates.

    Returns:
        The datalist: ``{"training": [...], "validation": [...], "test": [...]}`` of ``{"image", "label"}`` (image
        paths relative to ``out_dir``, label the index in ``LOBE_CLASSES``); ``datalist.json`` also records
        ``classes`` (the format :func:`monai_rd.data.datalist.load_saved_datalist` reads).

    Raises:
        ValueError: the shapes differ, ``patch`` is odd or larger than ``slab``, or the slabs do not fit the volume.
    """
    import nibabel as nib

    if patch % 2 or patch > min(layout.slab, layout.width) or patch < 2:
        raise ValueError(f"patch={patch} must be even and at most slab={layout.slab} and width={layout.width}.")
    layout.check(image, labels)
    rng = np.random.default_rng(seed)
    img8 = window_uint8(image, labels)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    h = patch // 2
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    datalist: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    ys = range(layout.y_range[0] + h, layout.y_range[1] - h + 1, stride)
    for side, (x0, x1), z0, split in layout.slabs():
        # the first voxel of a patch centred on c: c - h, or c - h + 1 on the mirrored side so that c still lands
        # at index h after the flip
        shift = -h if side == "L" else -h + 1
        xs = range(x0 - shift, x1 - patch - shift + 1, stride)
        zs = range(z0 + h, z0 + layout.slab - h + 1, stride)
        by_class: dict[int, list[tuple[int, int, int]]] = {}
        for cx in xs:
            for cy in ys:
                for cz in zs:
                    if labels[cx, cy, cz]:
                        by_class.setdefault(int(labels[cx, cy, cz]), []).append((cx, cy, cz))
        for value in sorted(by_class):
            cands = by_class[value]
            for i in sorted(rng.permutation(len(cands))[:max_per_class_slab]):
                cx, cy, cz = cands[i]
                sl = np.s_[cx + shift : cx + shift + patch, cy - h : cy + h, cz - h : cz + h]
                vol = img8[sl] if side == "L" else img8[sl][::-1]
                name = f"ch2_{side}_x{cx:03d}_y{cy:03d}_z{cz:03d}.nii.gz"
                nib.save(nib.Nifti1Image(np.ascontiguousarray(vol), affine), os.path.join(out_dir, "images", name))
                lobe = SEGMENT_CLASSES[value]
                datalist[split].append({"image": f"images/{name}", "label": LOBE_CLASSES.index(lobe)})
    with open(os.path.join(out_dir, "datalist.json"), "w") as f:
        json.dump({"classes": list(LOBE_CLASSES), **datalist}, f, indent=2)
    return datalist


def main(argv: Sequence[str] | None = None) -> None:
    p = mricron_arg_parser(__doc__, "output folder (images/ and datalist.json are written)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    datalist = derive_brain3d_patches(*load_lobe_volume_2mm(a.mricron_dir), a.out, seed=a.seed)
    print({k: len(v) for k, v in datalist.items()})
    for k, items in datalist.items():
        print(k, {c: sum(it["label"] == i for it in items) for i, c in enumerate(LOBE_CLASSES)})


if __name__ == "__main__":
    main()
