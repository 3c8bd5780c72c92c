"""What a sweep spread over a cluster's nodes needs, checked in the launching process before
anything is submitted: a store every node can write at once, at an address every node reaches.
A SQLite file (tracking=local) on a filesystem several nodes share corrupts under concurrent
writers, so a SLURM sweep records into a tracking server (tracking=server) unless the user pins
every task to one node (`+hydra.launcher.additional_parameters.nodelist=HOST`, SLURM's own
--nodelist); and a server at 127.0.0.1 is, on a compute node, that node itself, so the server
must be named by a host the nodes reach (STUDY_SERVER=http://HOST:5001) unless every task runs
on this machine."""
from __future__ import annotations

import socket
from urllib.parse import urlsplit

from omegaconf import DictConfig

from study.record.redaction import redact
from study.record.server import is_loopback
from study.settings.config import ConfigError

SLURM_TARGET = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
LOCAL_SCHEMES = ("sqlite:", "file:")


def local_store(uri: str) -> bool:
    """A store in a file of this machine (SQLite, or MLflow's file store): not for several writers
    on several machines."""
    return uri.startswith(LOCAL_SCHEMES) or "://" not in uri


def one_node(launcher: DictConfig) -> str | None:
    """The one node a SLURM launcher pins every task to (its sbatch --nodelist names a single
    host), else None."""
    extra = dict(launcher.get("additional_parameters") or {})
    nodes = str(extra.get("nodelist") or "").strip()
    return nodes if nodes and not any(c in nodes for c in ",[ ") else None


def loopback(uri: str) -> bool:
    return is_loopback((urlsplit(uri).hostname or "").lower())


def this_host(node: str | None) -> bool:
    return node is not None and node.split(".")[0] == socket.gethostname().split(".")[0]


def check_store_for_launcher(uri: str, launcher: DictConfig) -> None:
    """ConfigError naming the fix when a SLURM sweep (tasks on any of the cluster's nodes) would
    record into a local SQLite store, or into a server at a loopback address."""
    if launcher.get("_target_") != SLURM_TARGET:
        return
    if loopback(uri) and not local_store(uri) and not this_host(one_node(launcher)):
        raise ConfigError(
            f"invalid settings:\n  tracking.uri={uri!r} with hydra/launcher=slurm: {urlsplit(uri).hostname} is each "
            "compute node's own loopback, not this machine. Start the server where the nodes reach it (make server "
            "ARGS=\"--host 0.0.0.0\") and name it by that host: STUDY_SERVER=http://HOST:5001 (or "
            "tracking.uri=http://HOST:5001); or, when every task runs on this machine, "
            f"+hydra.launcher.additional_parameters.nodelist={socket.gethostname().split('.')[0]}")
    if not local_store(uri) or one_node(launcher):
        return
    raise ConfigError(
        f"invalid settings:\n  tracking.uri={uri!r} with hydra/launcher=slurm: the SLURM tasks run on any node of "
        "the cluster, and a SQLite store (tracking=local) on a filesystem they share corrupts under concurrent "
        "writers. Use tracking=server (make server on a host the nodes reach, ARGS=\"--host 0.0.0.0\"; "
        "docs/scale-out.md), or, when every task runs on one node, say which: "
        "+hydra.launcher.additional_parameters.nodelist=HOST")


def measure_elsewhere(launcher: DictConfig, sweep: str, uri: str) -> str | None:
    """For a SLURM sweep, the line saying where to measure its points alone (a compute node of
    its partition: this process runs on the node that launched the array, whose CPU is not the
    points'); None for a launcher that ran the points on this machine."""
    if launcher.get("_target_") != SLURM_TARGET:
        return None
    partition = f" --partition={launcher.partition}" if launcher.get("partition") else ""
    gpus = f" --gpus={launcher.gpus_per_task}" if launcher.get("gpus_per_task") else ""
    return (f"measured alone: not on this node, which launched the array but trained none of its points; on a "
            f"compute node: srun{partition}{gpus} make measure SWEEP={sweep} STORE={redact(uri)}")


def waiting_line(launcher: DictConfig) -> str | None:
    """For a SLURM sweep, what the launching process is for: it waits for the whole array, then
    makes the report; ended early (a logout), the tasks go on and the same command later skips
    what finished and makes it."""
    if launcher.get("_target_") != SLURM_TARGET:
        return None
    return ("slurm: this process waits for the whole array, then makes the report; keep it running (tmux, screen, "
            "or sbatch --wrap \"make sweep ...\"). If it ends early the tasks go on: the same command run again "
            "later trains only what did not finish and makes the report")
