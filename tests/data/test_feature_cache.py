import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.transforms import Compose, LoadImaged, RandFlipd, RandGaussianNoised, ScaleIntensityd
from PIL import Image

from monai_rd.data import CachedTeacherFeaturesd, RandCachedTeacherFeaturesd, TeacherFeatureCache
from monai_rd.networks import FrozenTeacher


def _teacher(seed=0):
    torch.manual_seed(seed)
    return FrozenTeacher(
        nn.Conv2d(3, 4, 3, stride=2), input_size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3, name="tiny"
    )


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
        return TeacherFeatureCache(
            teacher or _teacher(), transform or _base(), cache_dir=cache_dir, dtype=torch.float32
        ).build(items)

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
    other = Compose(
        [LoadImaged("image", image_only=True, ensure_channel_first=True), ScaleIntensityd("image", minv=-1.0, maxv=1.0)]
    )
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
        TeacherFeatureCache(_teacher(), _base(), cache_dir=str(tmp_path)).build(
            [{"image": str(tmp_path / "nowhere.png")}]
        )


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


def _full_tensors(cache, n_rows):
    """Torch tensors of ``n_rows`` rows held by ``cache`` (directly or in a dict attribute)."""
    found = []
    for value in vars(cache).values():
        for v in value.values() if isinstance(value, dict) else [value]:
            if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n_rows:
                found.append(v)
    return found


def _counting(teacher):
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    return teacher, calls


def test_disk_cache_is_memory_mapped_equals_live_and_is_built_once(tmp_path):
    (tmp_path / "data").mkdir()
    items = _images(tmp_path / "data", 6)
    teacher, calls = _counting(_teacher())
    base = _base()
    cache = TeacherFeatureCache(teacher, base, cache_dir=str(tmp_path / "cache"), dtype=torch.float32, batch_size=4)
    cache.build(items)
    assert calls and (cache.hits, cache.misses) == (0, 6)
    # the rows live in a memory-mapped file, not in a tensor of every row (the stack the old gather moved)
    assert any(isinstance(v, np.memmap) and v.shape[0] == 6 for v in vars(cache).values())
    assert not _full_tensors(cache, 6)
    rows = torch.tensor([cache.index(items[i]["image"]) for i in (4, 1, 4, 0)])
    got = cache.gather(rows, "cpu")
    assert got.shape == (4, 4, 7, 7) and got.dtype == torch.float32
    live = teacher(torch.stack([base(dict(items[i]))["image"] for i in (4, 1, 4, 0)]))
    torch.testing.assert_close(got, live, rtol=1e-5, atol=1e-6)
    assert not _full_tensors(cache, 6)  # gathering did not materialise the stack either
    # a second build (a new process, another run) reads the file and never runs the teacher
    n_calls = len(calls)
    again = TeacherFeatureCache(teacher, base, cache_dir=str(tmp_path / "cache"), dtype=torch.float32).build(items)
    assert len(calls) == n_calls and (again.hits, again.misses) == (6, 0)
    assert torch.equal(again.gather(rows, "cpu"), got)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_disk_and_memory_caches_store_the_same_rows(tmp_path, dtype):
    items = _images(tmp_path, 4)
    aug = Compose([RandFlipd("image", prob=0.5, spatial_axis=1), RandGaussianNoised("image", prob=1.0, std=0.1)])
    mem = TeacherFeatureCache(_teacher(), _base(), views=2, augment=aug, dtype=dtype, batch_size=3).build(items)
    disk = TeacherFeatureCache(
        _teacher(), _base(), views=2, augment=aug, dtype=dtype, batch_size=3, cache_dir=str(tmp_path / "c")
    ).build(items)
    for it in items:
        for v in range(2):
            fm, im = mem.lookup(it["image"], v)
            fd, imd = disk.lookup(it["image"], v)
            assert fd.dtype == dtype and torch.equal(fm, fd) and torch.equal(im, imd)
            assert disk.index(it["image"], v) == mem.index(it["image"], v)
    rows = torch.randperm(8)
    assert torch.equal(disk.gather(rows, "cpu"), mem.gather(rows, "cpu"))


def test_paths_normalise_to_one_entry(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    items = _images(tmp_path / "data", 3)
    (tmp_path / "link.png").symlink_to(items[1]["image"])
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "data")
    cache = TeacherFeatureCache(_teacher(), _base(), cache_dir=str(tmp_path / "cache")).build(items)
    row = cache.index(items[1]["image"])
    for form in ("./img1.png", "img1.png", "~/data/img1.png", "../data/img1.png", str(tmp_path / "link.png")):
        assert form in cache and cache.index(form) == row
        assert torch.equal(cache.lookup(form)[0], cache.lookup(items[1]["image"])[0])
    assert cache.index("img2.png") != row
    # relative, duplicated and absolute forms of one datalist are one set of keys on disk
    relative = [{"image": f"./img{i}.png"} for i in range(3)] + [{"image": "~/data/img0.png"}]
    again = TeacherFeatureCache(_teacher(), _base(), cache_dir=str(tmp_path / "cache")).build(relative)
    assert (again.hits, again.misses, len(again)) == (3, 0, 3)


def test_shuffled_multiworker_loader_gathers_each_batch_its_own_features(tmp_path):
    from monai.data import DataLoader, Dataset

    items = _images(tmp_path, 10)
    teacher, base = _teacher(), _base()
    cache = TeacherFeatureCache(teacher, base, cache_dir=str(tmp_path / "cache"), dtype=torch.float32, batch_size=4)
    cache.build(items)
    transform = Compose(
        [
            base,
            CachedTeacherFeaturesd("image", cache, output="index"),
            CachedTeacherFeaturesd("image", cache, output="features", feature_key="features"),
        ]
    )
    loader = DataLoader(
        Dataset(items, transform), batch_size=3, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(1)
    )
    order = []
    for batch in loader:
        gathered = cache.gather(batch["teacher_feature_index"], "cpu")
        live = teacher(batch["image"].as_tensor())
        torch.testing.assert_close(gathered, live, rtol=1e-5, atol=1e-6)
        assert torch.equal(batch["features"], gathered)  # read from the memmap in the workers
        order += batch["teacher_feature_index"].tolist()
    assert sorted(order) == list(range(10)) and order != sorted(order)  # every row once, shuffled


