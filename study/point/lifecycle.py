"""The lifecycle of one grid point, as explicit steps:

    own -> migrate -> record a kept training -> skip -> resume / adopt / start -> tune -> train
        -> measure -> record

- own: take the point's lease (study.point.files). A point that another live process is
  training is left to it ("BUSY"); a live run is never adopted.
- migrate: runs recorded under the point's earlier keys (key version 0, or an image folder's
  key before data fingerprints) are found again or reported (study.point.migrate).
- record a kept training: a training that finished while the store was unreachable was kept
  on disk; it is recorded now, into its own run, and the point is not trained again.
- skip: a FINISHED run of the run key (unless force=true) ends the point.
- resume / adopt / start: continue the run named by a sound checkpoint, else take over the
  point's run left RUNNING by a killed process before its first checkpoint, else start a run.
- tune: with tune.trials > 0, tune on minival (study.train.tune); the best settings go through the
  schema again and are recorded as the values trained with.
- train, measure: the shared trainer, then FLOPs, parameters, latency and memory.
- record: the result is written beside the checkpoint first, then sent to the store. A store
  that does not answer during the epochs pauses logging, not training (EpochLog); one that
  fails at the end leaves the training kept on disk ("UNRECORDED") for the next run to record.
  Only a failure of the training itself fails the point.
- interrupted: SIGTERM (scancel, a scheduler's preemption or time limit, kill) or Ctrl-C while
  the point runs leaves its run KILLED with the reason and its checkpoint kept; a rerun (or the
  requeued job) resumes it. The process then ends by SIGTERM, as the sender asked.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

from study.data import loader, sets
from study.measure import costs
from study.point import device as devices
from study.point import faults
from study.point.files import PointFiles
from study.point.interrupt import PEER_ENDED, sigterm_waits, terminated_as_interrupt
from study.point.migrate import earlier_keys
from study.record import provenance
from study.record.redaction import redact
from study.record.tracking import Tracker
from study.settings import config, grid, hardware
from study.settings.config import StudyConfig, training_seed
from study.train import distributed, models, trainer, tune
from study.train.checkpoint import CorruptCheckpoint
from study.train.distributed import ALONE, World

Echo = Callable[[str], None]
OUTCOME_METRICS = ("top1", "flops", "params", "latency_ms", "train_img_per_s")


def run_point(study: StudyConfig, *, tracker: Tracker, device: torch.device,
              position: tuple[int, int] = (1, 1), parallel_jobs: int = 1, resolved_config: str = "",
              choices: list[str] = (), echo: Echo = print, label: str = "", placement: dict | None = None,
              world: World = ALONE, rerun: str = "") -> dict:
    """Own, train, measure and record one validated grid point (its `auto` settings resolved by
    study.point.device.resolve); returns its outcome (status FINISHED, SKIPPED, FAILED, BUSY or
    UNRECORDED, with the run id and headline metrics). `placement`: tags saying how it ran
    (study.point.device.placement). `rerun`: the command that reruns the point as it is (a failed
    point names it, changed to rerun it another way). In a `world` of several processes this is rank 0: it tells the
    others (follow_point) what to train, or that there is nothing to train."""
    start = time.perf_counter()
    name, run_key = grid.display_name(study, choices), grid.run_key(study)
    prefix = f"[{position[0]}/{position[1]}] {name}"
    files = PointFiles(study.sweep, run_key)
    outcome = {"name": name, "point_key": grid.point_key(study)}
    plan = distributed.Plan(world)
    if owner := files.acquire():
        echo(f"{prefix}  skipped: being trained right now by {owner}")
        plan.tell(None)
        return outcome | {"status": "BUSY", "owner": owner, "seconds": time.perf_counter() - start}
    with terminated_as_interrupt(world):  # outermost: the lease is released before SIGTERM ends the process
        try:
            said = _lifecycle(study, files, tracker, device, name, prefix, parallel_jobs, resolved_config,
                              partial(_say, echo, prefix), label, placement or {}, plan, rerun)
        finally:
            files.release()
            plan.tell(None)  # rank 0 trained nothing (skipped, failed before training): the others stop
    return outcome | said | {"seconds": time.perf_counter() - start}


def follow_point(study: StudyConfig, *, device: torch.device, world: World, parallel_jobs: int = 1) -> dict:
    """A rank > 0 of a point on several processes: train what rank 0 plans, from the checkpoint
    it resumes, recording nothing (rank 0 records, checkpoints and measures)."""
    plan = distributed.tell(world)
    if plan is None:
        return {"status": "FOLLOWED", "rank": world.rank}
    study = plan["study"]
    devices.configure(study, parallel_jobs)
    ds = sets.prepare(study.data)
    resume = PointFiles(study.sweep, grid.run_key(study)).checkpoint.load() if plan["resume"] else None
    memory_format = _memory_format(study)
    try:
        _train(study, ds=ds, device=device, memory_format=memory_format, workers=plan["workers"],
               sink=_Unrecorded(), resume=resume, run_id=plan["run_id"], world=world)
    except Exception as e:
        if distributed.peer_lost(e, world):
            raise
        # every process meets a divergence or an injected fault at the same step: rank 0 records it
        return {"status": "FAILED", "rank": world.rank, "reason": failure_reason(e, study.trainer.precision)}
    return {"status": "FOLLOWED", "rank": world.rank}


class _Unrecorded:
    def log_epoch(self, epoch: int, metrics: dict[str, float], timestamp_ms: int | None = None) -> None:
        pass


def _say(echo: Echo, prefix: str, text: str) -> None:
    echo(f"{prefix}  {text}")


def _lifecycle(study, files, tracker, device, name, prefix, parallel_jobs, resolved_config, say, label,
               placement, plan: distributed.Plan, rerun: str = "") -> dict:
    start = time.perf_counter()
    run_key, key = files.run_key, grid.point_key(study)
    earlier_keys(study, tracker, run_key, key, say)
    if (recorded := _record_kept(study, files, tracker, say)) and not study.force:
        return recorded
    if not study.force and (run_id := tracker.finished_run(run_key)):
        if not study.trainer.keep_checkpoints:
            files.checkpoint.remove()  # left by a process killed between finishing and cleaning up
        say(f"skipped: finished as run {run_id[:8]}")
        return {"status": "SKIPPED", "run_id": run_id}

    threads = devices.configure(study, parallel_jobs)
    ds = sets.prepare(study.data)
    workers = sets.workers_for(study.data.workers, device, hardware.usable_cores(), parallel_jobs) \
        if ds.streamed else 0
    params = point_params(study) | ds.sizes() | {"point_key": key}
    tags = {"point_key": key, "run_key": run_key, "key_version": str(grid.KEY_VERSION), "device": str(device),
            "threads": str(threads), **data_tags(study, ds, workers), **placement, **provenance.tags()}
    run_id, resume = _open_run(study, files, tracker, name, params, tags, say)
    memory_format = _memory_format(study)
    train = partial(_train, ds=ds, device=device, memory_format=memory_format, workers=workers,
                    label=f"{label} | {prefix}" if label else prefix, world=plan.world)
    ckpt = files.checkpoint if study.trainer.checkpoints else None
    artifacts: dict[str, Any] = {"config.yaml": resolved_config}
    epochs = EpochLog(tracker, say, study.recipe.epochs)
    try:
        if study.tune.trials:
            study, artifacts["tuning.json"] = _tune(study, train, tracker, say)
            params |= tune.trained_values(study)
        costs.reset_peak_memory(device)
        plan.tell({"study": study, "resume": resume is not None, "run_id": run_id, "workers": workers})
        model, fitted = train(study, sink=epochs, checkpoint=ckpt, resume=resume, run_id=run_id)
        metrics = _measure(model, ds, study, fitted, device, memory_format)
    except BaseException as e:
        with sigterm_waits():  # a SIGTERM now (the launcher stopping the rest) waits for the record
            failed = _ended(e, study, plan.world, files, tracker, say, rerun)
        if failed is None:
            raise
        return failed | {"run_id": run_id}
    metrics["point_time_s"] = time.perf_counter() - start
    metrics["point_fixed_s"] = metrics["point_time_s"] - fitted.loop_time_s  # all but the epochs
    if study.data.name == "image_folder":
        metrics["data.unreadable_images"] = len(ds.unreadable)
    if ds.unreadable:
        artifacts["unreadable.json"] = dict(sorted(ds.unreadable.items()))
        say(f"{len(ds.unreadable)} unreadable image(s) skipped, listed in the run's unreadable.json")
    artifacts["record.json"] = {"params": params, "metrics": metrics, "epochs": fitted.epoch_history}
    record = {"run_id": run_id, "name": name, "params": params, "tags": tags, "epochs": epochs.pending,
              "metrics": metrics, "artifacts": artifacts, "late_tags": {"compile": fitted.compile}}
    return _record(record, study, files, tracker, say)


def data_tags(study: StudyConfig, ds: sets.DataSplits, workers: int) -> dict[str, str]:
    """How the data was read: in memory or streamed (and by how many workers), from which folder
    and from which copy (`make prepare-data`)."""
    tags = {"data.loader": "stream" if ds.streamed else "memory"}
    if study.data.name == "image_folder":
        tags["data.root"] = str(Path(study.data.root).expanduser().resolve())
    if ds.streamed:
        tags["data.workers"] = str(workers)
    if copy := config.prepared(study.data.root if study.data.name == "image_folder" else None):
        tags |= {"data.prepared_from": str(copy["source"]), "data.prepared_side": str(copy["side"])}
    return tags


def point_params(study: StudyConfig) -> dict[str, Any]:
    """The point run's params: its semantic settings; tune.* only when it is tuned, and then
    without the tuned settings (they are added with the values trained with)."""
    tuned = set(study.tune.space) if study.tune.trials else set()
    return {k: v for k, v in grid.semantic_settings(study).items()
            if k not in tuned and (study.tune.trials or not k.startswith("tune."))}


def _open_run(study, files: PointFiles, tracker: Tracker, name, params, tags, say) -> tuple[str, dict | None]:
    """(run id, checkpoint state or None): resume, adopt an orphan, or start a run."""
    resume = _resumable(files, tracker, say) if study.trainer.checkpoints else None
    if resume:
        say(f"resuming run {resume['run_id'][:8]} after epoch {resume['epoch']}")
        tracker.annotate(params, tags)  # where it runs now: host, job ids, restarts
        return resume["run_id"], resume
    if run_id := tracker.adopt_orphan(files.run_key):
        say(f"restarting run {run_id[:8]} (interrupted before its first checkpoint)")
        tracker.annotate(params, tags)  # a kill between creating the run and its params left none
        return run_id, None
    return tracker.start_point(name, params, tags), None


def _resumable(files: PointFiles, tracker: Tracker, say) -> dict | None:
    """The saved state of this point's interrupted run, if it is sound and its run can go on."""
    try:
        state = files.checkpoint.load()
    except CorruptCheckpoint as e:
        say(f"checkpoint corrupt, restarting the point from scratch: {e}")
        files.checkpoint.remove()
        return None
    if state is None:
        return None
    if not tracker.resume_point(state["run_id"], files.run_key):
        say(f"checkpoint of run {state['run_id'][:8]} cannot be resumed there; restarting")
        files.checkpoint.remove()
        return None
    return state


