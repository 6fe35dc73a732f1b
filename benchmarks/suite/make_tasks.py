"""Build the offline task suite: small, low-data 2D classification tasks cut from one brain MRI and its atlases.

The demo (``bundles/rd_demo``) is one task: AAL brain lobes on axial 64 px patches of the Colin27 T1 MRI. Tuning
RD's defaults on it alone would fit them to it, so this script derives more tasks of other kinds from the same
offline sources (Debian's ``mricron-data``: the Colin27 T1 ``ch2.nii.gz`` and the AAL, Brodmann, Harvard-Oxford
cortical and JHU white-matter atlases, all in MNI space), each with its own atlas, slicing plane, patch size,
number of classes and rendering:

=======================  ==========================  ========  =====  =======  ===========================
task                     labels (atlas)              plane     patch  classes  image
=======================  ==========================  ========  =====  =======  ===========================
``ho_cortex_coronal``    Harvard-Oxford cortical     coronal   48     6        gray
``jhu_tracts_sagittal``  JHU white-matter tracts     sagittal  32     6        gray
``brodmann_axial32``     Brodmann areas              axial     32     8        gray
``aal_regions_axial``    AAL regions (L+R merged)    axial     48     10       gray
``aal_lobes_rgb25d``     AAL lobes (the demo's)      coronal   40     5        RGB: slices s-2, s, s+2
=======================  ==========================  ========  =====  =======  ===========================

In the RGB task each colour channel is a different slice (a 2.5D view), so colour carries anatomy the middle
slice alone lacks.

Each task is a low-data regime: ``--train_per_class`` (default 30, at least 20) training images per class, a
validation split (10 per class) and a test split of at least 500 images. Splits are made by slice position:
the slicing axis is cut into blocks of ``block`` slices, whole blocks go to one split (a fixed repeating
pattern, so every split sees the whole brain), and patch centres keep a margin from block edges (1 slice, or
the RGB slab's half-width + 1), so no slice, and no voxel of a 2.5D slab, is in two splits. The script checks
the result with ``monai_rd.data.check_datalist`` (which also finds identical pixels in two splits).

Output per task: ``<out>/<task>/<class>/<file>.png`` and ``<out>/<task>/datalist.json`` (``classes``,
``dataset_dir`` ".", the three splits, and ``image_size``/``in_channels`` for the runner), readable by the
own-data bundle ``bundles/rd_classify`` (``--datalist_json``).

Usage::

    python benchmarks/suite/make_tasks.py --out benchmarks/suite/tasks            # all tasks, about a minute
    python benchmarks/suite/make_tasks.py --out /tmp/tasks --tasks brodmann_axial32

Sources: ``mricron-data`` (MRIcron, BSD-3-Clause; Colin27: Holmes et al. 1998; AAL: Tzourio-Mazoyer et al. 2002;
Harvard-Oxford: FSL, Desikan et al. 2006; JHU: Mori et al. 2005; Brodmann map distributed with MRIcron).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(1, REPO)

from demo_data.brain_lobes import AAL_LOBES, MRICRON_DIR, aal_lobe_map  # noqa: E402

SPLITS = ("training", "validation", "test")
# the split of each block of slices, repeating along the slicing axis: every split samples the whole brain
BLOCK_PATTERN = ("training", "test", "validation", "test")

# Harvard-Oxford cortical atlas (FSL's HarvardOxford-Cortical.xml; label value = index + 1)
HARVARD_OXFORD_CORTICAL = {
    3: "superior_frontal_gyrus",
    4: "middle_frontal_gyrus",
    7: "precentral_gyrus",
    17: "postcentral_gyrus",
    22: "lateral_occipital_superior",
    31: "precuneus",
}


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of the suite.

    Attributes:
        name: folder name.
        atlas: atlas file in the mricron folder.
        classes: ``(mricron folder) -> {class name: atlas label values}``.
        axis: slicing axis of the patch plane in the (x, y, z) volume: 0 sagittal, 1 coronal, 2 axial.
        patch: patch side in voxels (= image size).
        rgb_offset: 0 for a gray patch; d > 0 for an RGB patch of the slices s - d, s, s + d.
        test_per_class: test images per class (enough for at least 500 in all).
        slice_step: sample every this many slices.
        grid_step: in-plane stride of candidate centres.
        summary: one line for the suite's tables.
    """

    name: str
    atlas: str
    classes: Callable[[str], dict[str, tuple[int, ...]]]
    axis: int
    patch: int
    rgb_offset: int = 0
    test_per_class: int = 100
    slice_step: int = 2
    grid_step: int = 3
    summary: str = ""

    @property
    def in_channels(self) -> int:
        return 3 if self.rgb_offset else 1


