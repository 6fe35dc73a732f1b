"""The DRD method objects (``--method drd`` and its ablations) on tiny teachers and students: options, stage pairing,
the projectors, the stage-map cache (its maps, its key, its pooling, its size logged before it is built)."""

from __future__ import annotations

import functools
import logging

import pytest
import torch
import torch.nn as nn

from monai_rd.bundle.options import ClassificationOptions, SegmentationOptions
from monai_rd.data import TeacherFeatureCache
from monai_rd.errors import OptionError
from monai_rd.methods import DRD, DenseDRD, create_method, list_methods
from monai_rd.networks import FrozenTeacher, SegmentationStudent, StageProjector, StudentClassifier
from monai_rd.networks.stage_taps import HookTaps

SIZE = 32
ABLATIONS = ("drd", "drd_last", "drd_no_hybrid", "drd_no_kl")
IMAGES = {f"/virtual/img{i}.png": torch.rand(1, SIZE, SIZE, generator=torch.Generator().manual_seed(i))
          for i in range(6)}


def _teacher(num_taps=4):
    """A BatchNorm CNN at 64 px (twice the images'), so its maps are larger than the student's stages at 32 px."""
    torch.manual_seed(0)
    widths = [1, 4, 6, 8, 10][: num_taps + 1]
    blocks = [nn.Sequential(nn.Conv2d(i, o, 3, stride=2, padding=1), nn.BatchNorm2d(o), nn.ReLU())
              for i, o in zip(widths, widths[1:])]
    return FrozenTeacher(nn.Sequential(*blocks), input_size=(2 * SIZE, 2 * SIZE), mean=(0.5,), std=(0.5,),
                         in_channels=1, stage_taps=HookTaps([str(k) for k in range(num_taps)]))


def _load(item):
    return {**item, "image": IMAGES[item["image"]]}


DATALIST = {"training": [{"image": p, "label": i % 3} for i, p in enumerate(IMAGES)], "validation": []}


def _options(method="drd", **kw):
    return ClassificationOptions(class_names=["a", "b", "c"], image_size=SIZE, in_channels=1, batch_size=4, epochs=1,
                                 method=method, **kw)


def _method(options, num_taps=4):
    return create_method(options, teacher=functools.partial(_teacher, num_taps),
                         feature_cache=functools.partial(TeacherFeatureCache), device="cpu")


def _student(seed=1):
    torch.manual_seed(seed)
    return StudentClassifier("monai:resnet10", num_classes=3, in_channels=1, spatial_dims=2, widen_factor=0.25)


def _deployed(method="drd", num_taps=4, **kw):
    m = _method(_options(method, **kw), num_taps)
    m.prepare(DATALIST, [_load], [])
    m.deploy(_student())
    return m


def test_methods_registered_for_both_tasks_with_their_fixed_weights():
    """Every DRD variant exists for classification and segmentation; drd_no_kl fixes beta (start and end) to 0 and
    drd_no_hybrid alpha and beta, whatever the command line says; drd keeps them."""
    for task in ("classification", "segmentation"):
        assert set(ABLATIONS) <= set(list_methods(task))
    no_kl = _options("drd_no_kl", beta_start=0.8, beta_end=0.5)
    assert (no_kl.beta_start, no_kl.beta_end, no_kl.alpha_start) == (0.0, 0.0, 1.0)
    no_hybrid = _options("drd_no_hybrid")
    assert (no_hybrid.alpha_start, no_hybrid.alpha_end, no_hybrid.beta_start, no_hybrid.beta_end) == (0, 0, 0, 0)
    assert _options("drd", beta_start=0.8).beta_start == 0.8
    assert isinstance(_method(_options()), DRD) and not isinstance(_method(_options()), DenseDRD)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"drd_hybrid_bn": "eval"}, "--drd_hybrid_bn must be one of batch, track"),
        ({"drd_stages": "[1, -1]"}, r"drd_stages\[1\]"),
        ({"drd_hidden": 0}, "drd_hidden"),
        ({"method": "drd_last", "drd_stages": [2]}, "uses the student's last stage; drop --drd_stages"),
        ({"cache_views": 2}, "caches one view of each image"),
        ({"method": "drd_no_hybrid", "gamma": 0}, "--gamma 0 leaves nothing"),
    ],
)
def test_bad_options_stop_before_any_work(kwargs, message):
    """Each bad value stops with a message naming the option (not later, inside training)."""
    with pytest.raises(OptionError, match=message):
        _method(_options(**kwargs))


