"""The packed launcher (conf/hydra/launcher/packed.yaml: make sweep JOBS=auto, PACK=N). Hydra
instantiates only launcher classes defined under hydra_plugins; what it does is study.sweep.packed."""
from __future__ import annotations

from hydra.plugins.launcher import Launcher


class PackedLauncher(Launcher):
    def __init__(self, pack="auto", n_jobs=None, slots=None, slot_dir=None) -> None:
        self.pack = pack  # n_jobs, slots, slot_dir: set per phase, read by the phase's jobs
        self.config = self.task_function = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides, initial_job_idx):
        from study.sweep import packed

        return packed.launch(self, job_overrides, initial_job_idx)
