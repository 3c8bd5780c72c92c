"""Golden parameter and FLOP counts, and the pure scaling rules of the model family."""
from __future__ import annotations

import json

import pytest
import torch

from study import measure, models

PAPER_RS50_160 = {"params": 35.7e6, "flops": 4.6e9}  # Bello et al. 2021, Table 7


def test_resnetrs50_at_160_matches_the_paper_within_1_percent():
    model = models.build_model(50, 1.0, num_classes=1000)
    counts = measure.complexity(model, 160, 3)
    for key, paper in PAPER_RS50_160.items():
        assert abs(counts[key] - paper) / paper < 0.01, (key, counts[key])


def test_matches_timm_resnetrs50_exactly():
    import timm

    ours = models.build_model(50, 1.0, num_classes=1000)
    reference = timm.create_model("resnetrs50", pretrained=False)
    assert measure.complexity(ours, 160, 3) == measure.complexity(reference, 160, 3)




@pytest.mark.parametrize("depth", sorted(models.BLOCKS_PER_STAGE))
def test_depth_table_matches_the_name(depth):
    blocks = models.blocks_per_stage(depth)
    assert len(blocks) == 4
    assert abs(3 * sum(blocks) + 2 - depth) <= 4  # 270 -> 272, 420 -> 419 in the released configs


def test_unknown_depth_names_allowed_values():
    with pytest.raises(ValueError, match="model.depth=42: allowed depths are"):
        models.blocks_per_stage(42)


@pytest.mark.parametrize("width,expected", [(1.0, (64, 128, 256, 512)), (0.5, (32, 64, 128, 256)),
                                            (0.25, (16, 32, 64, 128)), (1.5, (96, 192, 384, 768))])
def test_width_multiplier_scales_every_stage(width, expected):
    assert models.stage_channels(width) == expected


def test_width_scales_the_stem_in_both_stem_variants():
    for resnet_d in (True, False):
        narrow = models.build_model(26, 0.5, num_classes=10, resnet_d=resnet_d)
        wide = models.build_model(26, 1.0, num_classes=10, resnet_d=resnet_d)
        first = lambda m: next(c for c in m.modules() if isinstance(c, torch.nn.Conv2d))  # noqa: E731
        assert first(narrow).out_channels * 2 == first(wide).out_channels
        out = narrow(torch.zeros(2, 3, 32, 32))
        assert out.shape == (2, 10)


def test_se_and_resnet_d_are_switchable():
    base = measure.complexity(models.build_model(50, 1.0, num_classes=1000), 160, 3)
    no_se = measure.complexity(models.build_model(50, 1.0, num_classes=1000, se=False), 160, 3)
    no_d = measure.complexity(models.build_model(50, 1.0, num_classes=1000, resnet_d=False), 160, 3)
    assert no_se["params"] < base["params"]
    assert abs(no_se["params"] - 25.6e6) / 25.6e6 < 0.01  # the plain ResNet-50 count (+ResNet-D)
    assert no_d["params"] != base["params"]


def test_flops_grow_with_depth_width_and_resolution():
    f = lambda d, w, r: measure.complexity(models.build_model(d, w, num_classes=10), r, 3)["flops"]  # noqa
    assert f(14, 0.5, 32) < f(26, 0.5, 32) < f(50, 0.5, 32)
    assert f(26, 0.25, 32) < f(26, 0.5, 32) < f(26, 1.0, 32)
    assert f(26, 0.5, 16) < f(26, 0.5, 32)


def test_cli_prints_one_json_object(capsys):
    models.main(["--depth", "50", "--width", "1.0", "--resolution", "160"])
    record = json.loads(capsys.readouterr().out)
    assert {"params", "flops", "activations"} <= record.keys()
    assert abs(record["params"] - 35.7e6) / 35.7e6 < 0.01
