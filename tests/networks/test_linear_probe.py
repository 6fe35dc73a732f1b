import numpy as np
import pytest
import torch
import torch.nn as nn

from monai_rd.networks.linear_probe import LinearProbe, TeacherLinearProbe, fit_teacher_probe, pooled_teacher_features


def _blobs(n, c=6, classes=3, seed=0, spatial=True):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, c, generator=g) * 2
    x = centres[y] + torch.randn(n, c, generator=g)
    if spatial:  # a (N, C, 2, 2) map whose spatial mean is x
        x = x[:, :, None, None] + torch.tensor([[1.0, -1.0], [-2.0, 2.0]]) * torch.randn(n, c, 1, 1, generator=g)
    return x, y


def _objective_gradient(probe, x, y, wd):
    """Gradient (NumPy) of mean CE + wd/2 ||W_std||^2 in the standardised coordinates the fit solves in."""
    x = x.double().flatten(2).mean(2).numpy() if x.ndim > 2 else x.double().numpy()
    mean, std = x.mean(0), np.maximum(x.std(0, ddof=1), 1e-6)
    w = probe.linear.weight.detach().double().numpy() * std  # unfold the folded standardisation
    b = probe.linear.bias.detach().double().numpy() + probe.linear.weight.detach().double().numpy() @ mean
    xs = (x - mean) / std
    z = xs @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y.numpy()] -= 1
    return p.T @ xs / len(y) + wd * w, p.mean(0)


def test_fit_reaches_the_regularised_logistic_regression_optimum():
    x, y = _blobs(60)
    probe = LinearProbe(6, 3).fit(x, y, weight_decays=[0.1])
    g_w, g_b = _objective_gradient(probe, x, y, 0.1)
    assert np.abs(g_w).max() < 1e-5 and np.abs(g_b).max() < 1e-5
    assert (probe(x).argmax(1) == y).float().mean() > 0.9  # well-separated blobs


def test_weight_decay_is_chosen_by_validation_log_loss():
    x, y = _blobs(30, c=20, seed=1)
    xv, yv = _blobs(30, c=20, seed=2)
    probe = LinearProbe(20, 3).fit(x, y, xv, yv, weight_decays=[1e-4, 1e-2, 1.0])
    losses = probe.fit_report["val_log_loss"]
    assert set(losses) == {1e-4, 1e-2, 1.0}
    assert probe.fit_report["weight_decay"] == min(losses, key=losses.get)
    with torch.no_grad():  # the probe kept is the chosen one
        kept = nn.functional.cross_entropy(probe(xv).double(), yv).item()
    assert kept == pytest.approx(losses[probe.fit_report["weight_decay"]], rel=1e-4)


def test_building_and_fitting_consume_no_random_numbers_and_are_deterministic():
    x, y = _blobs(40)
    state = torch.get_rng_state()
    a = LinearProbe(6, 3).fit(x, y, weight_decays=[0.01])
    b = LinearProbe(6, 3).fit(x, y, weight_decays=[0.01])
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.linear.weight, b.linear.weight) and torch.equal(a.linear.bias, b.linear.bias)


def test_multi_label_fit_uses_per_class_sigmoids():
    x, y = _blobs(60)
    multi_hot = nn.functional.one_hot(y, 3).float()
    multi_hot[:, 2] = 1.0  # class 2 always present: its bias must go up, not compete with the others
    probe = LinearProbe(6, 3, multi_label=True).fit(x, multi_hot, weight_decays=[0.01])
    assert (torch.sigmoid(probe(x))[:, 2] > 0.9).all()


def test_fit_refuses_mismatched_inputs_and_several_weight_decays_without_validation():
    x, y = _blobs(10)
    with pytest.raises(ValueError, match=r"expects 5-channel features .* got features \(10, 6, 2, 2\)"):
        LinearProbe(5, 3).fit(x, y, weight_decays=[0.1])
    with pytest.raises(ValueError, match="val_features"):
        LinearProbe(6, 3).fit(x, y)