def test_deploy_builds_projectors_and_a_cache_of_the_live_teachers_maps():
    """After deploy: one projector per stage from the teacher's channels to the student's stage shapes, a cache
    whose rows unpack to the live teacher's maps pooled to the student's stage sizes (float16 tolerance), the
    student itself deployed (state_dict keys of a plain student), the projectors checkpointed, per-stage keys."""
    m = _deployed()
    student = m.network
    shapes = student.stage_shapes((SIZE, SIZE))
    assert m.stages == m.levels == (0, 1, 2, 3)
    assert [(p.in_channels, p.out_channels, p.out_size) for p in m.projectors] == [
        (c, s[0], s[1:]) for c, s in zip((4, 6, 8, 10), shapes)
    ]
    assert student.state_dict().keys() == _student().state_dict().keys()
    assert m.checkpoint_parts() == {"projectors": m.projectors}
    assert {id(p) for p in m.parameters()} >= {id(p) for p in m.projectors.parameters()}
    assert m.loss_keys[:5] == ("loss", "ce_student", "ce_hybrid", "kd", "cka") and "cka_stage3" in m.loss_keys
    paths = list(IMAGES)
    cached = m.teacher.unpack(m.cache.gather([m.cache.index(p) for p in paths], "cpu"))
    live = m.teacher.teacher.stage_maps(torch.stack([IMAGES[p] for p in paths]))
    for c, f, s in zip(cached, live, shapes):
        assert c.shape[2:] == s[1:]
        torch.testing.assert_close(c, torch.nn.functional.adaptive_avg_pool2d(f, s[1:]), rtol=1e-3, atol=1e-3)


def test_the_stage_selection_and_pooling_key_the_cache():
    """Caches of other stages (drd, --drd_stages, drd_last) or unpooled maps get other keys and hold only the taps
    they need; the same settings get the same key (a cache is reused)."""
    runs = {
        "all": _deployed(),
        "again": _deployed(),
        "two": _deployed(drd_stages=[1, 3]),
        "last": _deployed("drd_last"),
        "unpooled": _deployed(drd_cache_pool=False),
    }
    keys = {name: m.cache.config_id for name, m in runs.items()}
    assert keys["all"] == keys["again"]
    assert len({keys[k] for k in ("all", "two", "last", "unpooled")}) == 4
    assert runs["two"].teacher.stage_names == ("1", "3") and runs["last"].teacher.stage_names == ("3",)
    assert runs["last"].stages == (3,) and len(runs["last"].projectors) == 1
    assert runs["unpooled"].teacher.stage_shapes == ((4, 32, 32), (6, 16, 16), (8, 8, 8), (10, 4, 4))
    assert runs["all"].teacher.numel < runs["unpooled"].teacher.numel


def test_a_live_teacher_packs_the_same_maps_without_a_cache():
    """--cache_teacher false: no cache is built and the trainer gets the packing teacher (pooled the same way), so
    a live run trains on the maps a cached run would."""
    m = _deployed(cache_teacher=False)
    cached = _deployed()
    kwargs = m.trainer_kwargs()
    assert m.cache is None and kwargs["feature_cache"] is None
    assert kwargs["teacher"] is m.teacher and m.teacher.stage_shapes == cached.teacher.stage_shapes
    assert m.teacher.fingerprint() == cached.teacher.fingerprint()


