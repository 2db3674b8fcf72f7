#!/usr/bin/env bash
# One-node SLURM cluster on this Debian host, for CI: `up`, `down` or `status`.
# Runs as root with no systemd (PID 1 is not an init), so daemons are started directly.
set -euo pipefail

CONF_DIR=/etc/slurm                       # where Debian's slurm-wlm looks by default (see slurmctld -V)
STATE_DIR=/var/lib/slurm-local            # slurmctld state (job queue survives down/up)
SPOOL_DIR=/var/spool/slurm-local          # slurmd spool (batch scripts)
LOG_DIR=/var/log/slurm-local
RUN_DIR=/run/slurm-local                  # pid files
NODE=$(hostname -s 2>/dev/null || true); NODE=${NODE:-localhost}
CTLD_PID=$RUN_DIR/slurmctld.pid SLURMD_PID=$RUN_DIR/slurmd.pid

log() { echo "local-cluster: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# Is process $1 (or the daemon in pid file $1) running? A dead daemon can linger as a zombie (PID 1
# here is not an init that reaps promptly) and kill -0 succeeds on zombies, so ask ps.
pid_alive() { local s; s=$(ps -o stat= -p "$1") && [[ $s != Z* ]]; }
alive() { [[ -s $1 ]] && pid_alive "$(cat "$1")"; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
  [[ $(id -u) == 0 ]] || die "slurm-wlm is not installed and we are not root"
  local t0=$SECONDS own_policy=0
  # Stop the packages' postinst scripts from starting daemons with a default config.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local rc=0   # the package lists may be missing or stale on a fresh machine: update, retry once
  { apt-get install -y -q slurm-wlm munge || { apt-get update -q && apt-get install -y -q slurm-wlm munge; }
  } >"$LOG_DIR/apt.log" 2>&1 || rc=$?
  if ((own_policy)); then rm -f /usr/sbin/policy-rc.d; fi
  ((rc == 0)) || { tail -20 "$LOG_DIR/apt.log" >&2; die "apt-get install failed (log: $LOG_DIR/apt.log)"; }
  log "installed slurm-wlm + munge in $((SECONDS - t0)) s (log: $LOG_DIR/apt.log)"
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then   # the munge postinst usually creates one; not always
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return   # already running
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged   # munged refuses to run as root by design
  for _ in $(seq 20); do munge -n | unmunge >/dev/null 2>&1 && return; sleep 0.5; done
  die "munged did not come up; see /var/log/munge/munged.log"
}

write_config() {   # prints the new slurm.conf on stdout
  local cpus mem
  cpus=$(nproc)
  mem=$(free -m | awk '/^Mem:/ {print $2}')
  mem=$((mem - (mem / 10 > 1024 ? mem / 10 : 1024)))   # leave 10% (at least 1 GiB) for the OS
  ((mem > 256)) || die "too little memory for a node: ${mem} MiB"
  cat <<EOF
# Written by slurm/local-cluster.sh; rewritten on every 'up'.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# A requeued job may start again only after the credential lifetime (default 120 s); 20 s
# is plenty for local step launches and keeps requeue drills short (Slurm's minimum is 5).
AuthInfo=cred_expire=20
MailProg=/bin/true
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups in a container/VM without systemd: track processes by /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
# Nothing triggers scheduling when a requeued job's BeginTime passes; the periodic passes do
# (default every 60 s main / 30 s backfill), so run them often: it costs nothing on one node.
SchedulerParameters=sched_interval=5,bf_interval=5
# Allocate single cores and memory, so one-CPU jobs share the node; without DefMemPerCPU
# a job would be given the whole node's memory and jobs would run one at a time.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
MaxArraySize=1001
JobRequeue=1
PreemptMode=OFF
ReturnToService=2
# Keep finished jobs visible to 'scontrol show job' for 10 min (there is no slurmdbd/sacct).
MinJobAge=600
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

# Node usable (no '*' = not responding suffix) and registered by a slurmd started at/after $1.
node_ready() {
  [[ $(sinfo -h -n "$NODE" -o %T 2>/dev/null) =~ ^(idle|mixed|allocated)$ ]] || return 1
  local t; t=$(scontrol show node "$NODE" 2>/dev/null | grep -oP 'SlurmdStartTime=\K\S+') || return 1
  (( $(date -d "$t" +%s 2>/dev/null || echo 0) >= $1 ))
}

daemon_logs() { for f in slurmctld slurmd; do log "--- tail of $LOG_DIR/$f.log"; tail -15 "$LOG_DIR/$f.log" >&2 || true; done; }

up() {
  mkdir -p "$LOG_DIR" "$STATE_DIR" "$SPOOL_DIR" "$RUN_DIR" "$CONF_DIR"
  install_packages
  start_munge
  local new; new=$(write_config)
  if [[ "$new" != "$(cat "$CONF_DIR/slurm.conf" 2>/dev/null)" ]]; then
    if alive "$CTLD_PID" || alive "$SLURMD_PID"; then log "config changed; restarting daemons"; down; fi
    printf '%s\n' "$new" >"$CONF_DIR/slurm.conf"
  fi
  alive "$CTLD_PID" || slurmctld || { daemon_logs; die "slurmctld failed to start"; }
  local since=0   # a restarted slurmd must re-register: saved node state can say idle already
  if ! alive "$SLURMD_PID"; then
    since=$(date +%s)
    slurmd -N "$NODE" || { daemon_logs; die "slurmd failed to start"; }
  fi
  for _ in $(seq 60); do node_ready "$since" && break; sleep 1; done
  node_ready "$since" || { daemon_logs; die "node $NODE not ready after 60 s (sinfo: '$(sinfo -h -o %T 2>&1 || true)')"; }
  log "up: $(slurmctld -V), node $NODE ($(nproc) CPUs, $(grep -oP 'RealMemory=\K[0-9]+' "$CONF_DIR/slurm.conf") MiB)" \
    "$(sinfo -h -n "$NODE" -o %T), partition debug; config $CONF_DIR/slurm.conf, logs $LOG_DIR"
}

stop_pidfile() {   # SIGTERM the daemon in pid file $1, wait up to 15 s, then SIGKILL
  alive "$1" || return 0
  local pid; pid=$(cat "$1"); kill "$pid"
  for _ in $(seq 30); do pid_alive "$pid" || { rm -f "$1"; return 0; }; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true; rm -f "$1"
}

down() {
  if alive "$CTLD_PID"; then
    # Cancel every job so nothing is left running under a stopped slurmd.
    squeue -h -o %A 2>/dev/null | sort -u | xargs -r scancel 2>/dev/null || true
    for _ in $(seq 20); do [[ -z $(squeue -h -t R,CG 2>/dev/null) ]] && break; sleep 0.5; done
  fi
  stop_pidfile "$SLURMD_PID"
  stop_pidfile "$CTLD_PID"
  log "down (munged left running: it is stateless and cheap)"
}

status() {
  if alive "$CTLD_PID" && alive "$SLURMD_PID" && sinfo >/dev/null 2>&1; then
    sinfo; echo; squeue; return 0
  fi
  echo "local SLURM cluster is down"; return 1
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
