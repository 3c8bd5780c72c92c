"""The ResNet-RS family over timm's `ResNet`: depth table, width multiplier, SE, ResNet-D,
stochastic depth by the paper's per-stage rule or timm's per-block rule, and the eleven
published models as presets (`PRESETS`, conf/model/resnetrs*.yaml).

`python -m study.measure --depth 50 --width 1.0 --resolution 160` prints a model's
parameters, FLOPs and activations (study/measure/__main__.py).
"""
from __future__ import annotations

from functools import partial

from torch import nn
from timm.layers import DropPath, get_attn, make_divisible
from timm.models.resnet import Bottleneck, ResNet

from study.settings.config import ModelConfig, RecipeConfig
from study.settings.family import BLOCKS_PER_STAGE, STAGE_DROP_SCALE

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


def model_of(m: ModelConfig, *, num_classes: int, in_chans: int = 3,
             recipe: RecipeConfig | None = None) -> ResNet:
    """The network of a point's model section; with its recipe, the recipe's dropout and
    stochastic depth too (without: none, as FLOPs and parameters count it)."""
    regularization = dict(dropout=recipe.dropout, stochastic_depth=recipe.stochastic_depth,
                          stochastic_depth_rule=recipe.stochastic_depth_rule) if recipe else {}
    return build_model(m.depth, m.width, num_classes=num_classes, in_chans=in_chans, se=m.se, se_ratio=m.se_ratio,
                       resnet_d=m.resnet_d, **regularization)


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
