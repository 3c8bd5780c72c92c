#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the tests and for trying the SLURM path
# on a laptop: munged, MariaDB + slurmdbd (accounting: submitit reads job states with sacct),
# slurmctld and slurmd, all bound to 127.0.0.1, all state and logs under one folder.
#
#   sudo deploy/slurm/cluster.sh start [DIR] [NODES]  # writes DIR/slurm.conf, starts, waits for the nodes idle
#   export SLURM_CONF=DIR/slurm.conf                  # then sbatch/squeue/sinfo/make sweep talk to it
#   sudo deploy/slurm/cluster.sh kill-node DIR NAME   # a node dies: its slurmd and all it runs, SIGKILL
#   sudo deploy/slurm/cluster.sh stop [DIR]           # stops every daemon, namespace and link it made
#
# NODES >= 2: several compute nodes on this one machine, each in its own network and UTS
# namespace (host name node1, node2, ...; address SUBNET.11, .12, ... on a bridge the script
# creates; the controller, this host, at SUBNET.1, also named `study-head` (for a tracking server
# there), written to /etc/hosts here and to each node's own /etc/hosts). Traffic flows only among the namespaces and the host's side
# of that bridge. Every node sees this machine's filesystem (STUDY_HOME, checkpoints: shared) and
# its munge socket. SUBNET defaults to 10.77.0.
#
# DIR defaults to /tmp/study-slurm. Needs root (the daemons run as root) and Debian's packages
#   apt-get install slurm-wlm slurmdbd munge mariadb-server
# One node (this host, its cores and memory), one partition `debug`, requeue allowed (a requeued
# job may start again 10 s later: cred_expire, 120 s by default), nodes returned to service on
# their own. Ports: SLURM_PORT_BASE (6817: slurmctld, +1 slurmd,
# +2 slurmdbd) and MARIADB_PORT (3316).
set -euo pipefail
cmd=${1:-}; DIR=$(realpath -m "${2:-/tmp/study-slurm}"); NODES=${3:-1}
BASE=${SLURM_PORT_BASE:-6817}; DBPORT=${MARIADB_PORT:-3316}
HOST=$(hostname -s)
SUBNET=${SUBNET:-10.77.0}
HEAD=study-head                                  # the controller's name on the bridge
TAG=$(echo -n "$DIR" | sha256sum | cut -c1-6)    # names of this cluster's links and namespaces
BRIDGE=stbr$TAG
ns() { echo "st$TAG-node$1"; }                   # node i's network namespace

die() { echo "cluster.sh: $*" >&2; exit 1; }
need() { for p in "$@"; do command -v "$p" >/dev/null || die "$p not found: apt-get install slurm-wlm slurmdbd munge mariadb-server"; done; }
wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local t=$1 what=$2; shift 2
  for _ in $(seq $((t * 2))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "$what did not come up in ${t}s; see the logs in $DIR"
}
start_bg() {  # start_bg NAME COMMAND...: run in the background, pid in DIR/NAME.pid
  local name=$1; shift
  setsid "$@" >"$DIR/$name.out" 2>&1 < /dev/null &
  echo $! > "$DIR/$name.pid"
}

nodes_conf() {  # the NodeName lines: this host on loopback, or node1..N on the bridge
  local cpus=$1 mem=$2 i names=()
  if [ "$NODES" -eq 1 ]; then
    echo "NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    echo "PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP"
    return
  fi
  for i in $(seq "$NODES"); do
    echo "NodeName=node$i NodeAddr=$SUBNET.$((10 + i)) NodeHostname=node$i CPUs=$cpus RealMemory=$mem State=UNKNOWN"
    names+=("node$i")
  done
  echo "PartitionName=debug Nodes=$(IFS=,; echo "${names[*]}") Default=YES MaxTime=INFINITE State=UP"
}

