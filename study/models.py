"""The ResNet-RS family over timm's `ResNet`: depth table, width multiplier, SE, ResNet-D,
stochastic depth by the paper's per-stage rule or timm's per-block rule, and the eleven
published models as presets (`PRESETS`, conf/model/resnetrs*.yaml).

Run `python -m study.models --depth 50 --width 1.0 --resolution 160` to print one JSON
object with the model's parameters, FLOPs (2 x multiply-adds, one image, forward) and
activations. For that model the paper gives 35.7M parameters and 4.6 GFLOPs.
"""
from __future__ import annotations

import argparse
import json
from functools import partial

from torch import nn
from timm.layers import DropPath, get_attn, make_divisible
from timm.models.resnet import Bottleneck, ResNet

# Bottleneck blocks per stage by network depth (depth = 3 x blocks + 2).
# 50..420: the released ResNet-RS configs (tensorflow/tpu resnet_rs, timm resnetrs*).
# 14, 26 and 38 are small members of the same family for CPU-sized studies (26 is also in
# the paper's scaling grid). 300 and 400 are in the paper's grid but not in any released
# config: they are interpolated here the way 270..420 grow (4 blocks in the outer stages,
# the inner two about 1:2), giving 299 and 401 layers.
BLOCKS_PER_STAGE: dict[int, tuple[int, int, int, int]] = {
    14: (1, 1, 1, 1),
    26: (2, 2, 2, 2),
    38: (3, 3, 3, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
    270: (4, 29, 53, 4),
    300: (4, 36, 54, 4),    # the paper's layout (Bello et al. 2021, Table 7; in no released config)
    350: (4, 36, 72, 4),
    400: (6, 48, 72, 6),    # the paper's layout, likewise
    420: (4, 44, 87, 4),
}
# The eleven published ResNet-RS models: preset name -> (depth, training/eval resolution).
PRESETS: dict[str, tuple[int, int]] = {
    "resnetrs50": (50, 160), "resnetrs101": (101, 160), "resnetrs101_192": (101, 192),
    "resnetrs152": (152, 192), "resnetrs152_224": (152, 224), "resnetrs152_256": (152, 256),
    "resnetrs200": (200, 256), "resnetrs270": (270, 256), "resnetrs350": (350, 256),
    "resnetrs350_320": (350, 320), "resnetrs420": (420, 320),
}
# Stochastic depth, paper rule: stage i of 2..5 drops blocks at rate x i / 5 (the released
# TF code, `get_stochastic_depth_rate(rate, i + 2, 5)`): 0.4, 0.6, 0.8, 1.0 x rate.
STAGE_DROP_SCALE = (0.4, 0.6, 0.8, 1.0)
DROP_PATH_RULES = ("stage", "block")
BASE_CHANNELS = (64, 128, 256, 512)  # bottleneck planes per stage at width 1.0 (x4 out)
BASE_STEM_WIDTH = 32                 # ResNet-D deep stem: 32, 32, 64 channels at width 1.0
PLAIN_STEM_WIDTH = 64                # the original 7x7 stem at width 1.0
CHANNEL_DIVISOR = 8


def scale_channels(channels: int, width: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Channels x width multiplier, rounded to a multiple of `divisor` (never below it,
    never more than 10% under the exact product; the EfficientNet/timm rounding rule)."""
    return make_divisible(channels * width, divisor)


def stage_channels(width: float) -> tuple[int, ...]:
    """Bottleneck planes of the four stages for a width multiplier."""
    return tuple(scale_channels(c, width) for c in BASE_CHANNELS)


def blocks_per_stage(depth: int) -> tuple[int, int, int, int]:
    """Depth -> bottleneck blocks per stage; raises for a depth not in the table."""
    if depth not in BLOCKS_PER_STAGE:
        raise ValueError(f"model.depth={depth}: allowed depths are {sorted(BLOCKS_PER_STAGE)}")
    return BLOCKS_PER_STAGE[depth]


def build_model(
    depth: int,
    width: float,
    *,
    num_classes: int,
    in_chans: int = 3,
    se: bool = True,
    se_ratio: float = 0.25,
    resnet_d: bool = True,
    dropout: float = 0.0,
    stochastic_depth: float = 0.0,
    stochastic_depth_rule: str = "stage",
) -> ResNet:
    """A ResNet-RS network. `resnet_d` switches the paper's stem and shortcut changes
    together: the 3-conv deep stem, a stride-2 3x3 conv instead of the stem max-pool,
    and average pooling in the downsampling shortcut. `stochastic_depth` is the drop-path
    rate of the last stage ("stage": the paper's per-stage rule) or of the last block,
    rising linearly from 0 over the blocks ("block": timm's rule)."""
    block_args = {"attn_layer": partial(get_attn("se"), rd_ratio=se_ratio)} if se else {}
    stem = dict(stem_type="deep", stem_width=scale_channels(BASE_STEM_WIDTH, width),
                replace_stem_pool=True, avg_down=True) if resnet_d else {}
    model = ResNet(
        block=Bottleneck,
        layers=blocks_per_stage(depth),
        channels=stage_channels(width),
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=dropout,
        drop_path_rate=stochastic_depth if stochastic_depth_rule == "block" else 0.0,
        block_args=block_args,
        **stem,
    )
    if stochastic_depth_rule == "stage" and stochastic_depth > 0:
        _drop_path_per_stage(model, stochastic_depth)
    if not resnet_d:
        _scale_plain_stem(model, scale_channels(PLAIN_STEM_WIDTH, width), in_chans)
    return model


def _drop_path_per_stage(model: ResNet, rate: float) -> None:
    for stage, scale in zip((model.layer1, model.layer2, model.layer3, model.layer4), STAGE_DROP_SCALE):
        for block in stage:
            block.drop_path = DropPath(rate * scale)


def drop_path_rates(model: nn.Module) -> list[float]:
    """The drop-path rate of every residual block, in order (0 where there is none)."""
    return [b.drop_path.drop_prob if isinstance(b.drop_path, DropPath) else 0.0
            for b in model.modules() if isinstance(b, Bottleneck)]


def _scale_plain_stem(model: ResNet, stem_ch: int, in_chans: int) -> None:
    """timm fixes the 7x7 stem at 64 channels; rebuild it (and the first block's inputs)
    at the width-scaled size so the multiplier scales the stem in both stem variants."""
    model.conv1 = nn.Conv2d(in_chans, stem_ch, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(stem_ch)
    first = model.layer1[0]
    old = first.conv1
    first.conv1 = nn.Conv2d(stem_ch, old.out_channels, kernel_size=1, bias=False)
    out_ch = first.conv3.out_channels
    if first.downsample is None:  # timm needed none: its 64-channel stem matched the block's output
        first.downsample = nn.Sequential(nn.Conv2d(stem_ch, out_ch, kernel_size=1, bias=False),
                                         nn.BatchNorm2d(out_ch))
    else:
        down = first.downsample[0]
        first.downsample[0] = nn.Conv2d(stem_ch, out_ch, kernel_size=1, stride=down.stride, bias=False)
    for m in (model.conv1, first.conv1, first.downsample[0]):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def main(argv: list[str] | None = None) -> None:
    from study import measure

    p = argparse.ArgumentParser(prog="python -m study.models", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="a published model: sets depth and resolution")
    p.add_argument("--depth", type=int, default=50, choices=sorted(BLOCKS_PER_STAGE))
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--resolution", type=int, default=160)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--no-se", action="store_true")
    p.add_argument("--no-resnet-d", action="store_true")
    a = p.parse_args(argv)
    if a.preset:
        a.depth, a.resolution = PRESETS[a.preset]
    if a.width <= 0 or a.resolution < 8:
        p.error("--width must be > 0 and --resolution >= 8")
    model = build_model(a.depth, a.width, num_classes=a.num_classes, in_chans=a.in_chans,
                        se=not a.no_se, resnet_d=not a.no_resnet_d)
    record = {"depth": a.depth, "width": a.width, "resolution": a.resolution}
    record |= measure.complexity(model, a.resolution, a.in_chans)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