def _ended(e: BaseException, study, world: World, files: PointFiles, tracker: Tracker, say: Echo,
           rerun: str) -> dict | None:
    """Record how a point's training ended early: a training that failed is FAILED (its
    checkpoint dropped: a retry starts afresh; the sweep goes on) and its outcome returned; an
    interruption (Ctrl-C, SIGTERM, another of its processes gone) is KILLED with its checkpoint
    kept for a rerun to resume, and None returned (the caller raises it on)."""
    if not isinstance(e, Exception) or distributed.peer_lost(e, world):
        reason = PEER_ENDED.format(world.size) + f" ({_brief(e)[:150]})" if isinstance(e, Exception) \
            else str(e) or type(e).__name__
        _quietly(lambda: tracker.fail_point(f"interrupted: {reason}", status="KILLED"), say)
        return None
    reason, again = failure_reason(e, study.trainer.precision), another_way(e, study, rerun)
    _quietly(lambda: tracker.fail_point(reason, rerun=again), say)
    files.checkpoint.remove()
    say(f"FAILED: {reason}" + (f"\n    to rerun it {again}" if again else ""))
    if not isinstance(e, (trainer.DivergedError, torch.OutOfMemoryError, MemoryError)):
        traceback.print_exception(e)
    return {"status": "FAILED", "reason": reason, "rerun": again}


