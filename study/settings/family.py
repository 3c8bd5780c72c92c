"""The ResNet-RS model family as facts, without torch: blocks per stage by depth, the eleven
published models (presets), and the stochastic-depth rules. The schema checks settings
against them, the point key names them, study.train.models builds networks from them.
Imports nothing of study.
"""
from __future__ import annotations

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
