"""Teacher-feature cache: the frozen teacher's features for each training image, computed once and reused.

The teacher is frozen and Phi sits on its outputs, so its forward pass gives the same features every epoch
for the same input view. Computing them once turns the per-step cost of RD into the student's own cost plus
Phi's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import set_determinism

from monai_rd.errors import OptionError
from monai_rd.utils.files import file_sha256, write_json_atomic
from monai_rd.utils.ranks import is_distributed, on_rank0, rank

__all__ = [
    "build_cache_once",
    "TeacherFeatureCache",
    "CachedTeacherFeaturesd",
    "RandCachedTeacherFeaturesd",
    "describe_transform",
    "normalise_path",
]

logger = logging.getLogger(__name__)

_FORMAT = 2  # on-disk layout: 1 = one torch.save file per item; 2 = memory-mapped shards with a JSON manifest
# storage dtype -> the NumPy dtype of its bytes in a shard (NumPy has no bfloat16: its bits are kept as int16)
_STORAGE = {torch.float16: np.float16, torch.bfloat16: np.int16, torch.float32: np.float32}


def describe_transform(obj: Any, depth: int = 0) -> Any:
    """A stable, address-free description of a (composed) transform: class names and simple settings.

    Used in cache keys, so that changing a transform's parameters (e.g. an intensity range) changes the key.
    """
    if depth > 6:
        return type(obj).__qualname__
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (type, torch.dtype, np.dtype)):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [describe_transform(o, depth + 1) for o in obj]
    if isinstance(obj, dict):
        return {str(k): describe_transform(v, depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return np.asarray(obj).tolist() if np.asarray(obj).size <= 64 else f"array{tuple(np.shape(obj))}"
    if callable(obj) or hasattr(obj, "__dict__"):
        settings = {
            k: describe_transform(v, depth + 1)
            for k, v in sorted(vars(obj).items())
            if not k.startswith("_") and k != "R" and not isinstance(v, np.random.RandomState)
        } if hasattr(obj, "__dict__") else {}
        return {"type": f"{type(obj).__module__}.{type(obj).__qualname__}", **settings}
    return type(obj).__qualname__


def normalise_path(path: str | os.PathLike) -> str:
    """The form of an image path the cache keys by: ``~`` expanded, absolute, symlinks resolved.

    So ``./x.png``, ``x.png`` (relative to the working directory), ``~/x.png``, a symlink to it and its absolute
    path are one entry.
    """
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def _source_path(value: Any) -> str:
    if isinstance(value, MetaTensor):
        return str(value.meta.get("filename_or_obj", ""))
    return str(value)


class _RowWriter:
    """Writes a cache's rows, allocating its arrays on the first write (when the row shapes are known).

    On disk the arrays are NumPy memmaps of temporary ``.npy`` files beside their final names; in memory they are
    torch tensors. Only the rows being written are ever held outside the arrays.
    """

    def __init__(self, rows: int, dtype: torch.dtype, with_images: bool, temp_prefix: str | None) -> None:
        """``temp_prefix``: path stem of the disk arrays' temporary files, or None for tensors in memory."""
        self.rows = rows
        self.dtype = dtype
        self.with_images = with_images
        self.temp_prefix = temp_prefix
        self.features: torch.Tensor | np.ndarray | None = None
        self.images: torch.Tensor | np.ndarray | None = None
        self.temp_files: dict[str, str] = {}

    def _allocate(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | np.ndarray:
        if self.temp_prefix is None:
            return torch.empty((self.rows, *shape), dtype=dtype)
        # <stem>.<host>.<pid>.<random>.<name>.npy.tmp: a later build on this host removes it once the pid is gone
        folder, stem = os.path.split(self.temp_prefix)
        fd, tmp = tempfile.mkstemp(prefix=f"{stem}.{_host()}.{os.getpid()}.", suffix=f".{name}.npy.tmp", dir=folder)
        os.close(fd)
        self.temp_files[name] = tmp
        # a sparse file of the final size, filled row by row
        return np.lib.format.open_memmap(tmp, mode="w+", dtype=_STORAGE[dtype], shape=(self.rows, *shape))

    def write(self, rows: Sequence[int], features: torch.Tensor, images: torch.Tensor | None) -> None:
        """Store ``features`` (B, C_T, *spatial) and, with views, ``images`` (B, C, *spatial) at ``rows``."""
        if self.features is None:
            self.features = self._allocate("features", tuple(features.shape[1:]), self.dtype)
            if self.with_images and images is not None:
                self.images = self._allocate("images", tuple(images.shape[1:]), torch.float32)
        for name, store, value, dtype in (
            ("features", self.features, features, self.dtype),
            ("images", self.images, images, torch.float32),
        ):
            if store is None or value is None:
                continue
            if tuple(value.shape[1:]) != tuple(store.shape[1:]):
                raise ValueError(
                    f"teacher-feature cache: {name} of shape {tuple(value.shape[1:])} differ from the first item's "
                    f"{tuple(store.shape[1:])}; the cache transform must give every image the same size."
                )
            if isinstance(store, np.ndarray):
                store[np.asarray(rows)] = _to_numpy(value.to(dtype))
            else:
                store[torch.as_tensor(rows, dtype=torch.long)] = value.to(dtype)

    def commit(self, paths: Mapping[str, str]) -> None:
        """Flush the memmaps and move their files to ``paths[name]`` (each an atomic rename)."""
        for name in list(self.temp_files):
            store = getattr(self, name)
            store.flush()
            setattr(self, name, None)  # close the mapping before the rename
            del store
            os.replace(self.temp_files.pop(name), paths[name])

    def discard(self) -> None:
        """Remove the temporary files of an unfinished write."""
        self.features = self.images = None
        for tmp in self.temp_files.values():
            if os.path.exists(tmp):
                os.remove(tmp)
        self.temp_files = {}


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    # NumPy has no bfloat16: its bits are stored as int16 and viewed back on reading
    return t.contiguous().view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.contiguous().numpy()


def _from_numpy(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


class TeacherFeatureCache:
    """Computes and stores a frozen teacher's features for every item of a datalist, ``views`` views each.

    View 0 is the deterministic view: ``transform`` applied to the item. With ``views > 1`` the other views
    come from ``transform`` followed by ``augment``, each seeded by (item, view), so a view is reproducible
    and its image is stored beside its features: the student can then be trained on exactly the view the
    teacher saw (see :class:`CachedTeacherFeaturesd`).

    Storage is one (N * K, C_T, *spatial) array of rows (item ``i``'s view ``v`` is row ``i * K + v``), plus one
    (N * K, C, *spatial) float32 array of view images when ``views > 1``:

    * without ``cache_dir`` a torch tensor in memory;
    * with ``cache_dir`` a memory-mapped NumPy ``.npy`` file (a *shard*), written once during :meth:`build` row
      by row and then read per batch by :meth:`gather`: host memory holds one teacher batch while building and
      one training batch while reading, beside the page cache the kernel manages (and can drop). A ``.npy``
      memmap is used rather than safetensors because it can be allocated at its final size and filled row by
      row, and read back with a sorted row index in one call; safetensors writes a whole dict of tensors at
      once.

    Each shard has a JSON manifest listing its rows' keys, made of the image's normalised path and SHA-256
    content hash, the teacher's :meth:`~monai_rd.networks.FrozenTeacher.fingerprint` (weights, feature layer,
    preprocessing), the view transforms' description, ``views``, ``seed`` and ``dtype``; the manifest also
    records the teacher fingerprint. A changed image, teacher or transform is a different key, so it is never
    served a stale feature. The arrays are written to temporary files and renamed, and the manifest is
    written last, the same way: a shard without its manifest (an interrupted build) is never read. A build
    whose items are all in one shard reads that shard and runs no teacher; otherwise it writes a new shard,
    copying the rows it finds in others and computing the rest, and removes the shards it supersedes.

    Images are found by their normalised path (:func:`normalise_path`), so ``./x.png``, ``~/x.png``, a symlink
    and the absolute path are one entry. A pickled copy (what a DataLoader worker started with ``spawn`` gets)
    holds neither the teacher nor the arrays of a disk cache: it reopens the memory-mapped files on first use,
    and can serve but not build.

    Args:
        teacher: the frozen teacher (a :class:`~monai_rd.networks.FrozenTeacher`); called under ``no_grad``, and
            moved to ``device`` only when some features have to be computed.
        transform: deterministic transform producing the teacher's input from a datalist item (a dict).
        image_key: key of the image path in datalist items and of the image after ``transform``.
        views: number of cached views K per item (1 = the deterministic view only).
        augment: random transform applied after ``transform`` for views 1..K-1.
        cache_dir: optional folder for the on-disk, memory-mapped cache.
        device: device to run the teacher on.
        batch_size: teacher batch size while building.
        dtype: storage dtype, ``torch.float16`` (half the memory), ``torch.bfloat16`` or ``torch.float32`` (exact).
        autocast: run the teacher under bf16 (CUDA with bf16 support) or fp16 (other CUDA) autocast while
            building; never on CPU, where it is slower.
        seed: base seed of the augmented views.

    Raises:
        ValueError: ``views < 1``, or ``views > 1`` without ``augment``.
        OptionError: ``dtype`` is not one of the storage dtypes.
    """

    def __init__(
        self,
        teacher: nn.Module,
        transform: Callable,
        image_key: str = "image",
        views: int = 1,
        augment: Callable | None = None,
        cache_dir: str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        dtype: torch.dtype = torch.float16,
        autocast: bool = True,
        seed: int = 0,
    ) -> None:
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}.")
        if views > 1 and augment is None:
            raise ValueError("views > 1 needs an `augment` transform to make the extra views.")
        if dtype not in _STORAGE:
            raise OptionError(
                f"cache_dtype {dtype} is not supported by the teacher-feature cache; use one of "
                f"{', '.join(str(d) for d in _STORAGE)}."
            )
        self.teacher = teacher
        self.transform = transform
        self.image_key = image_key
        self.views = views
        self.augment = augment
        self.cache_dir = os.path.abspath(os.path.expanduser(cache_dir)) if cache_dir else None
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dtype = dtype
        self.autocast = autocast
        self.seed = seed
        self.hits = 0
        self.misses = 0
        self._teacher_id: str | None = None
        self._rows: dict[str, int] = {}  # normalised path -> item row; its views are rows row * K ... row * K + K - 1
        self._keys: list[str] = []  # per item row: the disk key ("" in memory)
        self._paths: list[str] = []  # per item row: the normalised path
        self._features: torch.Tensor | np.ndarray | None = None  # (N * K, C_T, *spatial)
        self._images: torch.Tensor | np.ndarray | None = None  # (N * K, C, *spatial), only when views > 1
        self._shard: str | None = None  # path stem of the shard serving a disk cache
        self._copy = False  # a pickled copy: serves, cannot build

    @property
    def teacher_id(self) -> str:
        """The teacher's fingerprint (computed once).

        Raises:
            RuntimeError: the cache has no teacher (a pickled copy) and the fingerprint was never computed.
        """
        if self._teacher_id is None:
            if self.teacher is None:
                raise RuntimeError("this teacher-feature cache has no teacher (a pickled copy); build the original.")
            fp = getattr(self.teacher, "fingerprint", None)
            self._teacher_id = fp() if callable(fp) else type(self.teacher).__name__
        return self._teacher_id

    @property
    def config_id(self) -> str:
        """SHA-256 of everything but the image that a feature depends on: teacher, transforms, views, seed, dtype."""
        ident = repr(
            (
                _FORMAT,
                self.teacher_id,
                describe_transform(self.transform),
                describe_transform(self.augment),
                self.views,
                self.seed,
                str(self.dtype),
            )
        )
        return hashlib.sha256(ident.encode()).hexdigest()

    def key(self, path: str, content_hash: str) -> str:
        """Disk-cache key of one item: normalised path, content, teacher and view transforms."""
        return _item_key(normalise_path(path), content_hash, self.config_id)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # a copy serves (in a DataLoader worker) and never builds: the teacher module (possibly on CUDA) would be
        # costly to pickle, and a disk cache's arrays and row keys are reopened from its shard instead of copied
        state.update(teacher=None, _copy=True)
        if self._shard is not None:
            state.update(_features=None, _images=None, _keys=[], _paths=[])
        return state

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, path: str) -> bool:
        return self._item_row(path, strict=False) is not None

    @property
    def features(self) -> Mapping[str, torch.Tensor]:
        """Read-only mapping: normalised path -> (K, C_T, *spatial) features in the storage dtype, read on access."""
        return _FeatureMapping(self)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored features and view images: in memory, or in the memory-mapped files with ``cache_dir``."""
        return sum(_nbytes(a) for a in (self._feature_store(), self._image_store()) if a is not None)

    @property
    def in_memory(self) -> bool:
        """Whether the rows live in process memory (no ``cache_dir``) rather than in a memory-mapped file."""
        return self.cache_dir is None

    def _view(self, item: dict, index: int, view: int) -> torch.Tensor:
        data = self.transform(dict(item))
        if view > 0:
            if isinstance(self.augment, Randomizable):
                self.augment.set_random_state(seed=self.seed + 1_000_003 * view + index)
            else:  # a Compose of random transforms: seed them all at once
                set_determinism(seed=self.seed + 1_000_003 * view + index)
            data = self.augment(data)
        img = data[self.image_key]
        return torch.as_tensor(img.as_tensor() if isinstance(img, MetaTensor) else img).float()

    def _run_teacher(self, images: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(images).to(self.device)
        use_amp = self.autocast and self.device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        with torch.no_grad(), torch.autocast(self.device.type, dtype=amp_dtype, enabled=use_amp):
            return self.teacher(x).float().cpu()

    def build(self, data: Sequence[Mapping]) -> TeacherFeatureCache:
        """Add every item of ``data`` not in the cache yet: read it from a shard on disk, or run the teacher.

        Items already held keep their rows, so indices from :meth:`index` stay valid across builds.

        Args:
            data: datalist items with the image path under ``image_key``.

        Returns:
            self.

        Raises:
            FileNotFoundError: an image is missing (named).
            RuntimeError: an image fails in the transform or the teacher (the error names its path), this is
                a pickled copy and ``data`` has items it does not hold, or the teacher's weights changed since
                the cache was built.
        """
        if self.teacher is not None and not self._copy:
            # keyed at every build: the teacher may have changed in place since (adapted: --method finetune/lora*)
            previous, self._teacher_id = self._teacher_id, None
            if self._rows and previous is not None and self.teacher_id != previous:
                raise RuntimeError(
                    "teacher-feature cache: the teacher's weights changed since this cache was built, so its rows "
                    "are stale; build a new cache after changing the teacher."
                )
            self.teacher_id  # noqa: B018 - computed now, from the weights the rows below are computed with
        new: list[tuple[int, dict, str, str]] = []  # (index in data, item, normalised path, disk key)
        seen = set(self._rows)
        config = self.config_id if self.cache_dir else ""
        for index, item in enumerate(data):
            path = normalise_path(_source_path(item[self.image_key]))
            if path in seen:
                continue
            seen.add(path)
            new.append((index, dict(item), path, _item_key(path, file_sha256(path), config) if config else ""))
        if new and self._copy:
            raise RuntimeError(
                f"teacher-feature cache: {len(new)} item(s), e.g. {new[0][2]}, are not in this pickled copy of the "
                "cache; build the original with the whole datalist before the DataLoader starts."
            )
        if new:
            if self.cache_dir:
                self._build_on_disk(new)
            else:
                self._write(new, computed=range(len(new)), sources={}, temp_prefix=None)
                self.misses += len(new)
        logger.info(
            "teacher-feature cache: %d items x %d view(s), %d computed, %d read from disk, %.1f MB %s",
            len(self), self.views, self.misses, self.hits, self.nbytes / 2**20,
            "in memory" if self.in_memory else f"memory-mapped from {self._shard}.*",
        )
        return self

    def adopt(self, built: TeacherFeatureCache) -> TeacherFeatureCache:
        """Serve the rows another process built: the other ranks of a distributed run adopt rank 0's in-memory
        cache (sent as a pickled copy) instead of running the teacher themselves.

        Args:
            built: a built cache of the same views and storage dtype (typically a pickled copy).

        Returns:
            self.

        Raises:
            ValueError: ``built`` has other views or another storage dtype.
        """
        if (built.views, built.dtype) != (self.views, self.dtype):
            raise ValueError(
                f"cannot adopt a teacher-feature cache of {built.views} view(s) in {built.dtype} into one of "
                f"{self.views} view(s) in {self.dtype}; build both from the same configuration."
            )
        self._features, self._images, self._shard = built._features, built._images, built._shard
        self._rows, self._keys, self._paths = dict(built._rows), list(built._keys), list(built._paths)
        self._teacher_id = self._teacher_id or built._teacher_id
        self.hits += len(built)
        return self

    def _build_on_disk(self, new: list[tuple[int, dict, str, str]]) -> None:
        os.makedirs(self.cache_dir, exist_ok=True)
        _remove_stale_temporaries(self.cache_dir)
        keys = self._keys + [key for *_, key in new]
        shards = self._shards()
        # a shard holding every key (the held ones in their rows) serves as it is: no teacher, no copy
        for stem, manifest in sorted(shards.items(), key=lambda s: len(s[1]["keys"])):
            if manifest["keys"][: len(self._keys)] != self._keys:
                continue
            row_of = {k: r for r, k in enumerate(manifest["keys"])}
            if all(key in row_of for *_, key in new) and self._open(stem, manifest):
                self._keys, self._paths = list(manifest["keys"]), list(manifest["paths"])
                self._rows.update({path: row_of[key] for _, _, path, key in new})
                self.hits += len(new)
                return
        found = {k: (stem, r) for stem, m in shards.items() for r, k in enumerate(m["keys"])}
        sources = {i: found[key] for i, (*_, key) in enumerate(new) if key in found}
        computed = [i for i in range(len(new)) if i not in sources]
        # the name hashes the keys: the same name is the same rows
        digest = hashlib.sha256("".join(keys).encode()).hexdigest()
        stem = os.path.join(self.cache_dir, f"{self.config_id[:16]}-{digest[:16]}")
        self._write(new, computed, sources={i: (shards[s], s, r) for i, (s, r) in sources.items()}, temp_prefix=stem)
        self.hits += len(sources)
        self.misses += len(computed)
        written = set(keys)
        for old, manifest in shards.items():  # superseded: every row is in the new shard
            if old != stem and written.issuperset(manifest["keys"]):
                _remove_shard(old)

    def _write(
        self,
        new: list[tuple[int, dict, str, str]],
        computed: Sequence[int],
        sources: Mapping[int, tuple[dict, str, int]],
        temp_prefix: str | None,
    ) -> None:
        """Write held rows, then ``new``: rows of ``sources`` (manifest, shard, item row) copied, ``computed`` run."""
        held, k = len(self._paths), self.views
        writer = _RowWriter((held + len(new)) * k, self.dtype, self.views > 1, temp_prefix)
        try:
            for start in range(0, held, self.batch_size):  # held rows keep their place
                items = list(range(start, min(start + self.batch_size, held)))
                rows = [i * k + v for i in items for v in range(k)]
                writer.write(rows, *self._read(rows))
            by_shard: dict[str, list[tuple[int, int]]] = {}
            for i, (_, stem, row) in sources.items():
                by_shard.setdefault(stem, []).append((held + i, row))
            for stem, pairs in by_shard.items():
                manifest = next(m for m, s, _ in sources.values() if s == stem)
                arrays = _open_arrays(stem, manifest, self.dtype, self.views)
                if arrays is None:
                    raise RuntimeError(f"teacher-feature cache: shard {stem}.* changed while being read; rebuild.")
                for start in range(0, len(pairs), self.batch_size):
                    chunk = pairs[start : start + self.batch_size]
                    rows = [src * k + v for _, src in chunk for v in range(k)]
                    dst_rows = [dst * k + v for dst, _ in chunk for v in range(k)]
                    writer.write(dst_rows, *_read_rows(*arrays, rows, self.dtype))
            if computed:
                self._compute(new, computed, held, writer)
            if temp_prefix is None:
                self._features, self._images = writer.features, writer.images
            else:
                self._commit(writer, temp_prefix, new)
        finally:
            writer.discard()
        self._paths += [path for _, _, path, _ in new]
        self._keys += [key for *_, key in new]
        self._rows.update({path: held + i for i, (_, _, path, _) in enumerate(new)})

    def _compute(
        self, new: list[tuple[int, dict, str, str]], computed: Sequence[int], held: int, writer: _RowWriter
    ) -> None:
        """Run the teacher on the ``computed`` items of ``new`` (item rows ``held + i``), every view."""
        was_training = self.teacher.training
        self.teacher.to(self.device).eval()
        try:
            for view in range(self.views):
                for start in range(0, len(computed), self.batch_size):
                    chunk = [new[i] + (held + i,) for i in computed[start : start + self.batch_size]]
                    images = []
                    for index, item, path, _, _ in chunk:
                        try:
                            images.append(self._view(item, index, view))
                        except Exception as e:
                            raise RuntimeError(f"teacher-feature cache: failed to prepare {path}: {e}") from e
                    try:
                        feats = self._run_teacher(images).to(self.dtype)
                    except Exception as e:
                        raise RuntimeError(
                            f"teacher-feature cache: the teacher failed on a batch of {len(chunk)} images "
                            f"from {chunk[0][2]} to {chunk[-1][2]}: {e}"
                        ) from e
                    rows = [row * self.views + view for *_, row in chunk]
                    writer.write(rows, feats, torch.stack(images) if self.views > 1 else None)
        finally:
            self.teacher.train(was_training)

    def _commit(self, writer: _RowWriter, stem: str, new: list[tuple[int, dict, str, str]]) -> None:
        files = {name: f"{stem}.{name}.npy" for name in writer.temp_files}
        manifest = {
            "format": _FORMAT,
            "config": self.config_id,
            "teacher": self.teacher_id,
            "views": self.views,
            "dtype": str(self.dtype),
            "arrays": {
                name: {"file": os.path.basename(file), "shape": list(getattr(writer, name).shape)}
                for name, file in files.items()
            },
            "keys": self._keys + [key for *_, key in new],
            "paths": self._paths + [path for _, _, path, _ in new],
        }
        writer.commit(files)
        try:
            write_json_atomic(manifest, f"{stem}.json")  # the commit point: the arrays are trusted from here on
        except BaseException:
            for f in files.values():
                if os.path.exists(f):
                    os.remove(f)
            raise
        if not self._open(stem, manifest):
            raise RuntimeError(f"teacher-feature cache: the shard {stem}.* just written cannot be read back.")

    def _shards(self) -> dict[str, dict]:
        """Manifests of this configuration's committed shards in ``cache_dir`` whose arrays match, by path stem."""
        prefix, found = f"{self.config_id[:16]}-", {}
        for name in sorted(os.listdir(self.cache_dir)):
            if not (name.startswith(prefix) and name.endswith(".json")):
                continue
            try:
                with open(os.path.join(self.cache_dir, name)) as f:
                    manifest = json.load(f)
            except (OSError, ValueError) as e:
                logger.warning("teacher-feature cache: ignoring unreadable manifest %s (%s).", name, e)
                continue
            stem = os.path.join(self.cache_dir, name[: -len(".json")])
            if manifest.get("format") != _FORMAT or manifest.get("config") != self.config_id:
                continue
            if _open_arrays(stem, manifest, self.dtype, self.views) is not None:  # else damaged: rebuilt, not read
                found[stem] = manifest
        return found

    def _open(self, stem: str, manifest: dict) -> bool:
        """Serve from a shard, memory-mapped read-only; False when its arrays do not match its manifest."""
        arrays = _open_arrays(stem, manifest, self.dtype, self.views)
        if arrays is None:
            return False
        (self._features, self._images), self._shard = arrays, stem
        return True

    def _feature_store(self) -> torch.Tensor | np.ndarray | None:
        if self._features is None and self._shard is not None:
            self._reopen()
        return self._features

    def _image_store(self) -> torch.Tensor | np.ndarray | None:
        if self._features is None and self._shard is not None:
            self._reopen()
        return self._images

    def _reopen(self) -> None:
        # a shard's name hashes its keys, so the same name is the same rows
        try:
            with open(f"{self._shard}.json") as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            manifest = None
        if manifest is None or not self._open(self._shard, manifest):
            raise RuntimeError(
                f"teacher-feature cache: the shard {self._shard}.* was removed or changed after this cache was "
                "built (another run on the same cache_dir?); rebuild the cache."
            )

    def _read(self, rows: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows of the features (storage dtype) and view images, on the CPU; only these rows are read."""
        return _read_rows(self._feature_store(), self._image_store(), rows, self.dtype)

    def _item_row(self, path: str, strict: bool = True) -> int | None:
        row = self._rows.get(path)
        if row is None:
            row = self._rows.get(normalise_path(path))
        if row is None and strict:
            raise KeyError(
                f"{path!r} is not in the teacher-feature cache; call build() on a datalist that contains it "
                "(or train with the live teacher)."
            )
        return row

    def _check_view(self, view: int) -> None:
        if not 0 <= view < self.views:
            raise ValueError(f"view {view} is out of range for a cache of {self.views} view(s).")

    def index(self, path: str, view: int = 0) -> int:
        """Row of (``path``, ``view``) in the cache, as :meth:`gather` reads it.

        Args:
            path: the image path, in any form that normalises to the built one (relative, ``~``, symlink).
            view: view index in [0, views).

        Raises:
            KeyError: the image was not cached.
            ValueError: ``view`` is out of range.
        """
        self._check_view(view)
        return self._item_row(path) * self.views + view

    def gather(self, rows: torch.Tensor | Sequence[int], device: str | torch.device) -> torch.Tensor:
        """Features of a batch by row index (from :meth:`index`), on ``device`` in float32.

        Only the batch's rows are read (a disk cache reads them from its memory-mapped file in sorted order)
        and moved to ``device``, in the storage dtype, then cast there.

        Args:
            rows: (B,) integer rows, in any order, repeats allowed.
            device: the trainer's device.

        Returns:
            (B, C_T, *spatial) float32 tensor on ``device``.

        Raises:
            IndexError: a row is outside the cache (rows from another cache?).
            RuntimeError: the cache was never built.
        """
        idx = torch.as_tensor(rows).reshape(-1).to("cpu", torch.long)
        idx = idx.as_tensor() if isinstance(idx, MetaTensor) else idx
        store = self._feature_store()
        if store is None:
            raise RuntimeError("the teacher-feature cache is empty; call build() before gathering from it.")
        n = store.shape[0]
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(
                f"teacher-feature cache rows {idx.tolist()} are outside its {n} rows; the batch's rows must come "
                "from this cache's index() (the trainer's feature_cache must be the one the transform used)."
            )
        if isinstance(store, np.ndarray):
            # sorted unique rows: one forward pass over the file, each row read once
            uniq, inverse = torch.unique(idx, sorted=True, return_inverse=True)
            _prefetch(store, uniq.numpy())
            block = self._read(uniq.numpy())[0].to(device)
            return block.index_select(0, inverse.to(block.device)).float()
        return self._read(idx)[0].to(device).float()

    def lookup(self, path: str, view: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features (and, with several views, the view's image) of one image.

        Args:
            path: the image path, in any form that normalises to the built one.
            view: view index in [0, views).

        Returns:
            ``(features (C_T, *spatial) in the storage dtype, view image (C, *spatial) or None)``; features stay
            in the storage dtype so batches cross the data loader at that size (the trainer casts them to
            float32 on its device).

        Raises:
            KeyError: the image was not cached (names it and says to call ``build``).
            ValueError: ``view`` is out of range.
        """
        row = self.index(path, view)
        feats, img = self._read([row])
        return feats[0], None if img is None else img[0]


class _FeatureMapping(Mapping):
    """Read-only view of a cache as normalised path -> (K, C_T, *spatial) features, read on access."""

    def __init__(self, cache: TeacherFeatureCache) -> None:
        self.cache = cache

    def __getitem__(self, path: str) -> torch.Tensor:
        return torch.stack([self.cache.lookup(path, v)[0] for v in range(self.cache.views)])

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache._rows)

    def __len__(self) -> int:
        return len(self.cache)


