"""Derive the 3D segmentation demo: slabs of the Colin27 brain MRI (``ch2``) at 2 mm with the AAL atlas grouped
into lobes as labels, written as NIfTI files plus a MONAI (Decathlon-style) ``datalist.json``.

Source: Debian's ``mricron-data`` package (``/usr/share/mricron/templates/ch2.nii.gz``, ``aal.nii.gz`` and
``aal.nii.txt``; MRIcron, Copyright 2006-2010 Chris Rorden, BSD-3-Clause; Colin27 template: Holmes et al. 1998;
AAL atlas: Tzourio-Mazoyer et al. 2002).

Labels: 0 background (outside the brain and the AAL regions outside the five lobes: central, limbic/insula and
subcortical regions), 1 cerebellum, 2 frontal, 3 occipital, 4 parietal, 5 temporal (the AAL region code's first digit,
:data:`~demo_data.brain_lobes.AAL_LOBES`).

Split without spatial leakage: the brain has one subject, so the split is by place. The volume (1 mm, RAS) is
block-averaged to 2 mm; the left hemisphere (x < -1 mm) gives the training slabs and the right hemisphere
(x > +1 mm, mirrored to the left's orientation so both halves show the same anatomy) the validation and test slabs,
with the two voxels around the midline left out. Each hemisphere is cut into ``num_slabs`` axial slabs of ``slab``
slices, one slice apart; right slabs alternate between test (even) and validation (odd). No voxel is in two items,
training never sees the right hemisphere, and validation and test slabs are one slice (2 mm) apart.

2D variant (``--spatial_dims 2``, the data of ``bundles/rd_brain_segment_2d``): the same layout with one-slice
"slabs" (:data:`SLICES_2D`), each saved as a 2D NIfTI image (X, Y) of one axial slice; right slices again alternate
test/validation, one slice (2 mm) apart.

Run ``python -m demo_data.brain_segment --out bundles/rd_brain_segment/data`` (3D) or
``python -m demo_data.brain_segment --out bundles/rd_brain_segment_2d/data --spatial_dims 2`` to regenerate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from demo_data.brain_lobes import LOBE_CLASSES, MRICRON_DIR, load_colin27_aal, mricron_arg_parser

__all__ = [
    "SEGMENT_CLASSES",
    "SLICES_2D",
    "SlabLayout",
    "derive_brain_segment_slabs",
    "downsample2",
    "load_lobe_volume_2mm",
    "lobe_label_volume",
    "window_uint8",
]

SEGMENT_CLASSES = ("background", *LOBE_CLASSES)


@dataclass(frozen=True)
class SlabLayout:
    """Where the hemisphere slabs lie in the 2 mm volume; the split by place of every Colin27 3D demo.

    The left hemisphere is ``x`` in ``[midline - 1 - width, midline - 1)``, the right ``[midline + 1,
    midline + 1 + width)`` (the two voxels around the midline are left out); each is cut into ``num_slabs`` axial
    slabs of ``slab`` slices in ``y_range``, one slice apart from ``z_start`` on. Left slabs are training, right
    slabs alternate between test (even) and validation (odd).

    Attributes:
        midline: first voxel index of the right hemisphere's gap.
        width: hemisphere width in X (voxels).
        y_range: kept anterior-posterior range ``[start, end)``.
        z_start: first slice of the first slab.
        slab: slices per slab.
        num_slabs: slabs per hemisphere.
    """

    midline: int = 45
    width: int = 40
    y_range: tuple[int, int] = (6, 102)
    z_start: int = 4
    slab: int = 16
    num_slabs: int = 5

    def hemispheres(self) -> tuple[tuple[str, tuple[int, int]], ...]:
        """``(("L", (x0, x1)), ("R", (x0, x1)))``: each side's X range ``[x0, x1)`` in the volume."""
        m, w = self.midline, self.width
        return ("L", (m - 1 - w, m - 1)), ("R", (m + 1, m + 1 + w))

    def check(self, image: np.ndarray, labels: np.ndarray) -> None:
        """Refuse volumes the slabs cannot be cut from.

        Args:
            image: (X, Y, Z) volume.
            labels: (X, Y, Z) labels on the same grid.

        Raises:
            ValueError: the shapes differ or the slabs do not fit the volume.
        """
        if image.shape != labels.shape:
            raise ValueError(f"image {image.shape} and labels {labels.shape} must share one grid.")
        (_, left), (_, right) = self.hemispheres()
        y_range, z_start = self.y_range, self.z_start
        z_end = z_start + self.num_slabs * (self.slab + 1) - 1
        if left[0] < 0 or right[1] > image.shape[0] or y_range[1] > image.shape[1] or z_end > image.shape[2]:
            raise ValueError(f"slabs x {left}/{right}, y {y_range}, z [{z_start}, {z_end}) do not fit {image.shape}.")

    def slabs(self) -> Iterator[tuple[str, tuple[int, int], int, str]]:
        """Every slab, left hemisphere first, each side from ``z_start`` up.

        Yields:
            ``(side, (x0, x1), z0, split)``: "L" or "R", the side's X range, the slab's first slice and its split.
        """
        for side, x_range in self.hemispheres():
            for k in range(self.num_slabs):
                split = "training" if side == "L" else ("test" if k % 2 == 0 else "validation")
                yield side, x_range, self.z_start + k * (self.slab + 1), split


