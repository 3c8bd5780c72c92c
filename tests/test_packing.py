"""Packing points onto GPUs (study.point.packing), on fake device lists: slots sized from memory
figures, placement spread over the GPUs, points that run alone, refusal of one that never fits."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from study.point import packing
from study.point.packing import CONTEXT_MB, Gpu, RESERVE_MB
from study.settings.config import ConfigError
from tests.conftest import ROOT


def test_auto_packs_as_many_as_the_free_memory_holds_and_spreads_slots_over_the_gpus():
    gpus = [Gpu(0, 10_000 + RESERVE_MB), Gpu(1, 5_000 + RESERVE_MB)]
    peaks = {"a": 1_000 - CONTEXT_MB, "b": 500 - CONTEXT_MB + 100}
    p = packing.plan("auto", peaks, gpus)
    assert p.per_gpu == {0: 10, 1: 5} and p.alone == () and set(p.packed) == {"a", "b"}
    assert p.slots[:4] == [0, 1, 0, 1] and p.slots.count(0) == 10 and p.slots.count(1) == 5


def test_a_point_too_big_to_share_runs_alone_and_one_too_big_for_any_gpu_is_refused():
    gpus = [Gpu(0, 8_000 + RESERVE_MB)]
    p = packing.plan(4, {"small": 1_000, "big": 3_000}, gpus)
    assert p.per_gpu == {0: 4} and p.packed == ("small",) and p.alone == ("big",)
    assert "run alone" in " ".join(p.lines()) and "big" in p.lines()[1]
    with pytest.raises(ConfigError, match=r"point huge: needs about 9600 MiB .* lower recipe.batch_size"):
        packing.plan("auto", {"small": 1_000, "huge": 9_000}, gpus)
    with pytest.raises(ConfigError, match="needs a GPU"):
        packing.plan("auto", {"small": 1_000}, [])


@pytest.mark.parametrize("bad", ["0", "-2", "many", "1.5"])
def test_a_bad_pack_setting_names_what_is_allowed(bad):
    with pytest.raises(ConfigError, match=r"hydra.launcher.pack=.* \(PACK\): allowed are a whole number of points per GPU \(1 or more"):
        packing.parse_pack(bad)


HOLD = ("import os, sys; from pathlib import Path; from study.point.packing import hold_slot; "
        "s = hold_slot(Path(sys.argv[1]), [0, 1, 0]); again = hold_slot(Path(sys.argv[1]), [0, 1, 0]); "
        "print(*s, again == s, os.environ['CUDA_VISIBLE_DEVICES'], flush=True); sys.stdin.read()")


def _holder(folder, env):
    return subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_each_job_process_holds_its_own_slot_for_life_and_sees_only_its_gpu(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="4,6")
    holders = [_holder(tmp_path, env) for _ in range(3)]
    try:
        seen = sorted(h.stdout.readline().split() for h in holders)
        # slots 0 and 2 are on GPU 0 (seen as device 4), slot 1 on GPU 1 (device 6); a process's
        # second job keeps the slot it holds
        assert seen == [["0", "0", "True", "4"], ["1", "1", "True", "6"], ["2", "0", "True", "4"]]
        fourth = _holder(tmp_path, env)
        _, err = fourth.communicate(timeout=60)
        assert fourth.returncode != 0 and "more jobs than slots" in err
        first = next(h for h, line in zip(holders, seen) if line[0] == "0")
        holders[holders.index(first)].communicate(input="", timeout=60)  # the process ends: its slot is free
        again = _holder(tmp_path, env)
        holders.append(again)
        assert again.stdout.readline().split()[:2] in (["0", "0"], ["1", "1"], ["2", "0"])
    finally:
        for h in holders:
            if h.poll() is None:
                h.communicate(input="", timeout=60)


def test_cpu_phases_pack_small_points_a_core_each_largest_first_and_run_large_ones_alone_after():
    big = (packing.ALONE_STEP_GFLOP + 1) * 1e9
    steps, weights = [1e9, big, 2e9, 5e8], [1.0, 9.0, 3.0, 2.0]
    phases = packing.cpu_phases("auto", steps, weights, cores=2)
    assert [(ph.points, ph.jobs, ph.alone) for ph in phases] == [((2, 3, 0), 2, False), ((1,), 1, True)]
    assert packing.cpu_phases(3, steps[:1], weights[:1], cores=8)[0].jobs == 1  # never more jobs than points
    assert packing.cpu_phases("4", [1e9] * 8, [1.0] * 8, cores=2)[0].jobs == 4
    lines = packing.phase_lines(phases, ["a", "b", "c", "d"], cores=2)
    assert lines == ["packing: 3 point(s) packed, 2 at once, 1 thread(s) each (the most compute first)",
                     "packing: 1 point(s) alone, 1 at once, 2 thread(s) each (b)"]


def test_gpu_phases_fill_every_slot_then_run_the_alone_points_one_per_gpu():
    gpus = [Gpu(0, 8_000 + RESERVE_MB), Gpu(1, 8_000 + RESERVE_MB)]
    p = packing.plan(2, {"s1": 1_000, "big": 3_500, "s2": 1_000, "s3": 1_000}, gpus)
    phases = packing.gpu_phases(p, ["s1", "big", "s2", "s3"], [1.0, 5.0, 3.0, 2.0], gpus)
    assert [(ph.points, ph.jobs, ph.slots, ph.alone) for ph in phases] == \
        [((2, 3, 0), 4, (0, 1, 0, 1), False), ((1,), 2, (0, 1), True)]


def test_the_fake_gpu_hook_stands_for_visible_gpus(monkeypatch):
    monkeypatch.setenv(packing.FAKE_GPUS, "24000,12000")
    assert packing.visible_gpus() == [Gpu(0, 24_000.0), Gpu(1, 12_000.0)]


def test_the_estimate_counts_weights_optimizer_state_and_kept_activations():
    assert packing.estimate_peak_mb(2**20, 0, 128, "fp32") == pytest.approx(16)
    assert packing.estimate_peak_mb(0, 2**20, 1, "bf16") == pytest.approx(4)
    assert packing.estimate_peak_mb(0, 2**20, 1, "fp32", data_mb=10) == pytest.approx(18)