def _table(path: str) -> list[tuple[int, str]]:
    """``index name ...`` lines of an atlas label table."""
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                rows.append((int(parts[0]), parts[1]))
    return rows


def _by_name(path: str, groups: Mapping[str, str]) -> dict[str, tuple[int, ...]]:
    """Classes from a label table: class -> the values whose name matches the class's regular expression."""
    rows = _table(path)
    out = {c: tuple(v for v, name in rows if re.fullmatch(rx, name)) for c, rx in groups.items()}
    empty = [c for c, v in out.items() if not v]
    if empty:
        raise ValueError(f"{path}: no label matches the class(es) {empty}; is this the atlas' label table?")
    return out


def jhu_tract_classes(mricron_dir: str) -> dict[str, tuple[int, ...]]:
    """Six JHU white-matter tract groups, left and right merged."""
    return _by_name(
        os.path.join(mricron_dir, "JHU-WhiteMatter-labels-1mm.nii.txt"),
        {
            "corpus_callosum": r"(Genu|Body|Splenium)_of_corpus_callosum",
            "internal_capsule": r".*_internal_capsule_[LR]",
            "corona_radiata": r".*_corona_radiata_[LR]",
            "posterior_thalamic_radiation": r"Posterior_thalamic_radiation.*",
            "cingulum": r"Cingulum_.*",
            "superior_longitudinal_fasciculus": r"Superior_longitudinal_fasciculus_[LR]",
        },
    )


def aal_region_classes(mricron_dir: str) -> dict[str, tuple[int, ...]]:
    """Ten AAL regions, left and right merged."""
    regions = ("Precentral", "Frontal_Sup", "Frontal_Mid", "Temporal_Mid", "Temporal_Sup", "Occipital_Mid",
               "Parietal_Inf", "Precuneus", "Cerebelum_Crus1", "Lingual")
    return _by_name(os.path.join(mricron_dir, "aal.nii.txt"), {r.lower(): rf"{r}_[LR]" for r in regions})


def aal_lobe_classes(mricron_dir: str) -> dict[str, tuple[int, ...]]:
    """The demo's five AAL lobes (``demo_data.brain_lobes``)."""
    lobe_of = aal_lobe_map(os.path.join(mricron_dir, "aal.nii.txt"))
    return {lobe: tuple(sorted(v for v, lb in lobe_of.items() if lb == lobe)) for lobe in sorted(AAL_LOBES.values())}


def brodmann_classes(mricron_dir: str) -> dict[str, tuple[int, ...]]:
    """Eight Brodmann areas."""
    return {f"ba{a:02d}": (a,) for a in (6, 10, 11, 18, 19, 20, 21, 37)}


