"""The adaptable teacher classifier: LoRA (peft) on the intended layers, plain-conv rewriting, checkpoint contents."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_rd.errors import OptionError
from monai_rd.networks import AdaptedTeacherClassifier, FrozenTeacher
from monai_rd.networks.adapted_teacher import as_lora_targets, inject_lora, lora_target_modules, plain_convs
from monai_rd.networks.linear_probe import LinearProbe


class SamePadConv(nn.Conv2d):
    """A TF-'SAME' conv as EfficientNet ports write it: its own constructor and padding."""

    def __init__(self, cin, cout, k, stride=1, image_size=None, **kw):
        super().__init__(cin, cout, k, stride, **kw)
        assert image_size is not None
        pad = max(k - stride, 0)
        self.pad = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x):
        return F.conv2d(self.pad(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = SamePadConv(3, 8, 3, stride=2, image_size=16)  # real padding: kept, no adapter
        self.expand = SamePadConv(8, 16, 1, image_size=16)  # 1x1: a plain conv in disguise
        self.bn = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # grouped: no adapter
        self.project = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 10)  # ImageNet classifier: the features never reach it

    def extract_features(self, x):
        return self.project(self.depthwise(self.bn(self.expand(self.stem(x)))))


class TinyViT(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward_features(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, 9, C)
        q, k, v = self.qkv(t).chunk(3, -1)
        t = t + self.proj(torch.softmax(q @ k.transpose(1, 2), -1) @ v)
        return t + self.fc2(F.gelu(self.fc1(t)))


def cnn_teacher(seed=0):
    torch.manual_seed(seed)
    return FrozenTeacher(TinyCNN(), input_size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3,
                         feature_fn="extract_features", name="tiny-cnn")


def vit_teacher(seed=0):
    torch.manual_seed(seed)
    return FrozenTeacher(TinyViT(), input_size=(12, 12), mean=(0.5,) * 3, std=(0.5,) * 3,
                         feature_fn="forward_features", name="tiny-vit")


def test_plain_convs_replaces_only_subclasses_equal_to_a_plain_conv_and_keeps_their_parameters():
    """Catches a 'SAME'-padded strided conv turned into a plain one (wrong features) or copied weights."""
    teacher = cnn_teacher()
    x = torch.rand(2, 1, 16, 16)
    before, weight = teacher(x), teacher.model.expand.weight
    fingerprint = teacher.fingerprint()
    assert plain_convs(teacher.model) == 1
    assert type(teacher.model.expand) is nn.Conv2d and teacher.model.expand.weight is weight
    assert type(teacher.model.stem) is SamePadConv
    assert torch.equal(teacher(x), before) and teacher.fingerprint() == fingerprint


def test_lora_goes_on_the_layers_the_features_use_and_leaves_the_outputs_unchanged():
    """Catches adapters on unused, grouped or padded layers, and a non-zero start of the LoRA update."""
    teacher = cnn_teacher()
    x = torch.rand(2, 1, 16, 16)
    before, fingerprint = teacher(x), teacher.fingerprint()
    state = torch.get_rng_state()
    classifier = AdaptedTeacherClassifier(teacher, LinearProbe(8, 3), "lora", lora_rank=2)
    assert torch.equal(torch.get_rng_state(), state)  # injecting draws no random numbers of the run
    assert classifier.adapted_layers == ["expand", "project"]
    assert torch.equal(teacher(x), before)  # lora_B starts at zero
    assert teacher.fingerprint() != fingerprint  # the feature cache's key moves with the adapters
    assert not any(p.requires_grad for p in classifier.teacher.parameters())  # frozen until adaptation starts
    assert all(
        "lora_" in n for n, p in teacher.named_parameters() if any(p is q for q in classifier.adapted_parameters())
    )

    vit = vit_teacher()
    assert lora_target_modules(vit) == ["patch", "qkv", "proj", "fc1", "fc2"]  # not the unused head
    assert inject_lora(vit, rank=2, targets=["qkv", "proj"]) == ["proj", "qkv"]


def test_lora_targets_option_is_checked():
    """Catches a --lora_targets that matches nothing being accepted (a LoRA run that trains only the head)."""
    assert as_lora_targets("null") is None and as_lora_targets(["qkv", " proj"]) == ["qkv", "proj"]
    assert as_lora_targets("['qkv','proj']") == ["qkv", "proj"] and as_lora_targets(r".*\.fc\d") == r".*\.fc\d"
    with pytest.raises(OptionError, match="lora_targets"):
        as_lora_targets(3)
    with pytest.raises(OptionError, match="lora_targets"):
        inject_lora(vit_teacher(), targets=["no_such_layer"])
    with pytest.raises(OptionError, match="mode must be one of"):
        AdaptedTeacherClassifier(vit_teacher(), LinearProbe(8, 3), "prompt")


@pytest.mark.parametrize("mode", ["finetune", "lora"])
def test_checkpoint_holds_the_head_and_what_adaptation_changes_and_round_trips(mode):
    """Catches a model.pt without the adapted weights: rebuilding it would give the unadapted teacher."""
    classifier = AdaptedTeacherClassifier(vit_teacher(), LinearProbe(8, 3), mode, lora_rank=2)
    with torch.no_grad():
        for p in [*classifier.adapted_parameters(), *classifier.probe.parameters()]:
            p.add_(torch.randn_like(p) * 0.1)
    keys = list(classifier.state_dict())
    teacher_keys = [k for k in keys if k.startswith("teacher.")]
    assert {"probe.linear.weight", "probe.linear.bias"} <= set(keys)
    if mode == "lora":
        assert teacher_keys and all("lora_" in k for k in teacher_keys)
    else:
        assert len(teacher_keys) == len(classifier.teacher.model.state_dict())
    rebuilt = AdaptedTeacherClassifier(vit_teacher(seed=1 if mode == "finetune" else 0), LinearProbe(8, 3), mode,
                                       lora_rank=2)
    rebuilt.load_state_dict(classifier.state_dict())  # strict: nothing the checkpoint must hold is missing
    x = torch.rand(3, 1, 12, 12)
    assert torch.equal(rebuilt(x), classifier(x))
    with pytest.raises(RuntimeError, match="Missing key"):
        rebuilt.load_state_dict({k: v for k, v in classifier.state_dict().items() if k not in teacher_keys[:1]})


def test_gradients_reach_the_teacher_only_while_adapting():
    """Catches an adaptation that silently trains only the head (the teacher run under no_grad)."""
    classifier = AdaptedTeacherClassifier(cnn_teacher(), LinearProbe(8, 3), "finetune").start_adaptation()
    classifier.train()
    assert not classifier.teacher.model.training  # BatchNorm statistics stay frozen
    classifier(torch.rand(2, 1, 16, 16)).sum().backward()
    assert classifier.teacher.model.project.weight.grad is not None
    classifier.freeze()
    assert not classifier.adapting and not classifier(torch.rand(2, 1, 16, 16)).requires_grad