def test_stages_are_paired_deepest_first():
    """A teacher with 3 taps and a student with 4 stages: student stages 1..3 take taps 0..2 (the deepest of each
    aligned); asking for stage 0, which has no tap, is refused naming the stages that can be distilled."""
    m = _deployed(num_taps=3)
    assert m.stages == (1, 2, 3) and m.teacher.stage_names == ("0", "1", "2")
    assert [p.in_channels for p in m.projectors] == [4, 6, 8]
    with pytest.raises(OptionError, match=r"stages \[1, 2, 3\] can be distilled"):
        _deployed(num_taps=3, drd_stages=[0, 1])


def test_a_pooled_cache_gives_the_projector_the_same_maps():
    """What --drd_cache_pool trades with the current projector: nothing. phi_i pools a larger map with the same
    adaptive average pooling first, so phi_i(full map) equals phi_i(pooled map); a projector that reduced the map
    otherwise (e.g. a strided convolution) would make the pooled cache change results and fails here."""
    torch.manual_seed(0)
    phi = StageProjector(6, 5, spatial_dims=2, out_size=(4, 3))
    full = torch.randn(2, 6, 13, 9)
    pooled = torch.nn.functional.adaptive_avg_pool2d(full, (4, 3))
    torch.testing.assert_close(phi(pooled), phi(full), rtol=0, atol=1e-6)


def test_the_cache_size_is_logged_before_it_is_built(caplog):
    """The log names images, bytes per image (float16: 2 per value), the total and where it lives, before the
    cache's own build line (which comes after the teacher ran)."""
    with caplog.at_level(logging.INFO):
        m = _deployed()
    messages = [r.getMessage() for r in caplog.records]
    plan = next(i for i, s in enumerate(messages) if s.startswith("DRD stage-map cache:"))
    built = next(i for i, s in enumerate(messages) if s.startswith("teacher-feature cache:"))
    assert plan < built
    per_image = m.teacher.numel * 2
    assert f"6 images x {per_image / 1024:.1f} KiB" in messages[plan] and "in memory (RAM)" in messages[plan]
    assert f"= {6 * per_image / 2**20:.1f} MiB" in messages[plan]


# ------------------------------------------------------------------------------------------------ segmentation
LABELS = {p: (x * 2.999).long() for p, x in IMAGES.items()}
SEG_DATALIST = {"training": [{"image": p, "label": p} for p in IMAGES], "validation": []}


def _load_seg(item):
    return {**item, "image": IMAGES[item["image"]], "label": LABELS[item["label"]]}


def _seg_method(method="drd", num_taps=3, channels=(4, 8, 16), **kw):
    options = SegmentationOptions(class_names=["bg", "a", "b"], spatial_dims=2, roi_size=[SIZE, SIZE], method=method,
                                  teacher_input_size=[SIZE, SIZE], student_channels=list(channels),
                                  student_strides=[2] * (len(channels) - 1), **kw)
    m = _method(options, num_taps)
    m.prepare(SEG_DATALIST, [_load_seg], [])
    torch.manual_seed(1)
    m.deploy(SegmentationStudent("unet", num_classes=3, spatial_dims=2, channels=channels,
                                 strides=[2] * (len(channels) - 1)))
    return m


def test_segmentation_hybrid_paths_project_every_shallower_level():
    """DenseDRD: with hybrid paths the deepest distilled level i brings projectors for levels 0..i (their skips
    come from the teacher), so drd_last projects all three levels; without hybrid paths only the distilled ones.
    The stage shapes are taken at the first training image's size."""
    last = _seg_method("drd_last")
    assert isinstance(last, DenseDRD) and last.stages == (2,) and last.levels == (0, 1, 2)
    assert [p.out_size for p in last.projectors] == [s[1:] for s in last.network.stage_shapes((SIZE, SIZE))]
    no_hybrid = _seg_method("drd_no_hybrid", drd_stages=[2])
    assert no_hybrid.levels == (2,) and len(no_hybrid.projectors) == 1
    assert _seg_method("drd_no_hybrid", num_taps=2).stages == (1, 2)
    with pytest.raises(OptionError, match="give the teacher one tap per level"):
        _seg_method("drd", num_taps=2)