def _open_arrays(
    stem: str, manifest: dict, dtype: torch.dtype, views: int
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """A shard's features and view images, memory-mapped read-only; None (with a warning) when they do not match."""
    arrays = {}
    for name, spec in manifest.get("arrays", {}).items():
        path = os.path.join(os.path.dirname(stem), spec["file"])
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            logger.warning("teacher-feature cache: ignoring shard %s (%s).", stem, e)
            return None
        if list(arr.shape) != spec["shape"] or arr.dtype != (_STORAGE[dtype] if name == "features" else np.float32):
            logger.warning("teacher-feature cache: ignoring shard %s: %s does not match its manifest.", stem, path)
            return None
        arrays[name] = arr
    if "features" not in arrays or (views > 1) != ("images" in arrays):
        return None
    return arrays["features"], arrays.get("images")


def _read_rows(
    features: torch.Tensor | np.ndarray | None,
    images: torch.Tensor | np.ndarray | None,
    rows: Sequence[int] | np.ndarray | torch.Tensor,
    dtype: torch.dtype,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``rows`` of the features (as ``dtype``) and view images (float32), as CPU tensors; nothing else is read."""
    out = []
    for store, as_dtype in ((features, dtype), (images, torch.float32)):
        if store is None:
            out.append(None)
        elif isinstance(store, np.ndarray):
            out.append(_from_numpy(store[np.asarray(rows, dtype=np.int64)], as_dtype))
        else:
            out.append(store.index_select(0, torch.as_tensor(rows, dtype=torch.long)))
    return out[0], out[1]


def _host() -> str:
    return socket.gethostname().replace(".", "_")


def _prefetch(store: np.ndarray, rows: np.ndarray) -> None:
    """Ask the kernel to read a memmap's ``rows`` from the disk all at once, before they are copied one by one.

    Rows not in the page cache are then read in parallel rather than one page fault after another (about half
    the time of a batch of cold rows on the reference machine); rows in the page cache cost a system call each.
    """
    if not (hasattr(os, "posix_fadvise") and isinstance(store, np.memmap) and store.filename):
        return
    row_bytes = store.strides[0]
    try:
        fd = os.open(store.filename, os.O_RDONLY)
    except OSError:  # advisory only: a removed file's mapping is still read, page by page
        return
    try:
        for row in rows:
            os.posix_fadvise(fd, store.offset + int(row) * row_bytes, row_bytes, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def _item_key(path: str, content_hash: str, config_id: str) -> str:
    return hashlib.sha256(repr((path, content_hash, config_id)).encode()).hexdigest()


def _nbytes(a: torch.Tensor | np.ndarray) -> int:
    return int(a.nbytes) if isinstance(a, np.ndarray) else a.numel() * a.element_size()


def _remove_shard(stem: str) -> None:
    # the manifest first, so a shard is never half-removed and still trusted; an open memmap survives unlinking
    for suffix in (".json", ".features.npy", ".images.npy"):
        try:
            os.remove(stem + suffix)
        except FileNotFoundError:
            pass
        except OSError as e:  # e.g. in use on Windows: stays, unreferenced
            logger.warning("teacher-feature cache: could not remove %s%s (%s).", stem, suffix, e)


def _remove_stale_temporaries(cache_dir: str) -> None:
    """Remove temporary files left by builds of this host whose process has ended (killed mid-build)."""
    for name in os.listdir(cache_dir):
        parts = name.split(".")
        if not (name.endswith(".npy.tmp") and len(parts) >= 6 and parts[-6] == _host()):
            continue
        try:
            pid = int(parts[-5])
            os.kill(pid, 0)
        except ProcessLookupError:
            os.remove(os.path.join(cache_dir, name))
        except (ValueError, OSError):
            continue


class CachedTeacherFeaturesd(MapTransform):
    """Adds an item's cached teacher features, for one fixed cached view, to the data.

    Deterministic, so a ``CacheDataset`` caches its output with the loading transforms (for several cached
    views use :class:`RandCachedTeacherFeaturesd`). Place it after the deterministic loading transforms;
    :class:`~monai_rd.engines.RDTrainer` then uses the features instead of running the teacher. With
    ``output="index"`` (the bundles' choice) only the row of the features in the cache goes under ``index_key``
    and the trainer, given the same cache, gathers the batch's features on its own device, so they never cross
    the data loader; ``output="features"`` puts the features themselves under ``feature_key`` (works with any
    trainer that reads that key). When the view has a stored image (several views), the image under ``keys``
    is replaced by it, so student and teacher inputs match. Random augmentation placed after this transform
    changes the student's input but not the cached features; a log line says so once.

    Args:
        keys: the image key (its MetaTensor ``filename_or_obj``, or the raw path, finds the entry).
        cache: a built :class:`TeacherFeatureCache`.
        feature_key: output key of the features (``output="features"``).
        replace_image: put the cached view's image (if stored) under ``keys``.
        output: ``"features"`` or ``"index"``.
        index_key: output key of the cache row (``output="index"``).
        view: the cached view to use.

    Raises:
        ValueError: unknown ``output`` or a view out of range.
    """

    def __init__(
        self,
        keys: KeysCollection,
        cache: TeacherFeatureCache,
        feature_key: str = "teacher_features",
        replace_image: bool = True,
        output: str = "features",
        index_key: str = "teacher_feature_index",
        view: int = 0,
    ) -> None:
        MapTransform.__init__(self, keys)
        if output not in ("features", "index"):
            raise ValueError(f"output must be 'features' or 'index', got {output!r}.")
        if not 0 <= view < cache.views:
            raise ValueError(f"view {view} is out of range for a cache of {cache.views} view(s).")
        self.output = output
        self.index_key = index_key
        self.cache = cache
        self.feature_key = feature_key
        self.replace_image = replace_image
        self._view = view
        self._warned = False

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = _source_path(d[key])
            if self.output == "index":
                d[self.index_key] = self.cache.index(path, self._view)
            if self.output == "features" or (self.replace_image and self.cache.views > 1):
                feats, view_img = self.cache.lookup(path, self._view)
                if self.output == "features":
                    d[self.feature_key] = feats
            else:
                view_img = None
            if view_img is not None and self.replace_image:
                meta = d[key].meta if isinstance(d[key], MetaTensor) else None
                d[key] = MetaTensor(view_img.clone(), meta=meta) if meta is not None else view_img.clone()
        if not self._warned:
            self._warned = True
            logger.info(
                "teacher features come from %d cached view(s); random augmentation applied to the student after "
                "the lookup is not seen by the teacher (set cache_teacher=false for a live teacher every step).",
                self.cache.views,
            )
        return d


class RandCachedTeacherFeaturesd(Randomizable, CachedTeacherFeaturesd):
    """:class:`CachedTeacherFeaturesd` with a random cached view per call (for caches of several views).

    Args:
        keys: the image key.
        cache: a built :class:`TeacherFeatureCache`.
        kwargs: the other :class:`CachedTeacherFeaturesd` arguments except ``view``.
    """

    def __init__(self, keys: KeysCollection, cache: TeacherFeatureCache, **kwargs: Any) -> None:
        CachedTeacherFeaturesd.__init__(self, keys, cache, **kwargs)

    def randomize(self, data: Any = None) -> None:
        self._view = int(self.R.randint(self.cache.views))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        return super().__call__(data)


def build_cache_once(cache: Any, data: Sequence[Mapping]) -> Any:
    """Build a :class:`~monai_rd.data.TeacherFeatureCache` with the teacher run over each image once in all.

    Rank 0 builds it. With ``cache_dir`` the others then build from the same folder, which finds every item in
    rank 0's shard and runs no teacher (the usual key checks: path, content hash, teacher, transforms); a
    ``cache_dir`` that other machines do not share makes their ranks compute the features themselves, with a
    warning. In memory, rank 0 sends its rows (a pickled copy) and the others adopt them.

    Args:
        cache: the bundle's teacher-feature cache.
        data: the training datalist.

    Returns:
        ``cache``, built.

    Raises:
        Exception: rank 0's build error, on every rank.
    """
    if not is_distributed():
        return cache.build(data)
    if cache.cache_dir:
        on_rank0(cache.build, data)
        misses = cache.misses
        cache.build(data)
        if rank() != 0 and cache.misses > misses:
            logger.warning(
                "rank %d: the teacher-feature cache in %s did not hold rank 0's build, so this rank ran the teacher "
                "itself; on several machines put --cache_dir on storage every machine sees, or leave it unset (rank 0 "
                "then sends its in-memory cache).", rank(), cache.cache_dir,
            )
        return cache
    built = on_rank0(cache.build, data)
    if rank() != 0:
        cache.adopt(built)
    return cache
