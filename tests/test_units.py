"""Unit tests of small pieces the rest relies on: the store-retry wrapper, thread shares,
the sweep summary table, rerun handling in the analysis."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from study.point.device import threads_for
from study.record.tracking import Retrying
from study.sweep.callback import summary_table


class FakeClient:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures, self.calls = list(failures), 0

    def log_batch(self, run_id):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return f"logged {run_id}"


def test_retrying_rides_out_a_busy_or_restarting_store():
    client = FakeClient([Exception("database is locked"), Exception("Max retries exceeded ... Connection refused"),
                         Exception("status code 503")])
    sleeps = []
    assert Retrying(client, retry_s=60, sleep=sleeps.append).log_batch("r1") == "logged r1"
    assert client.calls == 4 and len(sleeps) == 3 and sleeps[0] < sleeps[-1]  # backoff grows


def test_retrying_raises_other_errors_at_once_and_transient_ones_past_the_budget():
    client = FakeClient([ValueError("INVALID_PARAMETER_VALUE: bad metric")])
    with pytest.raises(ValueError):
        Retrying(client, retry_s=60, sleep=lambda s: None).log_batch("r1")
    assert client.calls == 1
    down = FakeClient([ConnectionError("Connection refused")] * 1000)
    with pytest.raises(ConnectionError):
        Retrying(down, retry_s=0, sleep=lambda s: None).log_batch("r1")
    assert down.calls == 1


@pytest.mark.parametrize("requested,cores,jobs,threads", [
    (0, 16, 1, 16), (0, 16, 4, 4), (0, 2, 4, 1), (0, 7, 2, 3), (3, 16, 4, 3), (0, 8, 0, 8)])
def test_threads_share_the_cores_among_parallel_jobs(requested, cores, jobs, threads):
    assert threads_for(requested, cores, jobs) == threads


def test_summary_table_counts_every_status_and_says_what_to_do():
    results = [
        {"name": "w=0.5 d=14 r=12 e=1", "status": "FINISHED", "top1": 0.5, "flops": 2e6, "latency_ms": 1.5,
         "seconds": 3.0},
        {"name": "w=1 d=14 r=12 e=1", "status": "SKIPPED", "seconds": 0.2},
        {"name": "w=2 d=14 r=12 e=1", "status": "FAILED", "seconds": 1.0},
        {"name": "w=4 d=14 r=12 e=1", "status": "BUSY", "seconds": 0.0},
        {"name": "w=8 d=14 r=12 e=1", "status": "UNRECORDED", "seconds": 9.0},
    ]
    table = summary_table(results).splitlines()
    assert table[2].split() == ["1", "w=0.5", "d=14", "r=12", "e=1", "FINISHED", "0.500", "2.0", "1.50", "3.0"]
    assert table[3].split()[5:] == ["SKIPPED", "-", "-", "-", "0.2"]
    assert "5 points: 1 finished, 1 skipped, 1 failed, 1 busy, 1 unrecorded; 13s in points" in table
    assert any("another process" in line for line in table)
    assert any("run the sweep again to record them" in line for line in table)
    assert "busy" not in summary_table(results[:2]) and "0 failed" in summary_table(results[:2])


def test_analysis_keeps_the_latest_run_of_a_rerun_point_and_counts_the_rest(tmp_path):
    from analysis.load import by_configuration, load_runs

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("reruns")
    for run_key, seed, error, start in [("k1-s0", 0, 0.30, 1), ("k1-s0", 0, 0.20, 2), ("k1-s1", 1, 0.25, 3),
                                        ("k1-s0", 0, 0.99, 4)]:
        run = client.create_run(exp, start_time=start, tags={"point_key": "k1", "run_key": run_key})
        client.log_param(run.info.run_id, "seed", seed)
        client.log_param(run.info.run_id, "model.width", 0.5)
        client.log_param(run.info.run_id, "tune.trials", 0)
        client.log_metric(run.info.run_id, "error", error)
        client.set_terminated(run.info.run_id, "FAILED" if error > 0.9 else "FINISHED")
    runs = load_runs("reruns", uri)
    assert runs.excluded == {"rerun": 1, "FAILED": 1}
    assert sorted(runs.table["error"]) == [0.20, 0.25]  # the latest FINISHED run of k1-s0, and k1-s1
    assert "tune.trials" not in runs.table
    assert by_configuration(runs.table)["n_seeds"].tolist() == [2]


def _measured_run(client, exp, width: float, metrics: dict, tags: dict = ()) -> str:
    run = client.create_run(exp, tags={"point_key": f"k{width}", "run_key": f"k{width}-s0", **dict(tags)})
    client.log_param(run.info.run_id, "model.width", width)
    for key, value in {"error": 0.3, "latency_batch": 32, **metrics}.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_analysis_reads_the_latency_of_the_machine_it_is_told_and_never_mixes_machines(tmp_path):
    """A sweep measured alone on two machines (make measure on each) keeps both; analysis reads
    the one asked for, by default one that measured every run, and the in-job latency when a
    sweep was measured in parts on different machines."""
    from analysis.load import load_runs

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("machines")
    for width, in_job in [(0.25, 5.0), (0.5, 9.0)]:
        _measured_run(client, exp, width, {
            "latency_ms": in_job, "alone/cpu-EPYC-x2/step_latency_ms": 100 * width, "alone/cpu-EPYC-x2/step_batch": 128,
            "alone/cuda-H100/step_latency_ms": width, "alone/cuda-H100/step_batch": 128,
            "step_latency_ms": width, "step_batch": 128}, {"measure.machine": "cuda-H100"})
    default = load_runs("machines", uri)
    assert sorted(default.table["latency_ms"]) == [25.0, 50.0]  # both measured everywhere: the first by name
    assert "cpu-EPYC-x2" in default.latency and "also measured on cuda-H100" in default.latency
    gpu = load_runs("machines", uri, measured_on="cuda-H100")
    assert sorted(gpu.table["latency_ms"]) == [0.25, 0.5] and sorted(gpu.table["step_latency_ms"]) == [0.25, 0.5]
    with pytest.raises(LookupError, match=r"measured_on='tpu': 0 of 2 runs .* cpu-EPYC-x2 \(2 of 2 runs\)"):
        load_runs("machines", uri, measured_on="tpu")
    # a third point measured on the GPU only: the CPU no longer measured every run
    _measured_run(client, exp, 1.0, {"latency_ms": 20.0, "alone/cuda-H100/step_latency_ms": 1.0,
                                     "alone/cuda-H100/step_batch": 128})
    assert sorted(load_runs("machines", uri).table["latency_ms"]) == [0.25, 0.5, 1.0]
    with pytest.raises(LookupError, match="measured_on='cpu-EPYC-x2': 2 of 3 runs"):
        load_runs("machines", uri, measured_on="cpu-EPYC-x2")
    # measured in parts, one point on each machine: never mixed; the in-job latency and a hint
    parts = client.create_experiment("parts")
    _measured_run(client, parts, 0.25, {"latency_ms": 5.0, "alone/cpu-EPYC-x2/step_latency_ms": 9.0})
    _measured_run(client, parts, 0.5, {"latency_ms": 30.0, "alone/cuda-H100/step_latency_ms": 0.5})
    split = load_runs("parts", uri)
    assert sorted(split.table["latency_ms"]) == [5.0, 30.0] and "make measure" in split.latency
