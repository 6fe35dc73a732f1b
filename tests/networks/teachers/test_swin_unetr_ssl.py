"""The named 3D CT teacher swin-unetr-ssl: a checkpoint in the published ``model_swinvit.pt`` layout (tiny
feature_size, written here), cross-checked against MONAI's own ``SwinUNETR.load_from``; strict loading, freezing,
the encoder-only forward, the fingerprint, the intensity window and the offline message. (The real file cannot be
downloaded in CI.)"""

from __future__ import annotations

import monai.networks.nets as nets
import pytest
import torch
import torch.nn as nn
from monai.networks.nets import SwinUNETR

from monai_rd.networks import FrozenTeacher, create_teacher
from monai_rd.networks.teachers.checkpoint import CheckpointKeyError, WeightsUnavailableError, copy_into_cache
from monai_rd.networks.teachers.registry import get_teacher_spec
from monai_rd.networks.teachers.swin_unetr_ssl import SWIN_UNETR_SSL_URL

NAME = "swin-unetr-ssl"
FS = 12  # feature_size: the published file has 48; 12 keeps the test at seconds on a CPU
SIZE = (64, 32, 32)  # each side a multiple of 32; 64 makes the /32 map more than one voxel deep
DECODER = ("encoder1", "encoder2", "encoder3", "encoder4", "encoder10", "decoder5", "decoder4", "decoder3", "decoder2",
           "decoder1", "out")


def _published_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random SwinUNETR encoder written in the published layout: DDP 'module.' prefix, timm 'mlp.fc1/fc2' names."""
    torch.manual_seed(seed)
    encoder = SwinUNETR(in_channels=1, out_channels=1, feature_size=FS).swinViT
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in encoder.state_dict().items():
        if value.dtype.is_floating_point:  # non-default values everywhere (LayerNorms start at 1/0)
            value = torch.randn(value.shape, generator=g) * 0.1 + (1.0 if key.endswith("norm1.weight") else 0.0)
        published = key.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
        state[f"module.{published}"] = value.clone()
    # names and shapes of the published file (read by SwinUNETR.load_from), independent of the loader under test
    assert state["module.patch_embed.proj.weight"].shape == (FS, 1, 2, 2, 2)
    assert state["module.layers1.0.blocks.0.mlp.fc1.weight"].shape == (4 * FS, FS)
    assert state["module.layers1.0.blocks.1.attn.relative_position_bias_table"].shape == (13**3, 3)
    assert state["module.layers4.0.downsample.reduction.weight"].shape == (16 * FS, 64 * FS)
    assert len(state) == 126
    return state


def _write(path, state) -> str:
    torch.save({"state_dict": state}, path)
    return str(path)


def _teacher(path, **kwargs) -> FrozenTeacher:
    return create_teacher(NAME, weights=path, feature_size=FS, input_size=SIZE, **kwargs)


def _reference(path) -> SwinUNETR:
    """MONAI's own loader of the published file."""
    net = SwinUNETR(in_channels=1, out_channels=1, feature_size=FS)
    net.load_from(torch.load(path, weights_only=True))
    return net.eval()


def test_spec_records_the_ct_preprocessing_beside_the_teacher():
    spec = get_teacher_spec(NAME)
    assert spec.intensity_range == (-1000.0, 1000.0) and spec.axcodes == "RAS"  # SwinUNETR/Pretrain defaults
    assert spec.input_size == (96, 96, 96) and spec.out_channels == 768  # 16 * feature_size 48
    assert spec.mean == (0.0,) and spec.std == (1.0,)
    assert spec.weights_file == "model_swinvit.pt" and SWIN_UNETR_SSL_URL in spec.source
    assert SWIN_UNETR_SSL_URL.endswith("/releases/download/0.8.1/model_swinvit.pt")


