"""Golden parameter and FLOP counts, and the pure scaling rules of the model family."""
from __future__ import annotations

import json

import pytest
import torch

from study.measure import costs
from study.settings import family
from study.train import models

PAPER_RS50_160 = {"params": 35.7e6, "flops": 4.6e9}  # Bello et al. 2021, Table 7

# Published parameter counts (millions) of the released checkpoints: the TensorFlow Model
# Garden table (tensorflow/models official/vision README, ResNet-RS), which lists ten of the
# eleven; RS-420 is not in it. Every count of every preset is also checked to equal timm's
# port of the released checkpoints (`resnetrs*`), parameters and FLOPs, at the preset's size.
PUBLISHED_PARAMS_M = {"resnetrs50": 35.7, "resnetrs101": 63.7, "resnetrs101_192": 63.7, "resnetrs152": 86.8,
                      "resnetrs152_224": 86.8, "resnetrs152_256": 86.8, "resnetrs200": 93.4, "resnetrs270": 130.1,
                      "resnetrs350": 164.3, "resnetrs350_320": 164.3}
# FLOPs (2 x multiply-adds, one image) of every preset as counted here, pinned: identical to
# timm's port; RS-50@160 is 4.6 G in the paper, RS-420@320 is 128 G in the paper's cost estimate.
GOLDEN_GFLOPS = {"resnetrs50": 4.557, "resnetrs101": 8.357, "resnetrs101_192": 12.015, "resnetrs152": 17.49,
                 "resnetrs152_224": 23.79, "resnetrs152_256": 31.06, "resnetrs200": 40.19, "resnetrs270": 53.90,
                 "resnetrs350": 68.75, "resnetrs350_320": 107.37, "resnetrs420": 127.88}


def _counts_on_meta(build, resolution: int) -> dict[str, int]:
    with torch.device("meta"):
        model = build()
    return costs.complexity(model, resolution, 3)


@pytest.mark.parametrize("preset", sorted(family.PRESETS))
def test_every_preset_is_the_released_model(preset):
    import timm

    depth, resolution = family.PRESETS[preset]
    ours = _counts_on_meta(lambda: models.build_model(depth, 1.0, num_classes=1000), resolution)
    reference = _counts_on_meta(lambda: timm.create_model(f"resnetrs{depth}", pretrained=False), resolution)
    assert ours["params"] == reference["params"] and ours["flops"] == reference["flops"]
    assert ours["flops"] / 1e9 == pytest.approx(GOLDEN_GFLOPS[preset], rel=0.01)
    if preset in PUBLISHED_PARAMS_M:
        assert ours["params"] / 1e6 == pytest.approx(PUBLISHED_PARAMS_M[preset], rel=0.01)


@pytest.mark.parametrize("preset", sorted(family.PRESETS))
def test_every_preset_config_sets_depth_and_resolution(preset):
    from study.settings import config
    from tests.conftest import compose_cfg

    study = config.validate(compose_cfg("config", [f"model={preset}"]))
    assert (study.model.depth, study.data.resolution) == family.PRESETS[preset]
    assert study.model.se and study.model.se_ratio == 0.25 and study.model.resnet_d


def test_stochastic_depth_per_stage_as_released_or_per_block_as_timm():
    stage = models.drop_path_rates(models.build_model(50, 0.25, num_classes=10, stochastic_depth=0.1))
    assert stage == pytest.approx([0.04] * 3 + [0.06] * 4 + [0.08] * 6 + [0.1] * 3)
    block = models.drop_path_rates(models.build_model(50, 0.25, num_classes=10, stochastic_depth=0.1,
                                                      stochastic_depth_rule="block"))
    assert block[0] == 0 and block[-1] == pytest.approx(0.1) and block == sorted(block)
    assert models.drop_path_rates(models.build_model(50, 0.25, num_classes=10)) == [0.0] * 16