class EpochLog:
    """The trainer's sink for the point run's epochs. While the store does not answer, epochs
    wait here (`pending`) and training goes on; each later epoch, and the record step, sends
    what is waiting, in order. The `last` epoch is sent with the record: it has no checkpoint
    (the point finishes at once), so a process killed between logging it and the record would
    train it again from the checkpoint before it and log it a second time."""

    def __init__(self, tracker: Tracker, say: Echo, last: int) -> None:
        self.tracker, self.say, self.last = tracker, say, last
        self.pending: list[list] = []
        self.paused = False

    def log_epoch(self, epoch: int, metrics: dict[str, float], timestamp_ms: int | None = None) -> None:
        # stamped once (by the trainer, at the epoch's end): sent again, it is the same record
        self.pending.append([epoch, dict(metrics), timestamp_ms or int(time.time() * 1000)])
        keep = 1 if epoch == self.last else 0
        try:
            while len(self.pending) > keep:
                self.tracker.log_epoch(*self.pending[0])
                self.pending.pop(0)
        except Exception as e:
            if not self.paused:
                self.say(f"tracking store unavailable ({_brief(e)}): logging paused, training goes on")
            self.paused = True
            return
        if self.paused:
            self.say("tracking store back: logging resumed")
            self.paused = False


def _record(record: dict, study: StudyConfig, files: PointFiles, tracker: Tracker, say) -> dict:
    """Keep the result on disk, send it to the store, then clean up; a store failure leaves the
    training kept for the next run."""
    files.save_record(record)
    try:
        tracker.annotate({}, record["late_tags"])  # learned in training: sent with the record
        tracker.finish_point(record["metrics"], record["artifacts"], record["epochs"])
    except Exception as e:
        say(f"NOT RECORDED: the store failed ({_brief(e)}); the training is kept in {files.record_path} "
            f"and the next run of this point records it")
        return {"status": "UNRECORDED", "run_id": record["run_id"], "reason": _brief(e)}
    _clean_up(study, files)
    say(f"top1={record['metrics']['top1']:.3f}")
    return _finished(record)