def test_pickled_copy_is_small_serves_the_same_rows_and_cannot_build(tmp_path):
    import pickle

    items = _images(tmp_path, 6)
    teacher = FrozenTeacher(nn.Conv2d(3, 64, 3, stride=2), input_size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    cache = TeacherFeatureCache(teacher, _base(), cache_dir=str(tmp_path / "cache")).build(items[:5])
    blob = pickle.dumps(cache)
    assert len(blob) < cache.nbytes / 4  # neither the rows nor the teacher are pickled
    copy = pickle.loads(blob)
    assert copy.teacher is None
    rows = torch.tensor([4, 0, 2])
    assert torch.equal(copy.gather(rows, "cpu"), cache.gather(rows, "cpu"))
    assert copy.index(items[3]["image"]) == cache.index(items[3]["image"])
    copy.build(items[:5])  # nothing to add: fine
    with pytest.raises(RuntimeError, match="img5.png"):
        copy.build(items)


def test_interrupted_build_leaves_nothing_a_rebuild_trusts(tmp_path, monkeypatch):
    import monai_rd.data.feature_cache as feature_cache

    items = _images(tmp_path, 6)
    cache_dir = tmp_path / "cache"
    teacher = _teacher()

    def fail_on_second_batch(module, args):
        fail_on_second_batch.calls += 1
        if fail_on_second_batch.calls == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises mid-build

    fail_on_second_batch.calls = 0
    hook = teacher.register_forward_pre_hook(fail_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        TeacherFeatureCache(teacher, _base(), cache_dir=str(cache_dir), batch_size=4).build(items)
    hook.remove()
    assert sorted(p.name for p in cache_dir.iterdir()) == []  # the half-written arrays are gone
    # the arrays renamed but the manifest (the commit point) not written: the arrays are not trusted
    with monkeypatch.context() as m:
        m.setattr(feature_cache, "write_json_atomic", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.raises(OSError, match="disk full"):
            TeacherFeatureCache(teacher, _base(), cache_dir=str(cache_dir), batch_size=4).build(items)
    assert not list(cache_dir.glob("*.json"))
    good = TeacherFeatureCache(teacher, _base(), cache_dir=str(cache_dir), dtype=torch.float32).build(items)
    assert (good.hits, good.misses) == (0, 6)
    live = teacher(_base()(dict(items[5]))["image"][None])[0]
    torch.testing.assert_close(good.lookup(items[5]["image"])[0], live, rtol=1e-5, atol=1e-6)
    # a shard whose array no longer matches its manifest (truncated, overwritten) is not trusted either
    (features,) = cache_dir.glob("*.features.npy")
    np.save(features, np.zeros((3, 4, 7, 7), np.float32))
    rebuilt = TeacherFeatureCache(teacher, _base(), cache_dir=str(cache_dir), dtype=torch.float32).build(items)
    assert (rebuilt.hits, rebuilt.misses) == (0, 6)
    torch.testing.assert_close(rebuilt.lookup(items[5]["image"])[0], live, rtol=1e-5, atol=1e-6)


def test_killed_builds_temporary_files_are_removed(tmp_path):
    import monai_rd.data.feature_cache as feature_cache

    items = _images(tmp_path, 2)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    host = feature_cache._host()
    dead = cache_dir / f"0123456789abcdef-0123456789abcdef.{host}.{2**22 + 1}.x1y2z3.features.npy.tmp"  # > pid_max
    alive = cache_dir / f"0123456789abcdef-0123456789abcdef.{host}.{os.getpid()}.x1y2z3.features.npy.tmp"
    dead.write_bytes(b"partial")
    alive.write_bytes(b"partial")
    TeacherFeatureCache(_teacher(), _base(), cache_dir=str(cache_dir)).build(items)
    assert not dead.exists() and alive.exists()  # another build of this process may still be writing it


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_later_build_keeps_earlier_rows_and_supersedes_the_old_shard(tmp_path, on_disk):
    items = _images(tmp_path, 5)
    cache_dir = str(tmp_path / "cache") if on_disk else None
    teacher = _teacher()
    cache = TeacherFeatureCache(teacher, _base(), cache_dir=cache_dir, dtype=torch.float32, batch_size=2)
    cache.build(items[:3])
    before = {it["image"]: cache.index(it["image"]) for it in items[:3]}
    feats = cache.gather(torch.tensor(list(before.values())), "cpu")
    cache.build(items[::-1])
    assert len(cache) == 5 and {p: cache.index(p) for p in before} == before  # rows handed out stay valid
    assert torch.equal(cache.gather(torch.tensor(list(before.values())), "cpu"), feats)
    live = teacher(_base()(dict(items[4]))["image"][None])[0]
    torch.testing.assert_close(cache.lookup(items[4]["image"])[0], live, rtol=1e-5, atol=1e-6)
    if on_disk:
        assert len(list((tmp_path / "cache").glob("*.json"))) == 1  # the 3-item shard was superseded
        assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_gather_names_rows_outside_the_cache(tmp_path):
    cache = TeacherFeatureCache(_teacher(), _base()).build(_images(tmp_path, 2))
    with pytest.raises(IndexError, match="outside its 2 rows"):
        cache.gather(torch.tensor([0, 2]), "cpu")
