"""What a point keeps on disk between processes, under <project>/checkpoints/<sweep>/:

- `<run key>.pt`: its training checkpoint (study.train.checkpoint), so a killed point resumes;
- `<run key>.lock`: its lease. One live process owns a point at a time: it holds an exclusive
  `flock` on this file while it trains and records the point. The kernel drops the lock when
  the process ends, however it ends (SIGKILL included), so a lease never outlives its owner
  and needs no expiry; on a shared file system (NFS v4, Lustre, GPFS) the lock is seen by
  every node. The file names the owner (host, pid, since) for the process that finds it taken;
- `<run key>.record.json`: a finished training whose record did not reach the store (the
  store was unreachable): its metrics, epochs and artifacts, until a later run records them.

Keyed by sweep and run key, so two sweeps that hold the same point never touch each other's
files."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from study.settings.config import project_root
from study.train.checkpoint import Checkpoint


class PointFiles:
    def __init__(self, sweep: str, run_key: str, root: str | None = None) -> None:
        self.folder = Path(root or project_root(), "checkpoints", sweep)
        self.run_key = run_key
        self.checkpoint = Checkpoint(self.folder / f"{run_key}.pt")
        self.lock_path = self.folder / f"{run_key}.lock"
        self.record_path = self.folder / f"{run_key}.record.json"
        self._lock_fd: int | None = None

    # -- lease -------------------------------------------------------------------------------
    def acquire(self) -> str | None:
        """Take the point's lease; None when taken, else who holds it ('host pid 123 since ...')."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            return owner
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} pid {os.getpid()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._lock_fd = fd
        return None

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the file stays: removing it would race with a new owner
            self._lock_fd = None

    # -- a training not yet recorded ---------------------------------------------------------
    def save_record(self, record: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.record_path.with_name(self.record_path.name + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.record_path)

    def pending_record(self) -> dict[str, Any] | None:
        return json.loads(self.record_path.read_text()) if self.record_path.exists() else None

    def remove_record(self) -> None:
        self.record_path.unlink(missing_ok=True)