def _record_kept(study: StudyConfig, files: PointFiles, tracker: Tracker, say) -> dict | None:
    """Record a training kept on disk by an earlier run (the store failed then) into its run."""
    record = files.pending_record()
    if record is None:
        return None
    try:
        if tracker.finished_run(files.run_key) == record["run_id"]:  # it did arrive after all
            _clean_up(study, files)
            return None
        if not tracker.resume_point(record["run_id"], files.run_key):
            record["run_id"] = tracker.start_point(record["name"], record["params"], record["tags"])
        tracker.annotate({}, record.get("late_tags", {}) | {"recorded_late": "true"})
        tracker.finish_point(record["metrics"], record["artifacts"], record["epochs"])
    except Exception as e:
        say(f"NOT RECORDED: the store still fails ({_brief(e)}); the training stays kept in {files.record_path}")
        return {"status": "UNRECORDED", "run_id": record["run_id"], "reason": _brief(e)}
    _clean_up(study, files)
    say(f"recorded the training kept from an earlier run in run {record['run_id'][:8]}: "
        f"top1={record['metrics']['top1']:.3f}")
    return _finished(record)


def _finished(record: dict) -> dict:
    return {"status": "FINISHED", "run_id": record["run_id"], **{k: record["metrics"][k] for k in OUTCOME_METRICS}}


def _clean_up(study: StudyConfig, files: PointFiles) -> None:
    files.remove_record()
    if not study.trainer.keep_checkpoints:
        files.checkpoint.remove()


def _quietly(call: Callable[[], None], say: Echo) -> None:
    """A store call whose failure must not hide the error being handled."""
    try:
        call()
    except Exception as e:
        say(f"could not record the point's status ({_brief(e)}); the next run takes the run over")


def _brief(e: BaseException) -> str:
    """One line; a tracking server's refusal (credentials that stopped working) says so first."""
    from study.record.contract import refused

    line = redact(f"{type(e).__name__}: {e}".splitlines()[0])[:300]
    return f"{why}; {line}" if (why := refused(e)) else line


def failure_reason(e: BaseException, precision: str) -> str:
    """The `status_reason` tag of a failed point: what happened, in one line; a divergence
    names the precision it trained in."""
    if isinstance(e, trainer.DivergedError):
        return f"diverged in {precision}: {e}"
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return f"out of memory: {e}"
    return f"error: {type(e).__name__}: {e}"


