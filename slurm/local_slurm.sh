#!/usr/bin/env bash
# A real one-machine SLURM (Debian's slurm-wlm: munged + slurmctld + slurmd on localhost, no systemd,
# no cgroups, no accounting) for xlmtrain's SLURM tests and for trying the sbatch templates locally.
#
#   slurm/local_slurm.sh start    # apt-install if missing, write slurm.conf, start daemons, wait for an idle node
#   slurm/local_slurm.sh stop     # cancel jobs, stop the daemons this script started (by their PIDs)
#   slurm/local_slurm.sh status   # sinfo + squeue
#
# Every SLURM client command needs `export SLURM_CONF=$LOCAL_SLURM_DIR/slurm.conf` (printed by `start`).
# Knobs: LOCAL_SLURM_DIR (default /tmp/xlmtrain-slurm: conf, state, spool, logs, pids),
#        LOCAL_SLURM_CPUS (CPUs to advertise; more than the real count = oversubscription),
#        LOCAL_SLURM_CRED_EXPIRE (seconds a requeued job waits before it may start again; default 10,
#        SLURM's own default of 120 s would make every requeue test wait two minutes).
# Needs root (daemons run as root; munged as user munge). Stop it from a `trap ... EXIT`: the daemons
# outlive the caller.
set -euo pipefail

ACTION=${1:-status}
DIR=${LOCAL_SLURM_DIR:-/tmp/xlmtrain-slurm}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)
export SLURM_CONF=$CONF

log() { echo "[local_slurm] $*" >&2; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
idle_nodes() { sinfo -h -N -o '%T' 2>/dev/null | grep -c '^idle$' || true; }

install_packages() {
  local missing=0 tool
  for tool in slurmctld slurmd munged sbatch; do command -v "$tool" >/dev/null || missing=1; done
  [ $missing = 0 ] && return
  log "installing slurmctld slurmd slurm-client munge (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
}

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  if [ ! -s /etc/munge/munge.key ]; then   # normally created by the package's postinst
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  runuser -u munge -- /usr/sbin/munged    # daemonises; its pid file is /run/munge/munged.pid
  cp /run/munge/munged.pid "$DIR/pids/munged.pid"
  for _ in $(seq 100); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
  log "munged did not start"; exit 1
}

write_conf() {
  # `slurmd -C` prints this machine as SLURM sees it: "NodeName=x CPUs=2 Boards=1 ... RealMemory=24105".
  local hw field cpus memory topology overrides=""
  hw=$(slurmd -C | head -1)
  field() { echo "$hw" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
  cpus=$(field CPUs)
  memory=$(( $(field RealMemory) * 85 / 100 ))
  topology="Boards=$(field Boards) SocketsPerBoard=$(field SocketsPerBoard) CoresPerSocket=$(field CoresPerSocket) ThreadsPerCore=$(field ThreadsPerCore)"
  if [ -n "${LOCAL_SLURM_CPUS:-}" ] && [ "$LOCAL_SLURM_CPUS" != "$cpus" ]; then
    cpus=$LOCAL_SLURM_CPUS
    topology="Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1"
    overrides="SlurmdParameters=config_overrides"   # trust slurm.conf over the hardware
  fi
  cat > "$CONF" <<CONF
# written by xlmtrain slurm/local_slurm.sh
ClusterName=local
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire seconds (default 120)
AuthInfo=cred_expire=${LOCAL_SLURM_CRED_EXPIRE:-10}
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/pids/slurmctld.pid
SlurmdPidFile=$DIR/pids/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
InactiveLimit=0
KillWait=5
MinJobAge=600
$overrides
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus $topology RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  [ "$(id -u)" = 0 ] || { log "needs root"; exit 1; }
  install_packages
  mkdir -p "$DIR/pids"
  if alive "$DIR/pids/slurmctld.bg"; then log "already running"; status; return; fi
  rm -rf "$DIR/state" "$DIR/spool"
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  start_munge
  write_conf
  setsid /usr/sbin/slurmctld -D -i -f "$CONF" >"$DIR/log/slurmctld.stdout" 2>&1 </dev/null &
  echo $! > "$DIR/pids/slurmctld.bg"
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
  setsid /usr/sbin/slurmd -D -f "$CONF" >"$DIR/log/slurmd.stdout" 2>&1 </dev/null &
  echo $! > "$DIR/pids/slurmd.bg"
  for _ in $(seq 600); do [ "$(idle_nodes)" -ge 1 ] && break; sleep 0.1; done
  if [ "$(idle_nodes)" -lt 1 ]; then
    log "node not idle after 60 s"
    tail -n 20 "$DIR"/log/* >&2 || true
    exit 1
  fi
  log "up; export SLURM_CONF=$CONF (logs in $DIR/log)"
}

stop() {
  local jobs pidfile
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then scancel $jobs 2>/dev/null || true; sleep 2; fi
  for pidfile in "$DIR/pids/slurmd.bg" "$DIR/pids/slurmctld.bg" "$DIR/pids/munged.pid"; do
    alive "$pidfile" && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  for _ in $(seq 100); do
    alive "$DIR/pids/slurmd.bg" || alive "$DIR/pids/slurmctld.bg" || alive "$DIR/pids/munged.pid" || break
    sleep 0.1
  done
  for pidfile in "$DIR/pids/slurmd.bg" "$DIR/pids/slurmctld.bg" "$DIR/pids/munged.pid"; do
    alive "$pidfile" && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
  log "stopped"
}

status() { sinfo -N -o '%N %P %T %c %m' || true; squeue || true; }

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
