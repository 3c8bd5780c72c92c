"""Measurements are pure functions returning dicts with the documented fields."""
from __future__ import annotations

import torch

from study.measure import costs
from study.train import models


def test_complexity_counts_params_flops_and_activations():
    model = models.build_model(14, 0.25, num_classes=10, in_chans=1)
    c = costs.complexity(model, 16, 1)
    assert c["params"] == sum(p.numel() for p in model.parameters())
    assert c["flops"] > 2 * c["params"] * 0.01 and c["activations"] > 0
    assert costs.complexity(model, 32, 1)["flops"] > c["flops"]
    assert model.training, "measuring must not leave the model in eval mode"


def test_flops_are_two_per_multiply_add():
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10, bias=False))
    assert costs.complexity(lin, 8, 3)["flops"] == 2 * 3 * 8 * 8 * 10


def test_latency_reports_median_and_batch_size():
    model = models.build_model(14, 0.25, num_classes=10, in_chans=1)
    lat = costs.inference_latency(model, 16, 1, batch_size=4, repeats=3, warmup=1)
    assert lat["latency_batch"] == 4 and lat["latency_ms"] > 0
    assert lat["inference_img_per_s"] == __import__("pytest").approx(4 / (lat["latency_ms"] / 1e3))
    assert costs.peak_memory_mb(torch.device("cpu"))["peak_mem_mb"] > 10


def test_the_training_step_latency_is_at_the_largest_batch_up_to_128_that_fits(monkeypatch):
    model = models.build_model(14, 0.25, num_classes=10, in_chans=1)
    step = costs.training_step_latency(model, 12, 1, 10, repeats=3, warmup=1)
    assert step["step_batch"] == 128
    assert step["step_latency_min_ms"] <= step["step_latency_ms"] <= step["step_latency_max_ms"]
    assert step["step_img_per_s"] == __import__("pytest").approx(128 / step["step_latency_ms"] * 1e3)
    # a step holds at least its weights, gradients and momentum (3 copies) and more at batch 128 than at 8
    weights_mb = sum(p.numel() for p in model.parameters()) * 4 / 2 ** 20
    small = costs.training_step_latency(model, 12, 1, 10, repeats=2, warmup=1, batch_max=8)
    assert 3 * weights_mb < small["step_peak_mem_mb"] < step["step_peak_mem_mb"]
    real = costs._training_step

    def small_device(model, resolution, in_chans, num_classes, batch, *rest):
        if batch > 40:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return real(model, resolution, in_chans, num_classes, batch, *rest)

    monkeypatch.setattr(costs, "_training_step", small_device)
    assert costs.training_step_latency(model, 12, 1, 10, repeats=2, warmup=1)["step_batch"] == 32


def test_a_measurement_names_its_machine():
    m = costs.machine(torch.device("cpu"))
    assert {"measure.cpu", "measure.isa", "measure.threads", "measure.device"} <= m.keys()
    assert m["measure.device"] == "cpu" and int(m["measure.threads"]) >= 1
