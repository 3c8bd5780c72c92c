"""A SLURM cluster of several nodes on this machine (deploy/slurm/cluster.sh start DIR 2): each
node in its own network and UTS namespace, with its own host name and address on a bridge the
script creates; the tracking server reached by the controller's name on that bridge, STUDY_HOME
on the one filesystem every node sees. A sweep spreads over the nodes as a lab's would."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from study.record import server
from study.record.users import read_secret_env
from tests.conftest import ROOT, wait_for_checkpoint
from tests.test_server import HAVE_POSTGRES, Server
from tests.test_slurm import DAEMONS, EXACT, SCRIPT

NODES = 2
HEAD = "study-head"
SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_task=0", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=1"]
POINTS = ["--config-dir", "sweeps", "--config-name", "smoke", "data=synthetic", "model.width=0.25,0.5",
          "model.depth=14", "data.resolution=8,12", "recipe.epochs=2", "data.synthetic_images=400", *EXACT]


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the cluster's namespaces and daemons need root (sudo deploy/slurm/cluster.sh start DIR 2)"
    if missing := [d for d in (*DAEMONS, "ip", "unshare") if not shutil.which(d)]:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm slurmdbd munge mariadb-server iproute2)"
    if not HAVE_POSTGRES:
        return "PostgreSQL server programs are not installed (apt-get install postgresql): the nodes record into make server"
    probe = subprocess.run(["ip", "netns", "add", "study-probe"], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", "study-probe"], capture_output=True)
    if probe.returncode:
        return f"network namespaces are not available here ({probe.stderr.strip()})"
    return None


def _ours(folder: Path) -> dict[str, list[str]]:
    """What cluster.sh made for the cluster in `folder`, as the system lists it now."""
    tag = subprocess.run(["bash", "-c", f"echo -n {folder} | sha256sum | cut -c1-6"], capture_output=True,
                         text=True).stdout.strip()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    hosts = Path("/etc/hosts").read_text()
    return {"namespaces": re.findall(rf"st{tag}-node\d+", netns), "links": re.findall(rf"(?:stbr|v){tag}\d*", links),
            "hosts": [line for line in hosts.splitlines() if f"# study-slurm {tag}" in line],
            "daemons": [p for p in ("slurmctld", "slurmd", "slurmdbd") if (folder / f"{p}.pid").exists()]
            + [p.name for p in folder.glob("slurmd-node*.pid")]}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """SLURM_CONF of a 2-node cluster in namespaces; stopped after the module, and then nothing of
    it is left: no namespace, link, /etc/hosts line or daemon."""
    if reason := _unavailable():
        pytest.skip(f"no multi-node SLURM cluster: {reason}")
    folder = tmp_path_factory.mktemp("nodes")
    started = subprocess.run(["bash", str(SCRIPT), "start", str(folder), str(NODES)], capture_output=True,
                             text=True, timeout=180)
    if started.returncode:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True)
        pytest.fail(f"the cluster did not start: {started.stdout[-1000:]} {started.stderr[-2000:]}")
    yield {"SLURM_CONF": str(folder / "slurm.conf"), "folder": folder}
    subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)
    left = {k: v for k, v in _ours(folder).items() if v}
    assert not left, f"cluster.sh stop left {left}"


@pytest.fixture(scope="module")
def head_server(nodes, tmp_path_factory):
    """make server on the controller's bridge address, reached by the name study-head."""
    home = tmp_path_factory.mktemp("head")
    address = next(line.split()[0] for line in Path("/etc/hosts").read_text().splitlines()
                   if line.split()[1:2] == [HEAD])
    srv = Server(home, host=address, name=HEAD)
    srv.start()
    yield srv
    srv.stop()
    shutil.rmtree(server.cluster_dir(home.resolve()), ignore_errors=True)


def _slurm(env: dict, *args: str) -> str:
    return subprocess.run(list(args), env=dict(os.environ, SLURM_CONF=env["SLURM_CONF"]), capture_output=True,
                          text=True, timeout=60).stdout


def test_each_node_has_its_own_name_and_address_and_reaches_the_head_by_name(nodes):
    listed = _slurm(nodes, "sinfo", "-h", "-N", "-o", "%N %t").split()
    assert listed == ["node1", "idle", "node2", "idle"], listed
    seen = _slurm(nodes, "srun", "-N", "2", "-n", "2", "bash", "-c",
                  f"echo $(hostname) $(hostname -I) $(getent hosts {HEAD} | cut -d' ' -f1)").splitlines()
    names = sorted(line.split()[0] for line in seen)
    assert names == ["node1", "node2"], seen
    addresses = {line.split()[1] for line in seen}
    assert len(addresses) == 2 and all(line.split()[2] == line.split()[1].rsplit(".", 1)[0] + ".1" for line in seen)


