#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the tests and for trying the SLURM path
# on a laptop: munged, MariaDB + slurmdbd (accounting: submitit reads job states with sacct),
# slurmctld and slurmd, all bound to 127.0.0.1, all state and logs under one folder.
#
#   sudo deploy/slurm/cluster.sh start [DIR]   # writes DIR/slurm.conf, starts, waits for the node idle
#   export SLURM_CONF=DIR/slurm.conf           # then sbatch/squeue/sinfo/make sweep talk to it
#   sudo deploy/slurm/cluster.sh stop [DIR]    # stops every daemon it started
#
# DIR defaults to /tmp/study-slurm. Needs root (the daemons run as root) and Debian's packages
#   apt-get install slurm-wlm slurmdbd munge mariadb-server
# One node (this host, its cores and memory), one partition `debug`, requeue allowed (a requeued
# job may start again 10 s later: cred_expire, 120 s by default), nodes returned to service on
# their own. Ports: SLURM_PORT_BASE (6817: slurmctld, +1 slurmd,
# +2 slurmdbd) and MARIADB_PORT (3316).
set -euo pipefail
cmd=${1:-}; DIR=$(realpath -m "${2:-/tmp/study-slurm}")
BASE=${SLURM_PORT_BASE:-6817}; DBPORT=${MARIADB_PORT:-3316}
HOST=$(hostname -s)

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

write_conf() {
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p "$DIR"/{state,spool,db}
  cat > "$DIR/slurm.conf" <<CONF
ClusterName=study
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$BASE
SlurmdPort=$((BASE + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pidfile
SlurmdPidFile=$DIR/slurmd.pidfile
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
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
SlurmdTimeout=300
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$((BASE + 2))
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
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

start() {
  [ "$(id -u)" -eq 0 ] || die "run it as root (sudo): the daemons run as root"
  need munged slurmctld slurmd slurmdbd mariadbd sinfo
  [ -f "$DIR/slurmctld.pid" ] && die "a cluster is already started in $DIR (cluster.sh stop $DIR first)"
  write_conf
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
  start_bg slurmd slurmd -D -f "$DIR/slurm.conf" -N "$HOST"
  wait_for 60 "the node (sinfo idle)" bash -c "sinfo -h -N -o %t | grep -qx idle"
  echo "SLURM cluster up: one node $HOST ($(nproc) CPUs), partition debug. export SLURM_CONF=$DIR/slurm.conf"
}

stop() {
  local name pid
  for name in slurmd slurmctld slurmdbd mariadb munged; do
    [ -f "$DIR/$name.pid" ] || continue
    pid=$(cat "$DIR/$name.pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$DIR/$name.pid"
  done
  echo "SLURM cluster in $DIR stopped"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) die "usage: cluster.sh start|stop [DIR]" ;;
esac