def harvard_oxford_classes(mricron_dir: str) -> dict[str, tuple[int, ...]]:
    """Six Harvard-Oxford cortical regions."""
    return {name: (value,) for value, name in HARVARD_OXFORD_CORTICAL.items()}


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("ho_cortex_coronal", "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz", harvard_oxford_classes, axis=1,
             patch=48, summary="Harvard-Oxford cortical regions, coronal 48 px, 6 classes"),
        Task("jhu_tracts_sagittal", "JHU-WhiteMatter-labels-1mm.nii.gz", jhu_tract_classes, axis=0, patch=32,
             slice_step=1, grid_step=2, summary="JHU white-matter tracts, sagittal 32 px, 6 classes"),
        Task("brodmann_axial32", "brodmann.nii.gz", brodmann_classes, axis=2, patch=32, test_per_class=75,
             summary="Brodmann areas, axial 32 px, 8 classes"),
        Task("aal_regions_axial", "aal.nii.gz", aal_region_classes, axis=2, patch=48, test_per_class=60,
             summary="AAL regions (L+R), axial 48 px, 10 classes"),
        Task("aal_lobes_rgb25d", "aal.nii.gz", aal_lobe_classes, axis=1, patch=40, rgb_offset=2,
             summary="AAL lobes, coronal 40 px RGB of slices s-2, s, s+2, 5 classes"),
    )
}


def load_on_grid(path: str, reference) -> np.ndarray:
    """A label volume resampled (nearest voxel) onto the grid of a reference NIfTI image.

    The mricron atlases are in MNI space on grids that differ from Colin27's by whole-voxel shifts and flips;
    nearest-neighbour lookup through the two affines maps them exactly. Voxels outside the atlas get label 0.

    Args:
        path: the atlas NIfTI file.
        reference: the nibabel image whose grid the result is on.

    Returns:
        (X, Y, Z) int32 labels on ``reference``'s grid.
    """
    import nibabel as nib

    atlas = nib.load(path)
    labels = np.asarray(atlas.dataobj, dtype=np.int32)
    ijk = np.indices(reference.shape[:3]).reshape(3, -1)
    world = reference.affine[:3, :3] @ ijk + reference.affine[:3, 3:4]
    inv = np.linalg.inv(atlas.affine)
    src = np.rint(inv[:3, :3] @ world + inv[:3, 3:4]).astype(np.int64)
    inside = np.all((src >= 0) & (src < np.array(labels.shape)[:, None]), axis=0)
    out = np.zeros(ijk.shape[1], dtype=np.int32)
    out[inside] = labels[src[0, inside], src[1, inside], src[2, inside]]
    return out.reshape(reference.shape[:3])


