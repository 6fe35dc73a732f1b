"""How networks are cut into Deep RD stages: the stride rule and the evenly spaced depths."""

from __future__ import annotations

import torch.nn as nn

from monai_rd.networks.stages import evenly_spaced, reduces_resolution, stride_stage_ends


def test_stride_rule_ends_stages_at_the_last_module_of_each_resolution():
    """The last module before each downsampling ends a stage; the last N resolutions are kept, the very last module
    ending the last stage (so pooling alone follows). Transposed convs and stride-1 layers do not downsample."""
    named = [
        ("stem", nn.Conv2d(3, 8, 3, stride=2)),  # /2
        ("pool", nn.MaxPool2d(2)),  # /4
        ("block1", nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())),
        ("block2", nn.Sequential(nn.Conv2d(8, 16, 3, stride=(1, 2), padding=1))),  # /8 on one axis
        ("up", nn.ConvTranspose2d(16, 16, 2, stride=2)),
        ("block3", nn.Conv2d(16, 32, 3, stride=2, padding=1)),  # /16
        ("head", nn.Conv2d(32, 64, 1)),
    ]
    assert [reduces_resolution(m) for _, m in named] == [True, True, False, True, False, True, False]
    assert stride_stage_ends(named) == ["stem", "block1", "up", "head"]
    assert stride_stage_ends(named, num_stages=2) == ["up", "head"]


def test_evenly_spaced_depths():
    """A ViT-B's 12 blocks give 2, 5, 8, 11 (the last block last); fewer blocks than stages give each block once."""
    assert evenly_spaced(12) == [2, 5, 8, 11]
    assert evenly_spaced(24) == [5, 11, 17, 23]
    assert evenly_spaced(2) == [0, 1] and evenly_spaced(4) == [0, 1, 2, 3]
