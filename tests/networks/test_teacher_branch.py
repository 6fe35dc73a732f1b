"""TeacherBranch: RD's teacher branch h(Phi(T(x))) as one network."""

import pytest
import torch
import torch.nn as nn

from monai_rd.networks import ReprogrammingNet, StudentClassifier, TeacherBranch


def _parts(seed=0):
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Conv2d(1, 6, 3, stride=2), nn.BatchNorm2d(6), nn.ReLU()).eval()
    student = StudentClassifier(nn.Sequential(nn.Conv2d(1, 8, 3), nn.AdaptiveAvgPool2d(1)), 3, num_features=8,
                                in_channels=1)
    phi = ReprogrammingNet(6, 8, num_blocks=1, block="basic").eval()
    return teacher, student, phi


def test_output_is_head_of_phi_of_teacher_features_computed_by_hand():
    """Catches a swapped branch (student features, or the teacher's own output, in place of Phi's) or a wrong order."""
    teacher, student, phi = _parts()
    x = torch.randn(4, 1, 16, 16)
    branch = TeacherBranch(phi, student.head, teacher).eval()
    with torch.no_grad():
        by_hand = student.head(phi(teacher(x)))
        assert torch.allclose(branch(x), by_hand)
        # the same from precomputed features (the bundle's validation cache)
        assert torch.allclose(TeacherBranch(phi, student.head).eval()(teacher(x)), by_hand)
        assert not torch.allclose(branch(x), student.eval()(x))


def test_it_scores_the_live_phi_and_head_not_copies():
    """Catches a branch that copied Phi or h at construction: after training steps it would score stale weights."""
    teacher, student, phi = _parts()
    branch = TeacherBranch(phi, student.head, teacher).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        before = branch(x).clone()
        student.head.weight.add_(1.0)
        next(phi.proj.parameters()).mul_(2.0)
        after = branch(x)
        assert not torch.allclose(before, after)
        assert torch.allclose(after, student.head(phi(teacher(x))))


def test_train_mode_never_reaches_the_frozen_teacher():
    """Catches BatchNorm statistics of the frozen teacher changing when an engine puts the branch in train mode."""
    teacher, student, phi = _parts()
    branch = TeacherBranch(phi, student.head, teacher).train()
    assert phi.training and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    stats = teacher[1].running_mean.clone()
    branch(torch.randn(4, 1, 16, 16))
    assert torch.equal(teacher[1].running_mean, stats)


def test_refuses_a_head_that_is_not_a_module():
    """Catches passing the student's bound ``classify`` method (not a module: Phi's mode would not be managed)."""
    _, student, phi = _parts()
    with pytest.raises(TypeError, match="head"):
        TeacherBranch(phi, student.classify)
