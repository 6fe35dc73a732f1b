"""Derive the demo dataset: 2D patches of the Colin27 brain MRI (``ch2``) labelled by the brain lobe of the
AAL atlas at the patch centre, written as class folders of PNG files (the layout BUSI uses).

Source: Debian's ``mricron-data`` package (``/usr/share/mricron/templates/ch2.nii.gz`` and ``aal.nii.gz``,
MRIcron, Copyright 2006-2010 Chris Rorden, BSD-3-Clause; Colin27 template: Holmes et al. 1998; AAL atlas:
Tzourio-Mazoyer et al. 2002).

Run ``python -m demo_data.brain_lobes --out bundles/rd_demo/data`` to regenerate.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np

__all__ = [
    "AAL_LOBES",
    "LOBE_CLASSES",
    "MRICRON_FILES",
    "aal_lobe_map",
    "derive_brain_lobe_patches",
    "load_colin27_aal",
    "mricron_arg_parser",
]

MRICRON_DIR = "/usr/share/mricron/templates"
# the Colin27 MRI, the AAL atlas on its grid and the atlas' label table
MRICRON_FILES = ("ch2.nii.gz", "aal.nii.gz", "aal.nii.txt")
# first digit of the AAL region code (aal.nii.txt, third column) -> lobe
AAL_LOBES = {2: "frontal", 5: "occipital", 6: "parietal", 8: "temporal", 9: "cerebellum"}
LOBE_CLASSES = ("cerebellum", "frontal", "occipital", "parietal", "temporal")


def aal_lobe_map(label_txt: str) -> dict[int, str]:
    """Map AAL label values to lobe names from the atlas' ``aal.nii.txt`` (index, name, code per line).

    Args:
        label_txt: path of the label table.

    Returns:
        ``{label value: lobe}`` for the regions in :data:`AAL_LOBES`.

    Raises:
        ValueError: a line of the table is not ``index name code``.
    """
    out: dict[int, str] = {}
    with open(label_txt) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
                raise ValueError(f"{label_txt}:{n}: expected 'index name code', got {line.strip()!r}.")
            lobe = AAL_LOBES.get(int(parts[2]) // 1000)
            if lobe is not None:
                out[int(parts[0])] = lobe
    return out


def derive_brain_lobe_patches(
    image: np.ndarray,
    atlas: np.ndarray,
    lobe_of_label: dict[int, str],
    out_dir: str,
    patch: int = 64,
    slice_step: int = 2,
    block: int = 10,
    grid_step: int = 9,
    max_per_class_block: int = 20,
    seed: int = 0,
) -> dict[str, int]:
    """Cut axial patches centred on atlas voxels and save them as ``out_dir/<lobe>/ch2_z###_y###_x###.png``.

    Slices are sampled every ``slice_step`` in blocks of ``block`` slices; the first and last slice of each
    block are never sampled, so patches of neighbouring blocks (which a grouped split may put in different
    splits) never come from adjacent slices.

    Args:
        image: (X, Y, Z) MRI volume, any intensity range.
        atlas: (X, Y, Z) label volume on the same grid.
        lobe_of_label: label value -> lobe name.
        out_dir: output folder.
        patch: patch side in voxels.
        slice_step: sample every this many slices.
        block: slices per block (the split unit).
        grid_step: in-plane stride of candidate centres.
        max_per_class_block: at most this many patches per lobe and block (balances classes).
        seed: RNG seed for choosing among candidates.

    Returns:
        Patches written per lobe.

    Raises:
        ValueError: image and atlas shapes differ.
    """
    from PIL import Image

    if image.shape != atlas.shape:
        raise ValueError(f"image {image.shape} and atlas {atlas.shape} must share one grid.")
    rng = np.random.default_rng(seed)
    lo, hi = np.percentile(image[image > 0], [0.5, 99.5])
    img8 = (np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    half = patch // 2
    counts: dict[str, int] = {}
    for z in range(image.shape[2]):
        if z % block in (0, block - 1) or z % slice_step:
            continue
        lab = atlas[:, :, z]
        by_lobe: dict[str, list[tuple[int, int]]] = {}
        for x in range(half, image.shape[0] - half, grid_step):
            for y in range(half, image.shape[1] - half, grid_step):
                lobe = lobe_of_label.get(int(lab[x, y]))
                if lobe is not None:
                    by_lobe.setdefault(lobe, []).append((x, y))
        per_slice = max(1, max_per_class_block // max(1, (block - 2) // slice_step))
        for lobe, cands in by_lobe.items():
            pick = rng.permutation(len(cands))[:per_slice]
            os.makedirs(os.path.join(out_dir, lobe), exist_ok=True)
            for i in pick:
                x, y = cands[i]
                tile = img8[x - half : x + half, y - half : y + half, z]
                # radiological display: rows = anterior-posterior flipped
                Image.fromarray(np.ascontiguousarray(np.rot90(tile))).save(
                    os.path.join(out_dir, lobe, f"ch2_z{z:03d}_y{y:03d}_x{x:03d}.png"), optimize=True
                )
                counts[lobe] = counts.get(lobe, 0) + 1
    return counts


def _mricron_paths(mricron_dir: str) -> list[str]:
    """The paths of :data:`MRICRON_FILES` in ``mricron_dir``; raises FileNotFoundError naming a missing one."""
    paths = [os.path.join(mricron_dir, f) for f in MRICRON_FILES]
    for f in paths:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"{f} not found: install Debian's mricron-data (apt-get install mricron-data).")
    return paths


def load_colin27_aal(mricron_dir: str = MRICRON_DIR) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Read the Colin27 MRI, the AAL atlas and the atlas' lobe map from Debian's ``mricron-data`` folder.

    Args:
        mricron_dir: folder with :data:`MRICRON_FILES`.

    Returns:
        ``(image, atlas, lobe_of_label)``: (X, Y, Z) float32 1 mm MRI, (X, Y, Z) int32 AAL labels on its grid, and
        :func:`aal_lobe_map` of the label table.

    Raises:
        FileNotFoundError: a file of :data:`MRICRON_FILES` is missing.
    """
    import nibabel as nib

    ch2, aal, aal_txt = _mricron_paths(mricron_dir)
    image = np.asarray(nib.load(ch2).dataobj, dtype=np.float32)
    atlas = np.asarray(nib.load(aal).dataobj, dtype=np.int32)
    return image, atlas, aal_lobe_map(aal_txt)


def _mricron_dir_arg(value: str) -> str:
    # argparse turns the error into a usage message, so a missing package is reported before any work
    try:
        _mricron_paths(value)
    except FileNotFoundError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return value


def mricron_arg_parser(description: str, out_help: str) -> argparse.ArgumentParser:
    """The command line shared by the Colin27 derivations: ``--out`` and ``--mricron-dir`` (checked when parsed).

    Args:
        description: the command's help text (its module docstring).
        out_help: what ``--out`` receives.

    Returns:
        A parser to add the derivation's own options to.
    """
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument(
        "--mricron-dir", default=MRICRON_DIR, type=_mricron_dir_arg, help="folder with " + ", ".join(MRICRON_FILES)
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = mricron_arg_parser(__doc__, "output folder (class folders of PNG are created in it)")
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--block", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    image, atlas, lobe_of_label = load_colin27_aal(a.mricron_dir)
    counts = derive_brain_lobe_patches(image, atlas, lobe_of_label, a.out, a.patch, block=a.block, seed=a.seed)
    print({k: counts[k] for k in sorted(counts)})


if __name__ == "__main__":
    main()