def to_uint8(image: np.ndarray) -> np.ndarray:
    """The demo's intensity window: the 0.5-99.5 percentiles of the non-zero voxels to 0-255."""
    lo, hi = np.percentile(image[image > 0], [0.5, 99.5])
    return (np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def block_split(n_slices: int, block: int, margin: int, pattern: Sequence[str] = BLOCK_PATTERN) -> dict[int, str]:
    """The split of every usable slice: whole blocks of ``block`` slices per split, ``margin`` slices kept from edges.

    Args:
        n_slices: slices along the slicing axis.
        block: slices per block.
        margin: slices at each edge of a block that hold no patch centre; a patch that reaches ``margin - 1``
            slices beyond its centre (a 2.5D slab) then never shares a slice with another block.
        pattern: the split of consecutive blocks, repeated.

    Returns:
        ``{slice index: split}`` for the slices that may hold patch centres.

    Raises:
        ValueError: a block too thin to keep any slice.
    """
    if block - 2 * margin < 1:
        raise ValueError(f"a block of {block} slices with a margin of {margin} keeps no slice; use a larger block.")
    return {s: pattern[(s // block) % len(pattern)] for s in range(n_slices) if margin <= s % block < block - margin}


def _plane(volume: np.ndarray, axis: int, s: int) -> np.ndarray:
    return np.take(volume, s, axis=axis)


def derive_task(
    image: np.ndarray,
    atlas: np.ndarray,
    classes: Mapping[str, Sequence[int]],
    out_dir: str,
    axis: int,
    patch: int,
    rgb_offset: int = 0,
    per_class: Mapping[str, int] | None = None,
    block: int | None = None,
    slice_step: int = 2,
    grid_step: int = 3,
    min_train: int = 20,
    seed: int = 0,
    meta: Mapping | None = None,
) -> dict:
    """Cut labelled patches from a volume into class folders and a datalist split by slice blocks.

    Args:
        image: (X, Y, Z) uint8 volume.
        atlas: (X, Y, Z) labels on the same grid.
        classes: class name -> atlas label values (label order = this order).
        out_dir: the task folder (class folders and ``datalist.json`` are written in it).
        axis: slicing axis of the patch plane.
        patch: patch side.
        rgb_offset: 0: gray patches; d > 0: RGB patches of the slices s - d, s, s + d.
        per_class: images per class of each split (default 30 / 10 / 100), and ``unlabelled``: further training-block
            patches per class listed without their label under ``unlabelled`` (default 0). They follow the training
            images in the same random order, so the labelled images, validation and test do not depend on it.
        block: slices per split block (default ``2 * (rgb_offset + 1) + 4``: two sampled slices per block).
        slice_step: sample every this many slices.
        grid_step: in-plane stride of candidate centres.
        min_train: fewest training images per class allowed (the low-data regime's floor).
        seed: sampling seed.
        meta: extra fields for ``datalist.json``.

    Returns:
        The datalist written (relative paths), with ``counts`` ``{split: {class: n}}``.

    Raises:
        ValueError: shapes differ, ``per_class["training"] < min_train``, or a class has fewer candidate patches in a
            split than it should get there (names each).
    """
    from PIL import Image

    if image.shape != atlas.shape:
        raise ValueError(f"image {image.shape} and atlas {atlas.shape} must share one grid.")
    per_class = {"training": 30, "validation": 10, "test": 100, "unlabelled": 0, **(per_class or {})}
    rng = np.random.default_rng(seed)
    half = patch // 2
    value_to_class = {v: i for i, vals in enumerate(classes.values()) for v in vals}
    lut = np.full(int(atlas.max()) + 1, -1, dtype=np.int64)
    for v, c in value_to_class.items():
        if v < lut.size:
            lut[v] = c
    margin = rgb_offset + 1
    split_of = block_split(image.shape[axis], block or 2 * margin + 4, margin)
    in_plane = [d for d in range(3) if d != axis]
    cands: dict[str, list[list[tuple[int, int, int]]]] = {s: [[] for _ in classes] for s in SPLITS}
    for s, split in split_of.items():
        if s % slice_step:
            continue
        lab = lut[_plane(atlas, axis, s)]
        rows = np.arange(half, image.shape[in_plane[0]] - half, grid_step)
        cols = np.arange(half, image.shape[in_plane[1]] - half, grid_step)
        grid = lab[np.ix_(rows, cols)]
        for r, c in zip(*np.nonzero(grid >= 0)):
            cands[split][grid[r, c]].append((s, int(rows[r]), int(cols[c])))
    names = list(classes)
    if per_class["training"] < min_train:
        raise ValueError(f"{per_class['training']} training images per class is below the minimum of {min_train}.")
    wanted = {**per_class, "training": per_class["training"] + per_class["unlabelled"]}
    short = [
        f"{names[k]} ({split}: {len(cands[split][k])} < {wanted[split]})"
        for split in SPLITS
        for k in range(len(names))
        if len(cands[split][k]) < wanted[split]
    ]
    if short:
        raise ValueError(
            f"{out_dir}: too few candidate patches for {', '.join(short)}; use smaller blocks, a smaller grid_step "
            "or other classes."
        )
    datalist: dict = {"classes": names, "dataset_dir": ".", **(meta or {})}
    counts: dict[str, dict[str, int]] = {}
    unlabelled: list[dict] = []
    for split in SPLITS:
        items = []
        for k, name in enumerate(names):
            pool = cands[split][k]
            order = rng.permutation(len(pool))
            pick = order[: per_class[split]]
            extra = order[per_class[split] : per_class[split] + per_class["unlabelled"]] if split == "training" else []
            os.makedirs(os.path.join(out_dir, name), exist_ok=True)
            for i in [*sorted(pick), *sorted(extra)]:
                s, r, c = pool[i]
                planes = [s - rgb_offset, s, s + rgb_offset] if rgb_offset else [s]
                tiles = [_plane(image, axis, p)[r - half : r + half, c - half : c + half] for p in planes]
                # rows = the second in-plane axis, flipped, as the demo shows its axial patches
                tiles = [np.rot90(t) for t in tiles]
                arr = np.ascontiguousarray(np.stack(tiles, -1) if rgb_offset else tiles[0])
                file = f"ch2_a{axis}_s{s:03d}_r{r:03d}_c{c:03d}.png"
                rel = os.path.join(name, file) if i in pick else os.path.join("unlabelled", file)  # no class in it
                os.makedirs(os.path.dirname(os.path.join(out_dir, rel)), exist_ok=True)
                Image.fromarray(arr).save(os.path.join(out_dir, rel), optimize=True)
                (items if i in pick else unlabelled).append({"image": rel, "label": k} if i in pick else {"image": rel})
            counts.setdefault(split, {})[name] = len(pick)
        datalist[split] = items
    if per_class["unlabelled"]:
        datalist["unlabelled"] = unlabelled
    datalist["counts"] = counts
    with open(os.path.join(out_dir, "datalist.json"), "w") as f:
        json.dump(datalist, f, indent=1)
    return datalist


def make_task(
    task: Task,
    out: str,
    mricron_dir: str = MRICRON_DIR,
    train_per_class: int = 30,
    seed: int = 0,
    unlabelled_per_class: int = 0,
) -> dict:
    """Build one task of :data:`TASKS` under ``out/<task.name>`` and check it; returns its datalist.

    ``unlabelled_per_class`` > 0 adds that many unlabelled training-block patches per class (``derive_task``)."""
    import nibabel as nib

    from monai_rd.data import check_datalist

    ref = nib.load(os.path.join(mricron_dir, "ch2.nii.gz"))
    image = to_uint8(np.asarray(ref.dataobj, dtype=np.float32))
    atlas = load_on_grid(os.path.join(mricron_dir, task.atlas), ref)
    classes = task.classes(mricron_dir)
    folder = os.path.join(out, task.name)
    per_class = {"training": train_per_class, "validation": 10, "test": task.test_per_class,
                 "unlabelled": unlabelled_per_class}
    meta = {"task": task.name, "summary": task.summary, "image_size": task.patch, "in_channels": task.in_channels,
            "seed": seed, "source": f"mricron-data: ch2.nii.gz + {task.atlas}"}
    datalist = derive_task(image, atlas, classes, folder, task.axis, task.patch, task.rgb_offset, per_class,
                           slice_step=task.slice_step, grid_step=task.grid_step, seed=seed, meta=meta)
    n_test = len(datalist["test"])
    if n_test < 500:
        raise ValueError(f"{task.name}: only {n_test} test images; raise test_per_class.")
    check_datalist(os.path.join(folder, "datalist.json"), datalist["classes"], base_dir=folder,
                   unlabelled_splits=["unlabelled"] if unlabelled_per_class else [])
    return datalist


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/suite/tasks", help="folder of the task folders")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS), help="tasks to build (default: all)")
    p.add_argument("--mricron_dir", default=MRICRON_DIR, help="folder with ch2.nii.gz and the atlases")
    p.add_argument("--train_per_class", type=int, default=30, help="training images per class (20-50)")
    p.add_argument("--unlabelled_per_class", type=int, default=0,
                   help="unlabelled training-block patches per class, listed under 'unlabelled' (RD and KD train on "
                        "them; the labelled images, validation and test stay the same)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not os.path.isfile(os.path.join(a.mricron_dir, "ch2.nii.gz")):
        print(f"{a.mricron_dir}/ch2.nii.gz not found: install Debian's mricron-data (apt-get install mricron-data).",
              file=sys.stderr)
        return 2
    for name in a.tasks:
        d = make_task(TASKS[name], a.out, a.mricron_dir, a.train_per_class, a.seed, a.unlabelled_per_class)
        print(f"{name}: " + ", ".join(f"{s} {sum(d['counts'][s].values())}" for s in SPLITS)
              + (f", unlabelled {len(d['unlabelled'])}" if "unlabelled" in d else "")
              + f"; per class {d['counts']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
