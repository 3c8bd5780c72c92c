"""Checkpoints: atomic, checksummed, loaded weights-only; a resumed training equals an
uninterrupted one; a corrupted checkpoint is detected."""
from __future__ import annotations

import pytest
import torch

from study.data import batches, sets
from study.record.tracking import NullTracker
from study.settings.config import DataConfig, RecipeConfig, TrainerConfig
from study.train import models, trainer
from study.train.checkpoint import Checkpoint, CorruptCheckpoint

CPU = torch.device("cpu")
# The full long-regime recipe, so every piece of state (EMA, RandAugment, dropout, stochastic
# depth, schedule, momentum) has to come back for the results to match.
RECIPE = RecipeConfig(epochs=3, batch_size=32, warmup_epochs=0.5, ema_decay=0.9999, randaugment_ops=2,
                      dropout=0.25, stochastic_depth=0.1, label_smoothing=0.1)


class Interrupt(Exception):
    pass


class DieAfter(NullTracker):
    """A sink that 'kills' the training right after an epoch's checkpoint was written."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.die_after = epoch

    def log_epoch(self, epoch, metrics, timestamp_ms=None) -> None:
        super().log_epoch(epoch, metrics)
        if epoch == self.die_after:
            raise Interrupt


def _fit(sink, checkpoint=None, resume=None):
    ds = sets.prepare(DataConfig(name="synthetic", resolution=12, synthetic_images=400))
    torch.manual_seed(0)
    model = models.build_model(14, 0.25, num_classes=ds.num_classes, dropout=RECIPE.dropout,
                               stochastic_depth=RECIPE.stochastic_depth)
    batcher = batches.Batcher(ds, device=CPU, augment="flip_crop", crop_padding=0.125, randaugment=(2, 10))
    sink.start_point("t", {}, {"point_key": "k"})
    return trainer.fit(model, ds, batcher, RECIPE, TrainerConfig(progress=False, deterministic=True), seed=0,
                       sink=sink, device=CPU, checkpoint=checkpoint, resume=resume, run_id="run-1")


def whole_and_resumed(fit, checkpoint: Checkpoint) -> tuple:
    """(uninterrupted fit, the state saved when a second fit was killed after epoch 2, that fit
    resumed in a process with another RNG state), all in deterministic mode. `fit(sink,
    checkpoint=None, resume=None)` trains the same point each time."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        whole = fit(NullTracker())
        with pytest.raises(Interrupt):
            fit(DieAfter(2), checkpoint=checkpoint)
        state = checkpoint.load()
        torch.manual_seed(123)  # the process that resumes starts from another RNG state
        return whole, state, fit(NullTracker(), checkpoint=checkpoint, resume=state)
    finally:
        torch.use_deterministic_algorithms(False)


def test_resumed_training_equals_an_uninterrupted_one(tmp_path):
    whole, state, resumed = whole_and_resumed(_fit, Checkpoint(tmp_path / "p.pt"))
    assert state["epoch"] == 2 and state["run_id"] == "run-1" and state["ema"]["step"] > 0
    assert resumed.epoch_history == [{**h, "epoch_time_s": r["epoch_time_s"]}
                                     for h, r in zip(whole.epoch_history, resumed.epoch_history)]
    for key in ("top1", "top5", "minival/top1", "minival/top1_no_ema"):
        assert resumed.metrics[key] == whole.metrics[key], key


def test_checkpoint_is_written_atomically_and_round_trips(tmp_path):
    ckpt = Checkpoint(tmp_path / "sub" / "p.pt")
    assert ckpt.load() is None
    state = {"epoch": 1, "w": torch.arange(4.0), "history": [{"a": 1.0}], "run_id": "r"}
    ckpt.save(state)
    assert not list((tmp_path / "sub").glob("*.tmp"))
    loaded = ckpt.load()
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], state["w"]) and loaded["history"] == [{"a": 1.0}]
    ckpt.remove()
    assert ckpt.load() is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_corrupted_checkpoint_is_detected(tmp_path, damage):
    ckpt = Checkpoint(tmp_path / "p.pt")
    ckpt.save({"epoch": 1, "w": torch.randn(1000)})
    raw = ckpt.path.read_bytes()
    damaged = {"truncate": raw[: len(raw) // 2], "flip": raw[:-10] + bytes([raw[-10] ^ 0xFF]) + raw[-9:],
               "empty": b"", "garbage": b"not a checkpoint at all"}[damage]
    ckpt.path.write_bytes(damaged)
    with pytest.raises(CorruptCheckpoint):
        ckpt.load()


def test_checkpoints_load_weights_only(tmp_path):
    import hashlib
    import io
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    payload = io.BytesIO()
    pickle.dump({"epoch": Evil()}, payload)
    body = payload.getvalue()
    (tmp_path / "p.pt").write_bytes(hashlib.sha256(body).hexdigest().encode() + b"\n" + body)
    with pytest.raises(CorruptCheckpoint):
        Checkpoint(tmp_path / "p.pt").load()