class _Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_teacher_probe_keeps_only_the_probe_in_its_state_and_the_teacher_frozen():
    torch.manual_seed(0)
    model = TeacherLinearProbe(_Teacher(), LinearProbe(4, 2))
    with torch.no_grad():
        model.probe.linear.weight.normal_()
    assert list(model.state_dict()) == ["probe.linear.weight", "probe.linear.bias"]
    copy = TeacherLinearProbe(model.teacher, LinearProbe(4, 2))
    copy.load_state_dict(model.state_dict())  # strict: the teacher's keys are not expected
    with pytest.raises(RuntimeError, match="Unexpected"):
        copy.load_state_dict({**model.state_dict(), "extra": torch.zeros(1)})
    model.train()
    assert not model.teacher.training and not any(p.requires_grad for p in model.teacher.parameters())
    x = torch.rand(3, 1, 8, 8)
    expected = model.probe(model.teacher(x).mean((2, 3)))
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(copy(x), expected)
    assert sum(p.numel() for p in model.parameters()) == 4 * 9 + 4 + 8 + 4 * 2 + 2  # what deploying it costs


def test_teacher_probe_inside_another_module_still_needs_only_its_probe_but_nothing_else_is_excused():
    """Catches the teacher-key exemption missing when the probe is nested, or excusing other missing keys."""
    torch.manual_seed(0)
    outer = nn.ModuleDict({"deployed": TeacherLinearProbe(_Teacher(), LinearProbe(4, 2)), "extra": nn.Linear(2, 2)})
    state = outer.state_dict()
    assert sorted(state) == ["deployed.probe.linear.bias", "deployed.probe.linear.weight", "extra.bias", "extra.weight"]
    outer.load_state_dict(state)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*extra.weight"):
        outer.load_state_dict({k: v for k, v in state.items() if k != "extra.weight"})


class _Cache:
    """Stands in for a built TeacherFeatureCache holding two images."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __contains__(self, path):
        return path in self.rows

    def index(self, path):
        return list(self.rows).index(path)

    def gather(self, rows, device):
        return torch.stack([list(self.rows.values())[int(r)] for r in rows])


def test_features_come_from_the_cache_when_it_holds_the_image_else_from_the_teacher():
    torch.manual_seed(0)
    teacher = _Teacher().eval()
    images = {f"img{i}": torch.rand(1, 8, 8) for i in range(3)}
    cached = {"img0": torch.full((4, 2, 2), 7.0), "img2": torch.full((4, 2, 2), -1.0)}
    items = [{"image": k, "label": i} for i, k in enumerate(images)]
    load = lambda it: {"image": images[it["image"]]}  # noqa: E731
    feats, labels = pooled_teacher_features(teacher, items, load, cache=_Cache(cached))
    assert labels.tolist() == [0, 1, 2]
    torch.testing.assert_close(feats[0], torch.full((4,), 7.0))
    torch.testing.assert_close(feats[2], torch.full((4,), -1.0))
    with torch.no_grad():
        torch.testing.assert_close(feats[1], teacher(images["img1"][None]).mean((2, 3))[0])
    with pytest.raises(ValueError, match="not in the feature cache"):
        pooled_teacher_features(None, items, lambda it: it, cache=_Cache(cached))


def test_fit_teacher_probe_never_reads_the_test_split():
    torch.manual_seed(0)
    teacher = _Teacher().eval()
    x, y = _blobs(24, c=1, classes=2, spatial=False)
    images = {f"i{k}": x[k].reshape(1, 1, 1).expand(1, 4, 4) + 0.1 * torch.rand(1, 4, 4) for k in range(24)}
    split = lambda ks: [{"image": f"i{k}", "label": int(y[k])} for k in ks]  # noqa: E731
    missing = [{"image": "missing", "label": 0}]  # reading it would fail
    datalist = {"training": split(range(16)), "validation": split(range(16, 24)), "test": missing}
    probe = fit_teacher_probe(LinearProbe(4, 2), teacher, datalist, lambda it: {"image": images[it["image"]]})
    assert probe.fit_report["weight_decay"] in probe.fit_report["val_log_loss"]