def test_published_layout_loads_like_monai_load_from(tmp_path):
    path = _write(tmp_path / "model_swinvit.pt", _published_state())
    teacher = _teacher(path)
    reference = _reference(path)
    assert isinstance(teacher, FrozenTeacher) and teacher.name == NAME
    loaded, expected = teacher.model.encoder.state_dict(), reference.swinViT.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert torch.equal(loaded["layers2.0.blocks.1.mlp.linear2.bias"],
                       torch.load(path, weights_only=True)["state_dict"]["module.layers2.0.blocks.1.mlp.fc2.bias"])

    x = torch.rand(2, 1, *SIZE, generator=torch.Generator().manual_seed(1))
    y = teacher(x)
    assert y.shape == (2, 16 * FS, SIZE[0] // 32, SIZE[1] // 32, SIZE[2] // 32) and y.dtype == torch.float32
    assert teacher.out_channels == 16 * FS
    with torch.no_grad():
        expected_map = reference.swinViT(x, normalize=True)[4]  # what SwinUNETR.forward feeds its bottleneck
    assert torch.allclose(y, expected_map, atol=1e-5)
    # any input size is resized to the native one
    assert teacher(torch.rand(1, 1, 40, 30, 20)).shape == (1, 16 * FS, 2, 1, 1)


def test_teacher_is_frozen(tmp_path):
    teacher = _teacher(_write(tmp_path / "model_swinvit.pt", _published_state()))
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.model.training and not any(m.training for m in teacher.model.modules())
    with torch.enable_grad():
        assert teacher(torch.rand(1, 1, *SIZE)).grad_fn is None


def test_decoder_is_never_built_into_the_teacher_nor_run(tmp_path, monkeypatch):
    calls: list[str] = []
    built: list[nn.Module] = []

    class Spy(SwinUNETR):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)
            for name in DECODER:
                getattr(self, name).register_forward_hook(lambda m, a, o, name=name: calls.append(name))

        def forward(self, x):
            calls.append("SwinUNETR.forward")
            return super().forward(x)

    monkeypatch.setattr(nets, "SwinUNETR", Spy)
    teacher = _teacher(_write(tmp_path / "model_swinvit.pt", _published_state()))
    teacher(torch.rand(1, 1, *SIZE))
    assert len(built) == 1 and calls == []
    # the teacher holds the encoder only: the (random) decoder is neither run nor part of the fingerprint
    assert {n.split(".")[0] for n, _ in teacher.model.named_parameters()} == {"encoder"}
    assert sum(p.numel() for p in teacher.parameters()) == sum(p.numel() for p in built[0].swinViT.parameters())


def test_dropped_or_renamed_key_is_refused_by_name(tmp_path):
    state = _published_state()
    dropped = dict(state)
    del dropped["module.layers2.0.blocks.1.attn.qkv.bias"]
    with pytest.raises(CheckpointKeyError, match=r"1 missing key\(s\) \[layers2\.0\.blocks\.1\.attn\.qkv\.bias\]"):
        _teacher(_write(tmp_path / "dropped.pt", dropped))

    renamed = dict(state)
    renamed["module.layers3.0.downsample.norm.gamma"] = renamed.pop("module.layers3.0.downsample.norm.weight")
    match = r"missing.*layers3\.0\.downsample\.norm\.weight.*unexpected.*norm\.gamma"
    with pytest.raises(CheckpointKeyError, match=match):
        _teacher(_write(tmp_path / "renamed.pt", renamed))

    # the SSL heads of the pre-training model are documented as not part of the encoder; anything else is refused
    with_heads = dict(state, **{"module.rotation_head.weight": torch.zeros(4, 16 * FS),
                                "module.contrastive_head.bias": torch.zeros(512)})
    _teacher(_write(tmp_path / "heads.pt", with_heads))
    with pytest.raises(CheckpointKeyError, match=r"unexpected key\(s\) \[decoder1\.weight\]"):
        _teacher(_write(tmp_path / "other.pt", dict(state, **{"module.decoder1.weight": torch.zeros(1)})))


