import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from monai.transforms import Compose, LoadImaged, RandFlipd, RandGaussianNoised, ScaleIntensityd
from monai_rd.data import CachedTeacherFeaturesd, RandCachedTeacherFeaturesd, TeacherFeatureCache
from monai_rd.networks import FrozenTeacher


def _teacher(seed=0):
    torch.manual_seed(seed)
    return FrozenTeacher(nn.Conv2d(3, 4, 3, stride=2), input_size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3, name="tiny")


def _images(tmp_path, n=5):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(p)
        items.append({"image": str(p), "label": i % 2})
    return items


def _base():
    return Compose([LoadImaged("image", image_only=True, ensure_channel_first=True), ScaleIntensityd("image")])


def test_cached_equals_live_for_the_same_view(tmp_path):
    items = _images(tmp_path)
    teacher, base = _teacher(), _base()
    cache = TeacherFeatureCache(teacher, base, dtype=torch.float32, batch_size=2).build(items)
    for it in items:
        live = teacher(base(dict(it))["image"][None])[0]
        cached, img = cache.lookup(it["image"])
        assert img is None
        # batched (build) vs single (live) CPU convolutions may differ in the last bits
        torch.testing.assert_close(cached, live, rtol=1e-5, atol=1e-6)
    half = TeacherFeatureCache(teacher, base, dtype=torch.float16).build(items)
    feats16 = half.lookup(items[0]["image"])[0]
    assert feats16.dtype == torch.float16  # batches cross the loader at half size; the trainer casts
    assert torch.allclose(feats16.float(), cache.lookup(items[0]["image"])[0], atol=1e-2)


def test_augmented_views_are_reproducible_and_match_their_image(tmp_path):
    items = _images(tmp_path, 3)
    teacher = _teacher()
    aug = Compose([RandFlipd("image", prob=0.5, spatial_axis=1), RandGaussianNoised("image", prob=1.0, std=0.1)])
    a = TeacherFeatureCache(teacher, _base(), views=3, augment=aug, dtype=torch.float32).build(items)
    b = TeacherFeatureCache(teacher, _base(), views=3, augment=aug, dtype=torch.float32).build(items)
    path = items[1]["image"]
    for v in range(3):
        fa, ia = a.lookup(path, v)
        fb, ib = b.lookup(path, v)
        assert torch.equal(fa, fb) and torch.equal(ia, ib)
        torch.testing.assert_close(fa, teacher(ia[None])[0], rtol=1e-5, atol=1e-6)
    assert not torch.equal(a.lookup(path, 1)[1], a.lookup(path, 2)[1])
    with pytest.raises(ValueError, match="augment"):
        TeacherFeatureCache(teacher, _base(), views=2)


def test_disk_cache_hits_and_misses_on_change(tmp_path):
    (tmp_path / "data").mkdir()
    items = _images(tmp_path / "data")
    cache_dir = str(tmp_path / "cache")

    def build(teacher=None, transform=None):
        return TeacherFeatureCache(teacher or _teacher(), transform or _base(), cache_dir=cache_dir, dtype=torch.float32).build(items)

    first = build()
    assert (first.hits, first.misses) == (0, len(items))
    again = build()
    assert (again.hits, again.misses) == (len(items), 0)
    assert torch.equal(again.lookup(items[0]["image"])[0], first.lookup(items[0]["image"])[0])
    # a changed image misses, the others still hit
    Image.fromarray(np.zeros((12, 12), dtype=np.uint8) + 7).save(items[2]["image"])
    changed = build()
    assert (changed.hits, changed.misses) == (len(items) - 1, 1)
    live = _teacher()(_base()(dict(items[2]))["image"][None])[0]
    torch.testing.assert_close(changed.lookup(items[2]["image"])[0], live, rtol=1e-5, atol=1e-6)
    # another teacher (other weights) or another transform misses everything
    assert build(teacher=_teacher(seed=1)).misses == len(items)
    other = Compose([LoadImaged("image", image_only=True, ensure_channel_first=True), ScaleIntensityd("image", minv=-1.0, maxv=1.0)])
    assert build(transform=other).misses == len(items)


def test_transform_adds_features_and_reports_unknown_images(tmp_path):
    items = _images(tmp_path, 2)
    base = _base()
    cache = TeacherFeatureCache(_teacher(), base, dtype=torch.float32).build(items[:1])
    lookup = CachedTeacherFeaturesd("image", cache)
    out = lookup(base(dict(items[0])))
    assert torch.equal(out["teacher_features"], cache.lookup(items[0]["image"])[0])
    with pytest.raises(KeyError, match="img1.png"):
        lookup(base(dict(items[1])))


def test_missing_image_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        TeacherFeatureCache(_teacher(), _base(), cache_dir=str(tmp_path)).build([{"image": str(tmp_path / "nowhere.png")}])


def test_index_output_and_gather_serve_the_same_features(tmp_path):
    items = _images(tmp_path, 4)
    base = _base()
    aug = Compose([RandGaussianNoised("image", prob=1.0, std=0.1)])
    cache = TeacherFeatureCache(_teacher(), base, views=2, augment=aug, dtype=torch.float16).build(items)
    rows = [cache.index(it["image"], v) for it in items for v in range(2)]
    assert sorted(rows) == list(range(8))
    got = cache.gather(torch.tensor(rows), "cpu")
    want = torch.stack([cache.lookup(it["image"], v)[0] for it in items for v in range(2)]).float()
    assert got.dtype == torch.float32 and torch.equal(got, want)
    lookup = RandCachedTeacherFeaturesd("image", cache, output="index")
    lookup.set_random_state(0)
    seen = {lookup(base(dict(items[2])))["teacher_feature_index"] for _ in range(20)}
    assert seen == {cache.index(items[2]["image"], 0), cache.index(items[2]["image"], 1)}
    fixed = CachedTeacherFeaturesd("image", cache, output="index", view=1)
    out = fixed(base(dict(items[2])))
    assert out["teacher_feature_index"] == cache.index(items[2]["image"], 1) and "teacher_features" not in out
    # the cached view's image replaces the student's, so both branches see the same input
    assert torch.equal(out["image"], cache.lookup(items[2]["image"], 1)[1])
    with pytest.raises(ValueError, match="out of range"):
        CachedTeacherFeaturesd("image", cache, view=2)
    with pytest.raises(ValueError, match="output"):
        CachedTeacherFeaturesd("image", cache, output="both")