def test_a_sweep_spreads_over_the_nodes_into_the_server_by_name_and_a_rerun_trains_nothing(nodes, head_server,
                                                                                          tmp_path):
    """One point fails (an injected fault); the sweep says how to rerun only it, on the cluster;
    that command trains it there, and run again trains nothing. What a lab does after a cluster
    sweep works from the launching node against the server by its name: the report, make
    analyze and make recommend with STORE=, a user added with make user-add."""
    env = head_server.env("admin", tmp_path, SLURM_CONF=nodes["SLURM_CONF"], PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "study.run", "--multirun", *POINTS, *SLURM, "tracking=server", "sweep=nodes",
               "hydra.launcher.timeout_min=10"]
    first = subprocess.run(command, cwd=ROOT, env=env | {"STUDY_INJECT_FAULT": "exception:w=0.5 d=14 r=12"},
                           capture_output=True, text=True, timeout=900)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "4 points: 3 finished, 0 skipped, 1 failed" in first.stdout, first.stdout[-3000:]
    assert f"recorded in {head_server.uri}" in first.stdout
    assert "slurm: this process waits for the whole array" in first.stdout
    assert f"srun make measure SWEEP=nodes STORE={head_server.uri}" in first.stdout  # on a compute node
    (rerun,) = [line.split(": ", 1)[1] for line in first.stdout.splitlines() if line.startswith("rerun only the failed")]
    assert "hydra/launcher=slurm" in rerun and "tracking=server" in rerun, rerun  # on the cluster, not here
    second = subprocess.run(["bash", "-c", rerun.replace("make ", "make -s ", 1)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "4 points: 1 finished, 3 skipped, 0 failed" in second.stdout, second.stdout[-3000:]
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "4 points: 0 finished, 4 skipped, 0 failed" in again.stdout
    (measure,) = [line.split("on a compute node: ", 1)[1] for line in again.stdout.splitlines()
                  if "on a compute node: srun" in line]
    measured = subprocess.run(["bash", "-c", measure.replace("make ", "make -s ", 1)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
    assert measured.returncode == 0, measured.stdout[-2000:] + measured.stderr[-2000:]
    assert "of 4 point run(s) of nodes alone" in measured.stdout, measured.stdout  # the printed line works as is

    client = head_server.client()
    from study.record.contract import find_experiment

    exp = find_experiment(client, "nodes")
    runs = [r for r in client.search_runs([exp.experiment_id], "tags.run_key != ''") if r.info.status == "FINISHED"]
    assert len(runs) == 4 and len({r.data.tags["point_key"] for r in runs}) == 4
    hosts = {r.data.tags["host"] for r in runs}
    assert hosts == {"node1", "node2"}, hosts  # the array ran on both nodes
    assert (tmp_path / "reports" / "nodes" / "report.html").exists()  # the report, made where it was launched
    make = dict(cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    analyzed = subprocess.run(["make", "-s", "analyze", "SWEEP=nodes", f"STORE={head_server.uri}"], **make)
    assert analyzed.returncode == 0 and "report in" in analyzed.stdout, analyzed.stdout[-2000:] + analyzed.stderr
    recommended = subprocess.run(["make", "-s", "recommend", "SWEEP=nodes", f"STORE={head_server.uri}", "EPOCHS=2",
                                  "FLOPS=1e9"], **make)
    assert recommended.returncode == 0 and '"width":' in recommended.stdout, recommended.stdout + recommended.stderr
    added = subprocess.run(["make", "-s", "user-add", "NAME=carol", f"STORE_DIR={tmp_path}"], **make)
    assert added.returncode == 0, added.stdout + added.stderr  # reached as STUDY_SERVER=http://study-head:PORT
    carol = read_secret_env(tmp_path / "users" / "carol.env")
    token = b64encode(f"{carol['MLFLOW_TRACKING_USERNAME']}:{carol['MLFLOW_TRACKING_PASSWORD']}".encode()).decode()
    search = urllib.request.Request(f"{head_server.uri}/api/2.0/mlflow/experiments/search?max_results=1",
                                    headers={"Authorization": f"Basic {token}"})
    assert urllib.request.urlopen(search, timeout=30).status == 200  # carol gets in, by the head's name


def test_a_cluster_sweep_into_a_store_the_nodes_cannot_share_is_refused_before_submission(nodes, tmp_path):
    """Without a node pinned: the local SQLite store is refused naming tracking=server, and a
    server at a loopback address (what the nodes cannot reach) is refused naming STUDY_SERVER."""
    env = dict(os.environ, SLURM_CONF=nodes["SLURM_CONF"], STUDY_HOME=str(tmp_path))
    env.pop("STUDY_SERVER", None)
    command = [sys.executable, "-m", "study.run", "--multirun", *POINTS, *SLURM, "sweep=refused"]
    for tracking, said in (("tracking=local", "tracking=server"), ("tracking=server", "STUDY_SERVER=http://")):
        done = subprocess.run([*command, tracking], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and said in done.stderr, (tracking, done.stdout[-2000:], done.stderr[-2000:])
        assert "Traceback" not in done.stderr
    assert not list(tmp_path.rglob(".submitit")) and not (tmp_path / "mlflow.db").exists()
    assert not _slurm(nodes, "squeue", "-h").strip()  # nothing was submitted


def test_one_point_spanning_two_nodes_trains_as_two_local_processes_do(nodes, head_server, tmp_path):
    """trainer.processes=2 over 2 nodes x 1 task: DDP over gloo, TCP between the namespaces,
    rendezvous at the first node (MASTER_ADDR from SLURM's node list, by its name); rank 0
    records; the metrics equal two processes on one machine."""
    from tests.conftest import point_runs, run_cli
    from tests.test_slurm import COMPARED

    point = ["data=synthetic", "model.width=0.25", "model.depth=14", "data.resolution=12", *EXACT, "recipe.epochs=3",
             "data.synthetic_images=1000", "trainer.processes=2"]
    env = head_server.env("admin", tmp_path, SLURM_CONF=nodes["SLURM_CONF"], PYTHONUNBUFFERED="1")
    spanning = subprocess.run([sys.executable, "-m", "study.run", "--multirun", *point, *SLURM, "hydra.launcher.nodes=2",
                               "hydra.launcher.tasks_per_node=1", "hydra.launcher.timeout_min=10", "tracking=server",
                               "sweep=span"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert spanning.returncode == 0, spanning.stdout[-3000:] + spanning.stderr[-3000:]
    local = run_cli(*point, "sweep=local", home=tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]
    head_server.client()  # the admin's credentials, for reading the server
    (run,) = point_runs(tmp_path, "span", uri=head_server.uri)
    (ref,) = point_runs(tmp_path / "local", "local")
    tags = run.data.tags
    assert run.info.status == "FINISHED" and (tags["processes"], tags["nodes"]) == ("2", "2"), tags
    assert {k: run.data.metrics[k] for k in COMPARED} == {k: ref.data.metrics[k] for k in COMPARED}


def test_a_lost_node_requeues_its_point_which_resumes_on_another_node_once(nodes, head_server, tmp_path):
    """The last test of the module: it leaves node1 or node2 dead. The node that trains the point
    dies (its slurmd and everything in its namespace, SIGKILL) after a checkpoint; SLURM marks it
    down, requeues the job (JobRequeue=1), the job starts on the other node, and the point
    resumes from its checkpoint in the same run: one run, FINISHED, nothing left RUNNING."""
    from tests.conftest import point_runs

    point = ["data=synthetic", "model.width=0.25", "model.depth=14", "data.resolution=12", "recipe.epochs=30",
             "data.synthetic_images=2000", *EXACT, "sweep=lost"]
    env = head_server.env("admin", tmp_path, SLURM_CONF=nodes["SLURM_CONF"], PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "study.run", "--multirun", *point, *SLURM, "tracking=server",
                             "hydra.launcher.timeout_min=10"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_checkpoint(tmp_path, proc)
        (where,) = _slurm(nodes, "squeue", "-h", "-o", "%N").split()
        killed = subprocess.run(["bash", str(SCRIPT), "kill-node", str(nodes["folder"]), where], capture_output=True,
                                text=True, timeout=60)
        assert killed.returncode == 0, killed.stderr
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 0, out[-4000:]
    assert "1 points: 1 finished, 0 skipped, 0 failed" in out, out[-4000:]
    head_server.client()
    runs = point_runs(tmp_path, "lost", uri=head_server.uri)
    assert len(runs) == 1, [(r.info.status, r.data.tags.get("host")) for r in runs]  # no duplicate
    (run,) = runs
    tags = run.data.tags
    assert run.info.status == "FINISHED", tags
    assert tags["host"] != where and tags["host"] in {"node1", "node2"}, (where, tags["host"])
    assert int(tags.get("resumed", 0)) >= 1 and int(tags["restarts"]) >= 1, tags  # from its checkpoint
    steps = sorted(m.step for m in head_server.client().get_metric_history(run.info.run_id, "train/loss"))
    assert steps == list(range(1, 31)), "each epoch recorded once"
    down = _slurm(nodes, "sinfo", "-h", "-N", "-n", where, "-o", "%t").split()
    assert down and down[0].startswith("down"), down
