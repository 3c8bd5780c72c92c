"""`make bench` / `python -m benchmarks`: every figure is a ratio measured side by side in
this one run, on this machine, so it is comparable across machines.

1. trainer vs bare loop: images/s of study.train.trainer.fit against a minimal hand-written loop
   (same model, data, batches, optimizer and schedule; nothing else), alternated, best of N.
2. input pipeline vs training step: batches/s of the augmenting batcher alone against
   training steps/s.
3. fixed cost of a point: wall time of study.point.run_point with a real MLflow store minus
   its epochs (model build, FLOP count, run record, final evaluation, latency, artifacts),
   in a warm process as in the middle of a sweep.
4. skip cost: a sweep of finished points run again through the real CLI; the per-point cost
   is (T(8 points) - T(4 points)) / 4, which removes the process start-up.
5. speed (benchmarks/speed.py): the trainer against plain and optimised hand-written loops, and
   achieved model FLOP/s over the measured matmul peak.
6. analysis, calibration (benchmarks/analysis_bench.py): every rule on 1,000 runs with 1,000
   replicates against 60 s; the decisions' calibration over simulated studies.
7. adaptive (benchmarks/analysis_bench.py): make decide's proposals against the full grid on
   the same simulated studies (100 per truth family): right and wrong decisions, compute.
8. stream (benchmarks/stream_bench.py): the streaming input pipeline's images/s against the
   training step's on CIFAR-10's JPEG folders, and the decode rate.
9. latency (benchmarks/latency_bench.py): the latency a JOBS=2 sweep records against a JOBS=1
   sweep's for the same points, in-job and measured alone (study.measure.alone).
10. compile (benchmarks/compile_bench.py): torch.compile's compile time and steady saving per
   step for small and large points, and what trainer.compile=auto decides for them.
11. fingerprint (benchmarks/identity_bench.py): validating a 100-point grid on a 1,000-class image
   folder with each folder's stamp read once against once per point.
12. default-study (benchmarks/study_bench.py, opt-in: about 32 minutes): `make sweep` of the
   embedded default as replicates 0, 1, 2, timed, what each decides alone, opposite decisions.
13. decide-vs-grid (benchmarks/study_bench.py, opt-in: about 17 minutes a repeat): `make decide`
   against `make sweep` on the default, alternated, wall times and the grid's decisions it misses.
14. pack (benchmarks/study_bench.py, opt-in: about 11 minutes a repeat): `make sweep JOBS=auto`
   (packed: small points side by side, a core each) against one point at a time on the default,
   alternated, points per hour and whether the two reports decide the same.
15. server (benchmarks/server_bench.py, opt-in: about 5 minutes): N concurrent point jobs (1-32)
   recording into `make server` (PostgreSQL, authentication on) at 1, 2 and 4 workers: requests/s,
   p50/p99 latency and errors against N; a restart of the server under 16 jobs against the
   clients' retry budget.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from study.data import batches, sets
from study.measure import costs
from study.point.lifecycle import run_point
from study.record.tracking import MlflowTracker
from study.settings import config, hardware
from study.settings.config import DataConfig, ModelConfig, RecipeConfig, StudyConfig, TrackingConfig, TrainerConfig
from study.train import models, trainer
from study.train import recipe as recipes
from benchmarks.analysis_bench import bench_adaptive, bench_analysis, bench_calibration
from benchmarks.compile_bench import bench_compile
from benchmarks.identity_bench import bench_fingerprint
from benchmarks.server_bench import bench_server
from benchmarks.speed import bench_precision, bench_speed
from benchmarks.study_bench import bench_decide_vs_grid, bench_default_study, bench_pack
from benchmarks.latency_bench import bench_latency
from benchmarks.stream_bench import bench_stream

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


class _Sink:
    def log_epoch(self, epoch, metrics, timestamp_ms=None):
        pass


def _setup(width: float, depth: int, resolution: int, batch: int):
    ds = sets.prepare(DataConfig(resolution=resolution))
    model = models.build_model(depth, width, num_classes=ds.num_classes, in_chans=ds.in_chans)
    model = model.to(memory_format=torch.channels_last)
    batcher = batches.Batcher(ds, device=CPU, augment="crop", crop_padding=0.125)
    return ds, model, batcher, RecipeConfig(epochs=2, batch_size=batch, warmup_epochs=0.2)


def trainer_img_per_s(ds, model, batcher, recipe) -> float:
    fitted = trainer.fit(model, ds, batcher, recipe, TrainerConfig(progress=False), seed=0, sink=_Sink(),
                         device=CPU)
    return fitted.metrics["train_img_per_s"]


def bare_img_per_s(ds, model, batcher, recipe) -> float:
    """The loop a researcher writes by hand; timed like the trainer (epochs after the first)."""
    opt = recipes.make_optimizer(model, recipe)
    sched = recipes.make_schedule(opt, recipe, batcher.steps_per_epoch(ds.train, recipe.batch_size))
    loss_fn = recipes.make_loss(recipe)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(recipe.epochs):
        model.train()
        t0 = time.perf_counter()
        for x, y in batcher.train(ds.train, recipe.batch_size, gen):
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        times.append(time.perf_counter() - t0)
    steps = batcher.steps_per_epoch(ds.train, recipe.batch_size)
    return steps * recipe.batch_size / (sum(times[1:]) / len(times[1:]))


def bench_trainer(args) -> list[tuple]:
    ds, model, batcher, recipe = _setup(args.width, args.depth, args.resolution, args.batch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ours, bare = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine speed hits both alike
        model.load_state_dict(state)
        ours.append(trainer_img_per_s(ds, model, batcher, recipe))
        model.load_state_dict(state)
        bare.append(bare_img_per_s(ds, model, batcher, recipe))
    name = f"w={args.width} d={args.depth} r={args.resolution} b={args.batch}"
    return [("trainer img/s / bare loop img/s", name, max(ours), max(bare), max(ours) / max(bare), ">= 0.97")]


def bench_pipeline(args) -> list[tuple]:
    ds, model, batcher, recipe = _setup(args.width, args.depth, args.resolution, args.batch)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    n = 0
    for _ in range(5):
        for _batch in batcher.train(ds.train, recipe.batch_size, gen):
            n += 1
    pipeline = n / (time.perf_counter() - t0)
    step = trainer_img_per_s(ds, model, batcher, recipe) / recipe.batch_size
    return [("input batches/s / train steps/s", "augment+normalise", pipeline, step, pipeline / step, ">= 10")]


def bench_fixed_cost(args) -> list[tuple]:
    with tempfile.TemporaryDirectory() as home:
        tracking = TrackingConfig(uri=f"sqlite:///{home}/mlflow.db", artifact_root=f"{home}/artifacts")
        tracker = MlflowTracker(tracking.uri, "bench", tracking.artifact_root)
        base = StudyConfig(model=ModelConfig(depth=args.depth, width=args.width),
                           data=DataConfig(resolution=args.resolution),
                           recipe=RecipeConfig(epochs=1, batch_size=args.batch, warmup_epochs=0.2),
                           trainer=TrainerConfig(progress=False), tracking=tracking, sweep="bench")
        config.validate(base)
        quiet = lambda _line: None  # noqa: E731
        run_point(replace(base, seed=99), tracker=tracker, device=CPU, echo=quiet)  # warm: data, kernels
        fixed = []
        for seed in range(3):
            study = replace(base, seed=seed)
            t0 = time.perf_counter()
            run_point(study, tracker=tracker, device=CPU, echo=quiet)
            wall = time.perf_counter() - t0
            run = tracker.client.get_run(tracker.run_id)
            loop = run.data.metrics["point_time_s"] - run.data.metrics["point_fixed_s"]
            fixed.append(wall - loop)
    return [("fixed cost of a point, s", "all but the epochs", min(fixed), None, None, "<= 2 s")]


def bench_skip(args) -> list[tuple]:
    def sweep(widths: str, home: str) -> float:
        cmd = [sys.executable, "-m", "study.run", "--multirun", "--config-dir", "sweeps", "--config-name",
               "smoke", f"model.width={widths}", "model.depth=14", "data.resolution=12,16",
               "recipe.epochs=1,2", "data.synthetic_images=200", "trainer.progress=false"]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, STUDY_HOME=home), check=True,
                       capture_output=True)
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as home:
        sweep("0.25,0.5", home)                        # record 8 points
        all8 = min(sweep("0.25,0.5", home) for _ in range(2))
        four = min(sweep("0.25", home) for _ in range(2))  # the same start-up, 4 points fewer
    per_point = (all8 - four) / 4
    return [("skip a finished point, s", "CLI sweep, start-up removed", per_point, None, None, "<= 0.5 s"),
            ("  a sweep run of 4 skipped points, s", "process start-up included", four, None, None, "")]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--depth", type=int, default=26)
    p.add_argument("--resolution", type=int, default=28)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--studies", type=int, default=100, help="simulated studies per truth family (adaptive)")
    p.add_argument("--only", choices=["trainer", "pipeline", "fixed", "skip", "speed", "analysis", "calibration",
                                     "adaptive", "stream", "latency", "compile", "precision", "fingerprint", "default-study",
                                     "decide-vs-grid", "pack", "server"],
                   action="append")
    args = p.parse_args(argv)
    import mlflow  # noqa: F401  (configures its loggers on import; quieten them after)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    benches = {"trainer": bench_trainer, "pipeline": bench_pipeline, "fixed": bench_fixed_cost,
               "skip": bench_skip, "speed": bench_speed, "analysis": bench_analysis,
               "calibration": bench_calibration, "adaptive": bench_adaptive,
               "stream": bench_stream, "latency": bench_latency, "compile": bench_compile,
               "precision": bench_precision, "fingerprint": bench_fingerprint}
    # run only when named: real sweeps, 30+ minutes
    opt_in = {"default-study": bench_default_study, "decide-vs-grid": bench_decide_vs_grid, "pack": bench_pack,
              "server": bench_server}
    machine = costs.machine(CPU)
    print(f"torch {torch.__version__}, {machine['measure.cpu']} ({machine['measure.isa']}), "
          f"{machine['measure.threads']} threads; trainer.precision=auto is {hardware.resolve_precision('auto', CPU)} here")
    print(f"{'measure':<34} {'case':<28} {'ours':>9} {'baseline':>9} {'ratio':>7}  target")
    for name in args.only or benches:
        for row in (benches | opt_in)[name](args):
            label, case, ours, base, ratio, target = row
            fmt = lambda v: "-" if v is None else f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}"  # noqa: E731
            print(f"{label:<34} {case:<28} {fmt(ours):>9} {fmt(base):>9} {fmt(ratio):>7}  {target}", flush=True)


if __name__ == "__main__":
    main()