# the 2D layout: 35 axial slices per hemisphere, every other slice of the labelled range (z = 8 to 76 at 2 mm)
SLICES_2D = SlabLayout(z_start=8, slab=1, num_slabs=35)


def window_uint8(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rescale to uint8 between the 0.5 and 99.5 percentiles of the labelled voxels (clipped outside).

    Args:
        image: (X, Y, Z) volume.
        labels: (X, Y, Z) labels on the same grid; voxels > 0 set the intensity window.

    Returns:
        (X, Y, Z) uint8 volume.
    """
    lo, hi = np.percentile(image[labels > 0], [0.5, 99.5])
    return (np.clip((image - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)


def lobe_label_volume(atlas: np.ndarray, lobe_of_label: Mapping[int, str]) -> np.ndarray:
    """AAL region values -> lobe labels (0 background, 1.. in the order of :data:`SEGMENT_CLASSES`).

    Args:
        atlas: AAL label volume.
        lobe_of_label: AAL value -> lobe name (:func:`~demo_data.brain_lobes.aal_lobe_map`).

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
    layout: SlabLayout = SlabLayout(),
    spacing: float = 2.0,
    spatial_dims: int = 3,
) -> dict[str, list[dict]]:
    """Cut hemisphere slabs from a 2 mm volume, save them as NIfTI and write ``out_dir/datalist.json``.

    Args:
        image: (X, Y, Z) 2 mm MRI volume, RAS (X grows to the right).
        labels: (X, Y, Z) lobe labels on the same grid.
        out_dir: output folder (``images/`` and ``labels/`` are created in it).
        layout: where the slabs lie and which split each goes to (right slabs are stored mirrored).
        spacing: voxel size in mm, written in the NIfTI headers.
        spatial_dims: 3 saves (X, Y, slab) volumes; 2 saves each one-slice slab as a 2D (X, Y) image (for 2D
            segmentation; ``layout.slab`` must be 1).

    Returns:
        The datalist: ``{"training": [...], "validation": [...], "test": [...]}`` of ``{"image", "label"}`` paths
        relative to ``out_dir``.

    Raises:
        ValueError: the shapes differ, the slabs do not fit the volume, or ``spatial_dims`` is 2 with slabs of more
            than one slice.
    """
    import nibabel as nib

    if spatial_dims not in (2, 3) or (spatial_dims == 2 and layout.slab != 1):
        raise ValueError(
            f"spatial_dims must be 3, or 2 with one-slice slabs; got {spatial_dims} and slab={layout.slab}."
        )
    layout.check(image, labels)
    img8 = window_uint8(image, labels)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "labels"), exist_ok=True)
    datalist: dict[str, list[dict]] = {"training": [], "validation": [], "test": []}
    for side, (x0, x1), z0, split in layout.slabs():
        sl = np.s_[x0:x1, layout.y_range[0] : layout.y_range[1], z0 : z0 + layout.slab]
        vol, lab = img8[sl], labels[sl]
        if side == "R":  # mirrored: medial edge on the same side as the left slabs'
            vol, lab = vol[::-1], lab[::-1]
        if spatial_dims == 2:
            vol, lab = vol[..., 0], lab[..., 0]
        name = f"ch2_{side}_z{z0:03d}.nii.gz"
        for folder, data in (("images", vol), ("labels", lab)):
            nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), os.path.join(out_dir, folder, name))
        datalist[split].append({"image": f"images/{name}", "label": f"labels/{name}"})
    with open(os.path.join(out_dir, "datalist.json"), "w") as f:
        json.dump({"classes": list(SEGMENT_CLASSES), **datalist}, f, indent=2)
    return datalist


def load_lobe_volume_2mm(mricron_dir: str = MRICRON_DIR) -> tuple[np.ndarray, np.ndarray]:
    """The Colin27 MRI and its AAL lobe labels at 2 mm, the volume every Colin27 3D demo is cut from.

    Args:
        mricron_dir: folder with ``ch2.nii.gz``, ``aal.nii.gz`` and ``aal.nii.txt``.

    Returns:
        ``(image, labels)``: (X, Y, Z) float32 block-mean MRI and uint8 lobe labels (:data:`SEGMENT_CLASSES`).

    Raises:
        FileNotFoundError: a file is missing (see :func:`~demo_data.brain_lobes.load_colin27_aal`).
    """
    image, atlas, lobe_of_label = load_colin27_aal(mricron_dir)
    return downsample2(image, lobe_label_volume(atlas, lobe_of_label))


def main(argv: Sequence[str] | None = None) -> None:
    p = mricron_arg_parser(__doc__, "output folder (images/, labels/ and datalist.json are written)")
    p.add_argument("--spatial_dims", type=int, choices=(2, 3), default=3,
                   help="3: 40x96x16 slabs (rd_brain_segment); 2: 40x96 axial slices (rd_brain_segment_2d)")
    a = p.parse_args(argv)
    layout = SLICES_2D if a.spatial_dims == 2 else SlabLayout()
    datalist = derive_brain_segment_slabs(
        *load_lobe_volume_2mm(a.mricron_dir), a.out, layout, spatial_dims=a.spatial_dims
    )
    print({k: len(v) for k, v in datalist.items()})


if __name__ == "__main__":
    main()
