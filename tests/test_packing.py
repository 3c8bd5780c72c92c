"""Packing points onto GPUs (study.point.packing), on fake device lists: slots sized from memory
figures, placement spread over the GPUs, points that run alone, refusal of one that never fits."""
from __future__ import annotations

import os

import pytest

from study.point import packing
from study.point.packing import CONTEXT_MB, Gpu, RESERVE_MB
from study.settings.config import ConfigError


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
    with pytest.raises(ConfigError, match=r"pack=.*whole number of points per GPU \(1 or more\) or auto"):
        packing.parse_pack(bad)


def test_each_job_claims_its_own_slot_and_sees_only_its_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    slots = [0, 1, 0]
    with packing.claim_slot(tmp_path, slots) as first:
        assert first == 0 and os.environ["CUDA_VISIBLE_DEVICES"] == "4"
        with packing.claim_slot(tmp_path, slots) as second:
            assert second == 1  # (each job is its own process: here the env is the outer claim's)
            with packing.claim_slot(tmp_path, slots) as third:
                assert third == 0
                with pytest.raises(RuntimeError, match="more jobs than slots"):
                    with packing.claim_slot(tmp_path, slots):
                        pass
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,6"
    with packing.claim_slot(tmp_path, [1]) as again:  # released; a job sees its GPU by its own index
        assert again == 1 and os.environ["CUDA_VISIBLE_DEVICES"] == "6"


def test_the_estimate_counts_weights_optimizer_state_and_kept_activations():
    assert packing.estimate_peak_mb(2**20, 0, 128, "fp32") == pytest.approx(16)
    assert packing.estimate_peak_mb(0, 2**20, 1, "bf16") == pytest.approx(4)
    assert packing.estimate_peak_mb(0, 2**20, 1, "fp32", data_mb=10) == pytest.approx(18)