write_conf() {
  local cpus mem ctld=127.0.0.1 name=$HOST node="" lost=300
  cpus=$(( $(nproc) / NODES )); [ "$cpus" -ge 1 ] || cpus=1
  mem=$(( ($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024) / NODES ))
  # several nodes: each its own spool, pid and log; a node silent for 20 s is down (its jobs requeued)
  [ "$NODES" -gt 1 ] && { ctld=$SUBNET.1; node=-%n; lost=20; }  # the controller: this host, on the bridge
  mkdir -p "$DIR"/{state,spool,db}
  cat > "$DIR/slurm.conf" <<CONF
ClusterName=study
SlurmctldHost=$name($ctld)
SlurmctldPort=$BASE
SlurmdPort=$((BASE + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool$node
SlurmctldPidFile=$DIR/slurmctld.pidfile
SlurmdPidFile=$DIR/slurmd$node.pidfile
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd$node.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=$lost
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((BASE + 2))
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
$(nodes_conf "$cpus" "$mem")
CONF
  cat > "$DIR/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((BASE + 2))
SlurmUser=root
PidFile=$DIR/slurmdbd.pidfile
LogFile=$DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DBPORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$DIR/slurmdbd.conf"
}

hosts_lines() {  # the names of the cluster's machines, for /etc/hosts
  local i
  echo "$SUBNET.1 $HEAD # study-slurm $TAG"
  for i in $(seq "$NODES"); do echo "$SUBNET.$((10 + i)) node$i # study-slurm $TAG"; done
}

make_network() {  # the bridge (host side SUBNET.1) and one namespace per node, veth-linked to it
  local i n
  command -v ip >/dev/null || die "ip not found: apt-get install iproute2"
  ip link show "$BRIDGE" >/dev/null 2>&1 && die "bridge $BRIDGE exists: cluster.sh stop $DIR first"
  ip -o addr | grep -q " $SUBNET\." && die "$SUBNET.0/24 is in use on this machine: set SUBNET= to a free one"
  ip link add "$BRIDGE" type bridge
  ip addr add "$SUBNET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for i in $(seq "$NODES"); do
    n=$(ns "$i")
    ip netns add "$n"
    ip link add "v$TAG$i" type veth peer name eth0 netns "$n"
    ip link set "v$TAG$i" master "$BRIDGE" up
    ip -n "$n" addr add "$SUBNET.$((10 + i))/24" dev eth0
    ip -n "$n" link set eth0 up
    ip -n "$n" link set lo up
    mkdir -p "/etc/netns/$n"
    { echo "127.0.0.1 localhost"; hosts_lines; } > "/etc/netns/$n/hosts"  # the node's /etc/hosts
  done
  hosts_lines >> /etc/hosts
}

remove_network() {
  local i
  for i in $(seq 64); do
    ip netns del "$(ns "$i")" 2>/dev/null || true
    rm -rf "/etc/netns/$(ns "$i")"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  if grep -q "# study-slurm $TAG\$" /etc/hosts; then
    grep -v "# study-slurm $TAG\$" /etc/hosts > "/etc/hosts.study-$TAG"; cat "/etc/hosts.study-$TAG" > /etc/hosts
    rm -f "/etc/hosts.study-$TAG"
  fi
}

start_nodes() {  # slurmd of each node, in its namespaces, named by its node name
  local i
  if [ "$NODES" -eq 1 ]; then
    start_bg slurmd slurmd -D -f "$DIR/slurm.conf" -N "$HOST"
    return
  fi
  for i in $(seq "$NODES"); do
    mkdir -p "$DIR/spool-node$i"
    # its network namespace (nsenter: /sys, and so the cgroups slurmd reads, stay the host's), its own
    # host name, and its own /etc/hosts in a private mount namespace
    start_bg "slurmd-node$i" nsenter --net="/run/netns/$(ns "$i")" unshare --mount --uts bash -c \
      "mount --bind /etc/netns/$(ns "$i")/hosts /etc/hosts && hostname node$i && exec slurmd -D -f '$DIR/slurm.conf' -N node$i"
  done
}

kill_node() {  # NAME: its slurmd and everything in its namespace, SIGKILL, as a machine that dies
  local name=$1 i=${1#node}
  [ -f "$DIR/slurmd-$name.pid" ] || die "no node $name in $DIR"
  ip netns pids "$(ns "$i")" | xargs -r kill -KILL || true
  rm -f "$DIR/slurmd-$name.pid"
  echo "node $name killed"
}

start() {
  [ "$(id -u)" -eq 0 ] || die "run it as root (sudo): the daemons run as root"
  need munged slurmctld slurmd slurmdbd mariadbd sinfo
  [ -f "$DIR/slurmctld.pid" ] && die "a cluster is already started in $DIR (cluster.sh stop $DIR first)"
  [[ "$NODES" =~ ^[1-9][0-9]?$ ]] || die "NODES=$NODES: allowed is a whole number of compute nodes, 1 to 64"
  write_conf
  echo "$NODES" > "$DIR/nodes"
  [ "$NODES" -gt 1 ] && make_network
  export SLURM_CONF=$DIR/slurm.conf
  # munge at its default socket, where every SLURM command looks for it; one already running is used
  if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -f /etc/munge/munge.key ] || mungekey --create >/dev/null 2>&1 || die "no /etc/munge/munge.key"
    mkdir -p /run/munge && chmod 755 /run/munge
    start_bg munged munged --foreground --force --log-file="$DIR/munged.log" --seed-file="$DIR/munge.seed"
    wait_for 10 munged bash -c "munge -n </dev/null | unmunge"
  fi
  if [ ! -d "$DIR/db/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$DIR/db" --user=root --auth-root-authentication-method=normal \
      > "$DIR/mariadb-install.out" 2>&1 || die "mariadb-install-db failed: $DIR/mariadb-install.out"
  fi
  start_bg mariadb mariadbd --no-defaults --datadir="$DIR/db" --socket="$DIR/mysql.sock" --port="$DBPORT" \
    --bind-address=127.0.0.1 --user=root --pid-file="$DIR/mariadb.pidfile" --log-error="$DIR/mariadb.log"
  wait_for 30 MariaDB mariadb --no-defaults --socket="$DIR/mysql.sock" -uroot -e "select 1"
  mariadb --no-defaults --socket="$DIR/mysql.sock" -uroot -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  start_bg slurmdbd slurmdbd -D  # reads slurmdbd.conf beside $SLURM_CONF
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster study >/dev/null 2>&1 || true
  start_bg slurmctld slurmctld -D -f "$DIR/slurm.conf"
  start_nodes
  wait_for 60 "the nodes (sinfo idle)" bash -c "[ \$(sinfo -h -N -o %t | grep -cx idle) -eq $NODES ]"
  if [ "$NODES" -eq 1 ]; then
    echo "SLURM cluster up: one node $HOST ($(nproc) CPUs), partition debug. export SLURM_CONF=$DIR/slurm.conf"
  else
    echo "SLURM cluster up: $NODES nodes node1-node$NODES on bridge $BRIDGE ($SUBNET.0/24), controller $HEAD" \
         "($SUBNET.1), partition debug. export SLURM_CONF=$DIR/slurm.conf"
  fi
}

stop() {
  local name pid
  [ -f "$DIR/nodes" ] && NODES=$(cat "$DIR/nodes")
  for name in $(cd "$DIR" 2>/dev/null && ls slurmd*.pid 2>/dev/null | sed 's/\.pid$//') slurmctld slurmdbd mariadb munged; do
    [ -f "$DIR/$name.pid" ] || continue
    pid=$(cat "$DIR/$name.pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$DIR/$name.pid"
  done
  if [ "${NODES:-1}" -gt 1 ]; then
    for i in $(seq "$NODES"); do ip netns pids "$(ns "$i")" 2>/dev/null | xargs -r kill -KILL || true; done
    remove_network
  fi
  echo "SLURM cluster in $DIR stopped"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  kill-node) kill_node "${3:?cluster.sh kill-node DIR NAME}" ;;
  *) die "usage: cluster.sh start [DIR] [NODES] | stop [DIR] | kill-node DIR NAME" ;;
esac
