"""Per-point checkpoints: written atomically after every epoch, verified by a SHA-256 of their
bytes, loaded with `weights_only=True`, removed when the point finishes (unless kept).

File layout: 64 hex digits of the payload's SHA-256, a newline, then the payload (a
`torch.save` of plain tensors, numbers, strings, lists and dicts). A truncated or altered
file fails the check and raises `CorruptCheckpoint`; the caller restarts that point.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

DIGEST_LEN = 64


class CorruptCheckpoint(RuntimeError):
    """The checkpoint is truncated, altered or unreadable."""


class Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def save(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # readers see the old file or the new one, never a mix

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none; raises CorruptCheckpoint."""
        if not self.path.exists():
            return None
        raw = self.path.read_bytes()
        digest, payload = raw[:DIGEST_LEN].decode("ascii", "replace"), raw[DIGEST_LEN + 1:]
        if len(raw) <= DIGEST_LEN or hashlib.sha256(payload).hexdigest() != digest:
            raise CorruptCheckpoint(f"{self.path}: checksum mismatch ({len(raw)} bytes)")
        try:
            return torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
        except Exception as e:  # a valid checksum over an unreadable payload
            raise CorruptCheckpoint(f"{self.path}: {type(e).__name__}: {e}") from e

    def remove(self) -> None:
        for p in (self.path, self.path.with_name(self.path.name + ".tmp")):
            p.unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