def test_pretraining_and_swin_unetr_checkpoints_give_the_same_encoder(tmp_path):
    state = _published_state()
    published = _teacher(_write(tmp_path / "model_swinvit.pt", state))
    # research-contributions' SSLHead trained with DDP: module.swin_vit.* plus its heads
    ssl_head = {k.replace("module.", "module.swin_vit.", 1): v for k, v in state.items()}
    ssl_head["module.conv.0.weight"] = torch.zeros(2, 2)
    from_ssl_head = _teacher(_write(tmp_path / "ssl_head.pt", ssl_head))
    # a whole SwinUNETR state_dict (e.g. a fine-tuned model): swinViT.* plus the decoder
    net = _reference(tmp_path / "model_swinvit.pt")
    from_swin_unetr = _teacher(_write(tmp_path / "swin_unetr.pt", net.state_dict()))
    assert published.fingerprint() == from_ssl_head.fingerprint() == from_swin_unetr.fingerprint()


def test_fingerprint_follows_weights_stage_and_window(tmp_path):
    state = _published_state()
    path = _write(tmp_path / "a.pt", state)
    base = _teacher(path)
    assert _teacher(path).fingerprint() == base.fingerprint()  # deterministic: no random decoder inside
    changed = dict(state)
    changed["module.layers4.0.blocks.1.norm2.bias"] = changed["module.layers4.0.blocks.1.norm2.bias"] + 1e-3
    assert _teacher(_write(tmp_path / "b.pt", changed)).fingerprint() != base.fingerprint()

    stage3 = _teacher(path, stage=3)
    assert stage3.name == f"{NAME}@swinViT[3]" and stage3.fingerprint() != base.fingerprint()
    assert stage3(torch.rand(1, 1, *SIZE)).shape == (1, 8 * FS, SIZE[0] // 16, SIZE[1] // 16, SIZE[2] // 16)
    raw = _teacher(path, normalize=False)
    assert raw.fingerprint() != base.fingerprint()
    x = torch.rand(1, 1, *SIZE)
    assert not torch.allclose(raw(x), base(x))
    assert _teacher(path, data_intensity_range=(-175, 250)).fingerprint() != base.fingerprint()


def test_data_window_is_mapped_onto_the_pretraining_window(tmp_path):
    teacher = _teacher(_write(tmp_path / "a.pt", _published_state()), data_intensity_range=(-175, 250))
    x = torch.rand(1, 1, *SIZE)
    hu = -175 + x * 425  # what the data transforms' window -175..250 HU -> [0, 1] encoded
    assert torch.allclose(teacher.preprocess(x), (hu + 1000) / 2000, atol=1e-6)  # the pre-training -1000..1000 HU
    default = _teacher(_write(tmp_path / "b.pt", _published_state()))
    assert torch.equal(default.preprocess(x), x)


def test_input_size_and_stage_are_checked_before_loading(tmp_path):
    with pytest.raises(ValueError, match=r"multiple of 32.*input_size=\(64, 32, 32\)"):
        create_teacher(NAME, weights=tmp_path / "none.pt", input_size=(64, 40, 32))
    path = _write(tmp_path / "a.pt", _published_state())
    with pytest.raises(ValueError, match=r"stage=5 is out of range.*stages 0 to 4"):
        _teacher(path, stage=5)


def test_offline_names_file_url_and_place_then_uses_the_placed_file(tmp_path, offline_cache):
    with pytest.raises(WeightsUnavailableError) as err:
        create_teacher(NAME)
    msg = str(err.value)
    assert "`model_swinvit.pt`" in msg and SWIN_UNETR_SSL_URL in msg
    assert str(offline_cache / "swin_unetr" / "model_swinvit.pt") in msg and "weights=" in msg
    copy_into_cache(_write(tmp_path / "model_swinvit.pt", _published_state()), "swin_unetr/model_swinvit.pt")
    teacher = create_teacher(NAME, feature_size=FS, input_size=SIZE)  # found in the cache, no network
    assert teacher(torch.rand(1, 1, *SIZE)).shape == (1, 16 * FS, 2, 1, 1)


def test_missing_einops_is_named_before_any_download(monkeypatch, offline_cache):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "einops" else find_spec(name, *a))
    with pytest.raises(ImportError, match=r"`pip install einops`"):
        create_teacher(NAME)