def another_way(e: BaseException, study: StudyConfig, rerun: str) -> str:
    """How to rerun a failed point another way (the `rerun_command` tag): a divergence in bf16
    in fp32, one in fp32 at half the learning rate, an out-of-memory at half the batch (each
    another point); else as it is. Empty when the command is not known."""
    if not rerun:
        return ""
    r = study.recipe
    if isinstance(e, trainer.DivergedError):
        change = ("in fp32", "trainer.precision=fp32") if study.trainer.precision == "bf16" else \
            ("at half the learning rate (another point)", f"recipe.lr_per_256={r.lr_per_256 / 2:g}")
    elif isinstance(e, (torch.OutOfMemoryError, MemoryError)) and r.batch_size > 1:
        change = ("at half the batch (another point)", f"recipe.batch_size={r.batch_size // 2}")
    else:
        return f"as it is: {rerun}"
    return f"{change[0]}: {_with(rerun, change[1])}"


def _with(command: str, override: str) -> str:
    """`command` with `override` (name=value) in place of the value it gives that setting, or
    added, inside its POINT="..." when it has one: a twice-diverged point's command changes its
    learning rate, it does not list a second one."""
    name = override.split("=", 1)[0]
    given = re.compile(rf'(?<=[\s"])(\+{{0,2}}){re.escape(name)}=[^\s"]*')
    if found := given.search(command):  # the first keeps its place (and a + prefix), the others go
        rest = re.sub(rf' ?{given.pattern}', "", command[found.end():])
        return f"{command[:found.start()]}{found.group(1)}{override}{rest}"
    return f'{command[:-1]} {override}"' if command.endswith('"') else f"{command} {override}"


def _train(study: StudyConfig, *, ds: sets.DataSplits, device: torch.device, memory_format, sink,
           evaluate_test: bool = True, label: str = "", workers: int = 0, world: World = ALONE,
           **resume) -> tuple[torch.nn.Module, trainer.FitResult]:
    """Build and fit the point's model; `resume` passes checkpoint, resume and run_id on."""
    seed = training_seed(study)
    torch.manual_seed(seed)
    model = distributed.sync_batchnorm(_build(study, ds), world, study.trainer.sync_batchnorm == "true")
    model = model.to(device, memory_format=memory_format)
    if fault := faults.planned(grid.display_name(study)):
        faults.inject(model, fault)
    r = study.recipe
    batcher = loader.batcher(ds, study.data, device=device, memory_format=memory_format, workers=workers,
                           randaugment=(r.randaugment_ops, r.randaugment_magnitude))
    fitted = trainer.fit(model, ds, batcher, study.recipe,
                         study.trainer, seed=seed, sink=sink, device=device, evaluate_test=evaluate_test,
                         label=label, world=world, **resume)
    return model, fitted


def _tune(study: StudyConfig, train, tracker: Tracker, say) -> tuple[StudyConfig, dict]:
    """Tune on minival (trials nested under the point run); returns the study with the best
    trial's settings, validated, and the tuning report (the `tuning.json` artifact). The point
    run gets the values trained with as params, and the study's tags."""
    trial_metrics = lambda s, sink: train(s, sink=sink, evaluate_test=False)[1].metrics  # noqa: E731
    result = tune.tune_point(study, trial_metrics, tracker, lambda line: say(line.strip()))
    best = tune.apply(study, result.best_params)
    tracker.annotate(tune.trained_values(best), {
        "tuned": "true", "optuna.study": result.study_name, "optuna.best_trial": str(result.best_trial),
        "optuna.best_minival_top1": f"{result.best_value:.6f}", "optuna.importances": json.dumps(result.importances),
        "optuna.trials": json.dumps(result.trials)})
    say(f"best trial {result.best_trial}: minival top1={result.best_value:.4f} {tune.trained_values(best)}; "
        f"importances {result.importances}")
    return best, dataclasses.asdict(result)


def _memory_format(study: StudyConfig) -> torch.memory_format:
    return torch.channels_last if study.trainer.channels_last else torch.contiguous_format


def _build(study: StudyConfig, ds: sets.DataSplits) -> torch.nn.Module:
    return models.model_of(study.model, num_classes=ds.num_classes, in_chans=ds.in_chans, recipe=study.recipe)


def _measure(model, ds: sets.DataSplits, study: StudyConfig, fitted: trainer.FitResult, device, memory_format) -> dict:
    """The final metrics: the trainer's, peak memory, complexity and inference latency."""
    t = study.trainer
    latency = costs.inference_latency(
        model, ds.resolution, ds.in_chans, batch_size=t.latency_batch_size, repeats=t.latency_repeats,
        memory_format=memory_format, autocast_dtype=torch.bfloat16 if t.precision == "bf16" else None)
    return fitted.metrics | costs.peak_memory_mb(device) | costs.complexity(model, ds.resolution, ds.in_chans) \
        | latency
