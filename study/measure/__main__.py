"""Print one model's complexity as one JSON object: parameters, FLOPs (2 x multiply-adds, one
image, forward) and activations.

    python -m study.measure --depth 50 --width 1.0 --resolution 160
    python -m study.measure --preset resnetrs350_320

For ResNet-RS-50 at 160 px the paper gives 35.7M parameters and 4.6 GFLOPs.
(`python -m study.models`, the older path, runs this too.)
"""
from __future__ import annotations

import argparse
import json

from study.measure import costs
from study.settings.family import BLOCKS_PER_STAGE, PRESETS
from study.train.models import build_model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m study.measure", description=__doc__.splitlines()[0])
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
    record |= costs.complexity(model, a.resolution, a.in_chans)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
