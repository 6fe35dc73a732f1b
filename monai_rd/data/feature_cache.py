"""Teacher-feature cache: the frozen teacher's features for each training image, computed once and reused.

The teacher is frozen and Phi sits on its outputs, so its forward pass gives the same features every epoch
for the same input view. Computing them once turns the per-step cost of RD into the student's own cost plus
Phi's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import set_determinism

__all__ = ["TeacherFeatureCache", "CachedTeacherFeaturesd", "RandCachedTeacherFeaturesd", "describe_transform", "file_sha256"]

logger = logging.getLogger(__name__)


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes.

    Raises:
        FileNotFoundError: ``path`` does not exist (named in the message).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path!r} listed for the teacher-feature cache does not exist.")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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


def _source_path(value: Any) -> str:
    if isinstance(value, MetaTensor):
        return str(value.meta.get("filename_or_obj", ""))
    return str(value)


class TeacherFeatureCache:
    """Computes and stores a frozen teacher's features for every item of a datalist, ``views`` views each.

    View 0 is the deterministic view: ``transform`` applied to the item. With ``views > 1`` the other views
    come from ``transform`` followed by ``augment``, each seeded by (item, view), so a view is reproducible
    and its image is stored beside its features: the student can then be trained on exactly the view the
    teacher saw (see :class:`CachedTeacherFeaturesd`).

    Features live in memory by default; with ``cache_dir`` each item's features are also written to disk
    (atomically), under a key made of the image's path and SHA-256 content hash, the teacher's
    :meth:`~monai_rd.networks.FrozenTeacher.fingerprint` (weights, feature layer, preprocessing) and the view
    transforms' repr and seed. A changed image, teacher or transform is a different key, so it is never
    served a stale feature.

    Args:
        teacher: the frozen teacher (a :class:`~monai_rd.networks.FrozenTeacher`); called under ``no_grad``.
        transform: deterministic transform producing the teacher's input from a datalist item (a dict).
        image_key: key of the image path in datalist items and of the image after ``transform``.
        views: number of cached views K per item (1 = the deterministic view only).
        augment: random transform applied after ``transform`` for views 1..K-1.
        cache_dir: optional folder for the on-disk cache.
        device: device to run the teacher on.
        batch_size: teacher batch size while building.
        dtype: storage dtype (``torch.float16`` halves memory; ``torch.float32`` stores them exactly).
        autocast: run the teacher under bf16 (CUDA with bf16 support) or fp16 (other CUDA) autocast while
            building; never on CPU, where it is slower.
        seed: base seed of the augmented views.

    Raises:
        ValueError: ``views < 1``, or ``views > 1`` without ``augment``.
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
        self.teacher = teacher
        self.transform = transform
        self.image_key = image_key
        self.views = views
        self.augment = augment
        self.cache_dir = cache_dir
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dtype = dtype
        self.autocast = autocast
        self.seed = seed
        self.features: dict[str, torch.Tensor] = {}  # path -> (K, C_T, *spatial)
        self.view_images: dict[str, torch.Tensor] = {}  # path -> (K, C, *spatial), only when views > 1
        self.hits = 0
        self.misses = 0
        self._teacher_id: str | None = None

    @property
    def teacher_id(self) -> str:
        """The teacher's fingerprint (computed once)."""
        if self._teacher_id is None:
            fp = getattr(self.teacher, "fingerprint", None)
            self._teacher_id = fp() if callable(fp) else type(self.teacher).__name__
        return self._teacher_id

    def key(self, path: str, content_hash: str) -> str:
        """Disk-cache key of one item: path, content, teacher and view transforms."""
        ident = repr(
            (
                os.path.abspath(path),
                content_hash,
                self.teacher_id,
                describe_transform(self.transform),
                describe_transform(self.augment),
                self.views,
                self.seed,
                str(self.dtype),
            )
        )
        return hashlib.sha256(ident.encode()).hexdigest()

    def _disk_path(self, key: str) -> str:
        return os.path.join(self.cache_dir or "", key[:2], f"{key}.pt")

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
        """Fill the cache for every item of ``data`` not cached yet (in memory, then on disk).

        Args:
            data: datalist items with the image path under ``image_key``.

        Returns:
            self.

        Raises:
            FileNotFoundError: an image is missing (named).
            RuntimeError: an image fails in the transform or the teacher (the error names its path).
        """
        was_training = self.teacher.training
        self.teacher.to(self.device).eval()
        todo: list[tuple[int, dict, str]] = []
        for index, item in enumerate(data):
            path = _source_path(item[self.image_key])
            if path in self.features:
                continue
            key = self.key(path, file_sha256(path)) if self.cache_dir else ""
            if self.cache_dir and os.path.isfile(self._disk_path(key)):
                saved = torch.load(self._disk_path(key), map_location="cpu", weights_only=True)
                self.features[path] = saved["features"]
                if "views" in saved:
                    self.view_images[path] = saved["views"]
                self.hits += 1
                continue
            self.misses += 1
            todo.append((index, dict(item), key))
        for view in range(self.views):
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                images = []
                for index, item, _ in chunk:
                    try:
                        images.append(self._view(item, index, view))
                    except Exception as e:
                        raise RuntimeError(f"teacher-feature cache: failed to prepare {item[self.image_key]}: {e}") from e
                feats = self._run_teacher(images).to(self.dtype)
                for (_, item, _), f, img in zip(chunk, feats, images):
                    path = _source_path(item[self.image_key])
                    self.features.setdefault(path, torch.empty(self.views, *f.shape, dtype=self.dtype))[view] = f
                    if self.views > 1:
                        self.view_images.setdefault(path, torch.empty(self.views, *img.shape))[view] = img
        if self.cache_dir:
            for _, item, key in todo:
                path = _source_path(item[self.image_key])
                entry = {"features": self.features[path]}
                if self.views > 1:
                    entry["views"] = self.view_images[path]
                self._save_atomic(entry, self._disk_path(key))
        self.teacher.train(was_training)
        logger.info(
            "teacher-feature cache: %d items x %d view(s), %d computed, %d read from disk, %.1f MB in memory",
            len(self.features), self.views, self.misses, self.hits, self.nbytes / 2**20,
        )
        return self

    @staticmethod
    def _save_atomic(obj: dict, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        os.close(fd)
        try:
            torch.save(obj, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @property
    def nbytes(self) -> int:
        """Bytes held in memory."""
        return sum(t.numel() * t.element_size() for t in self.features.values()) + sum(
            t.numel() * t.element_size() for t in self.view_images.values()
        )

    def __contains__(self, path: str) -> bool:
        return path in self.features

    def index(self, path: str, view: int = 0) -> int:
        """Row of (``path``, ``view``) in the stacked cache that :meth:`gather` reads.

        Raises:
            KeyError: the image was not cached.
        """
        self._stack_rows()
        if path not in self._row:
            raise KeyError(
                f"{path!r} is not in the teacher-feature cache; call build() on a datalist that contains it "
                "(or train with the live teacher)."
            )
        return self._row[path] * self.views + view

    def _stack_rows(self) -> None:
        # one (N * K, C_T, *spatial) tensor, so a batch is one indexed read on the trainer's device; the per-path
        # entries become views of it, so memory is not doubled
        if getattr(self, "_stack", None) is not None and len(self._row) == len(self.features):
            return
        paths = list(self.features)
        stack = torch.stack([self.features[p] for p in paths]) if paths else torch.empty(0)
        self._stack = stack.reshape(len(paths) * self.views, *stack.shape[2:]) if paths else stack
        self._row = {p: i for i, p in enumerate(paths)}
        for i, p in enumerate(paths):
            self.features[p] = self._stack[i * self.views : (i + 1) * self.views]
        self._on_device: dict[str, torch.Tensor] = {}

    def gather(self, rows: torch.Tensor, device: str | torch.device) -> torch.Tensor:
        """Features of a batch by row index (from :meth:`index`), read on ``device`` in float32.

        The stacked cache is copied to ``device`` once (70 MB for the demo) and batches are gathered there, so
        on a GPU the features never cross the data loader or the host-to-device copy.

        Args:
            rows: (B,) integer rows.
            device: the trainer's device.

        Returns:
            (B, C_T, *spatial) float32 tensor on ``device``.
        """
        self._stack_rows()
        dev = torch.device(device)
        key = str(dev)
        if key not in self._on_device:
            self._on_device[key] = self._stack.to(dev)
        table = self._on_device[key]
        return table.index_select(0, torch.as_tensor(rows).reshape(-1).to(dev, dtype=torch.long)).float()

    def lookup(self, path: str, view: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features (and, with several views, the view's image) of one image.

        Args:
            path: the image path as given in the datalist.
            view: view index in [0, views).

        Returns:
            ``(features (C_T, *spatial) in the storage dtype, view image (C, *spatial) or None)``; features stay
            in the storage dtype so batches cross the data loader at that size (the trainer casts them to
            float32 on its device).

        Raises:
            KeyError: the image was not cached (names it and says to call ``build``).
        """
        if path not in self.features:
            raise KeyError(
                f"{path!r} is not in the teacher-feature cache; call build() on a datalist that contains it "
                "(or train with the live teacher)."
            )
        img = self.view_images[path][view] if self.views > 1 else None
        return self.features[path][view], img


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
