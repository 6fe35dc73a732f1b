"""CUDA-only checks of RDTrainer (AMP with a GradScaler). Marked `gpu`; skipped with a reason where no CUDA
device exists (CI has none); named in the README."""

import pytest
import torch
import torch.nn as nn

from monai_rd.engines import RDTrainer
from monai_rd.losses import CKALoss, RDLoss
from monai_rd.networks import FrozenTeacher, ReprogrammingNet, StudentClassifier

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_amp_training_keeps_teacher_frozen_and_terms_finite():
    torch.manual_seed(0)
    teacher = FrozenTeacher(nn.Sequential(nn.Conv2d(3, 64, 3, stride=4), nn.ReLU()), input_size=(64, 64))
    student = StudentClassifier("resnet18", num_classes=3, in_channels=1)
    phi = ReprogrammingNet(64, student.num_features, block="bottleneck", hidden_channels=128)
    data = [{"image": torch.rand(16, 1, 32, 32), "label": torch.randint(0, 3, (16,))} for _ in range(4)]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    opt = torch.optim.AdamW(list(student.parameters()) + list(phi.parameters()), lr=1e-3)
    trainer = RDTrainer(
        "cuda", 2, data, student.cuda(), opt, RDLoss(), teacher=teacher, reprogrammer=phi, amp=True, decollate=False,
        grad_clip_norm=1.0,
    )
    trainer.run()
    out = trainer.state.output
    for k in ("loss", "ce_student", "ce_teacher", "kd", "cka"):
        assert torch.isfinite(out[k]), k
    assert out["cka"].dtype == torch.float32
    for k, v in teacher.state_dict().items():
        assert torch.equal(v.cpu(), before[k]), k


def test_cka_float32_under_cuda_autocast():
    x = torch.randn(32, 512, device="cuda")
    y = torch.randn(32, 256, device="cuda") + x[:, :256]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = CKALoss()(x.bfloat16(), y.bfloat16())
    ref = CKALoss()(x.bfloat16().float(), y.bfloat16().float())
    assert got.dtype == torch.float32
    assert abs(got.item() - ref.item()) < 1e-5