def test_resnetrs50_at_160_matches_the_paper_within_1_percent():
    model = models.build_model(50, 1.0, num_classes=1000)
    counts = costs.complexity(model, 160, 3)
    for key, paper in PAPER_RS50_160.items():
        assert abs(counts[key] - paper) / paper < 0.01, (key, counts[key])


def test_matches_timm_resnetrs50_exactly():
    import timm

    ours = models.build_model(50, 1.0, num_classes=1000)
    reference = timm.create_model("resnetrs50", pretrained=False)
    assert costs.complexity(ours, 160, 3) == costs.complexity(reference, 160, 3)




@pytest.mark.parametrize("depth", sorted(family.BLOCKS_PER_STAGE))
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


@pytest.mark.parametrize("width", [0.25, 0.5])
def test_width_scales_the_stem_in_both_stem_variants(width):
    for resnet_d in (True, False):
        narrow = models.build_model(26, width, num_classes=10, resnet_d=resnet_d)
        wide = models.build_model(26, 1.0, num_classes=10, resnet_d=resnet_d)
        first = lambda m: next(c for c in m.modules() if isinstance(c, torch.nn.Conv2d))  # noqa: E731
        assert first(narrow).out_channels == first(wide).out_channels * width
        out = narrow(torch.zeros(2, 3, 32, 32))
        assert out.shape == (2, 10)


def test_se_and_resnet_d_are_switchable():
    base = costs.complexity(models.build_model(50, 1.0, num_classes=1000), 160, 3)
    no_se = costs.complexity(models.build_model(50, 1.0, num_classes=1000, se=False), 160, 3)
    no_d = costs.complexity(models.build_model(50, 1.0, num_classes=1000, resnet_d=False), 160, 3)
    assert no_se["params"] < base["params"]
    assert abs(no_se["params"] - 25.6e6) / 25.6e6 < 0.01  # the plain ResNet-50 count (+ResNet-D)
    assert no_d["params"] != base["params"]


def test_flops_grow_with_depth_width_and_resolution():
    f = lambda d, w, r: costs.complexity(models.build_model(d, w, num_classes=10), r, 3)["flops"]  # noqa
    assert f(14, 0.5, 32) < f(26, 0.5, 32) < f(50, 0.5, 32)
    assert f(26, 0.25, 32) < f(26, 0.5, 32) < f(26, 1.0, 32)
    assert f(26, 0.5, 16) < f(26, 0.5, 32)


def test_cli_prints_one_json_object(capsys):
    from study.measure.__main__ import main

    main(["--depth", "50", "--width", "1.0", "--resolution", "160"])
    record = json.loads(capsys.readouterr().out)
    assert {"params", "flops", "activations"} <= record.keys()
    assert abs(record["params"] - 35.7e6) / 35.7e6 < 0.01


def test_the_older_cli_path_still_prints_it():
    """`python -m study.models`, the path the docs gave before study.measure, prints the same."""
    import subprocess
    import sys

    args = ["--depth", "14", "--width", "0.25", "--resolution", "16", "--num-classes", "10"]
    old, new = (subprocess.run([sys.executable, "-m", m, *args], capture_output=True, text=True, check=True).stdout
                for m in ("study.models", "study.measure"))
    assert json.loads(old) == json.loads(new) and json.loads(old)["params"] > 0


@pytest.mark.parametrize("depth,layout", [(300, (4, 36, 54, 4)), (400, (6, 48, 72, 6))])
def test_depths_300_and_400_have_the_papers_layouts(depth, layout):
    from functools import partial

    from timm.layers import get_attn
    from timm.models.resnet import Bottleneck, ResNet

    assert models.blocks_per_stage(depth) == layout
    ours = _counts_on_meta(lambda: models.build_model(depth, 1.0, num_classes=1000), 256)
    attn = partial(get_attn("se"), rd_ratio=0.25)
    reference = _counts_on_meta(lambda: ResNet(block=Bottleneck, layers=layout, stem_width=32, stem_type="deep",
                                               replace_stem_pool=True, avg_down=True,
                                               block_args=dict(attn_layer=attn)), 256)
    assert ours == reference
