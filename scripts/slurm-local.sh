#!/usr/bin/env bash
# A real one-node Slurm on localhost (munge + slurmctld + slurmd from Debian's packages),
# for the Slurm executor's tests and for trying `--executor slurm` on a laptop.
#
#   scripts/slurm-local.sh install   # apt-get the packages (root or sudo)
#   scripts/slurm-local.sh up        # start (idempotent); prints the SLURM_CONF to export
#   scripts/slurm-local.sh status    # daemons, node state
#   scripts/slurm-local.sh down      # stop only the daemons this script started, by PID
#
# Everything lives under $RKD_SLURM_DIR (default /tmp/rkd-slurm): slurm.conf, gres.conf, state,
# spool, logs and the PID files. Nothing is written to /etc: clients find the cluster through
# SLURM_CONF=$RKD_SLURM_DIR/slurm.conf. Two fake GPUs (character devices /dev/rkd-fakegpu{0,1},
# aliases of /dev/null) let `--gres=gpu:1` jobs get CUDA_VISIBLE_DEVICES 0 and 1 without a GPU.
# Needs root (munged runs as `munge`, the Slurm daemons as root; mknod). No systemd needed.
set -euo pipefail

BASE="${RKD_SLURM_DIR:-/tmp/rkd-slurm}"
CONF="$BASE/slurm.conf"
TIMEOUT="${RKD_SLURM_TIMEOUT:-60}"
GPUS="${RKD_SLURM_GPUS:-2}"
NODE="$(hostname -s)"
export SLURM_CONF="$CONF"

say() { echo "slurm-local: $*" >&2; }
die() { say "$*"; exit 1; }

# A PID is alive if /proc says so and it is not a zombie (zombies linger ~2 s here, and
# `kill -0` calls them alive).
alive() {
  local pid="$1" state
  [ -r "/proc/$pid/stat" ] || return 1
  state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Z]).*/\1/' "/proc/$pid/stat" 2>/dev/null || echo X)"
  [ "$state" != "Z" ] && [ "$state" != "X" ]
}

pid_of() { [ -s "$BASE/$1.pid" ] && cat "$BASE/$1.pid" || true; }

running() { local p; p="$(pid_of "$1")"; [ -n "$p" ] && alive "$p"; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
  say "$what"
}

cmd_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! dpkg -s munge slurmctld slurmd slurm-client >/dev/null 2>&1; then
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      munge slurmctld slurmd slurm-client
  fi
}

write_config() {
  mkdir -p "$BASE/state" "$BASE/spool" "$BASE/log"
  local mem
  mem="$(slurmd -C 2>/dev/null | sed -nE 's/.*RealMemory=([0-9]+).*/\1/p' | head -1)"
  [ -n "$mem" ] || die "slurmd -C did not report RealMemory"
  local gres_line="" gres_conf="AutoDetect=off"
  if [ "$GPUS" -gt 0 ]; then
    gres_line="Gres=gpu:$GPUS"
    for i in $(seq 0 $((GPUS - 1))); do
      # A character device: slurmd refuses regular files as GRES files.
      [ -c "/dev/rkd-fakegpu$i" ] || mknod -m 666 "/dev/rkd-fakegpu$i" c 1 3
      gres_conf="$gres_conf
NodeName=$NODE Name=gpu File=/dev/rkd-fakegpu$i"
    done
  fi
  cat >"$CONF" <<EOF
# Written by scripts/slurm-local.sh (docs/slurm.md).
ClusterName=rkdlocal
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# CR_Core_Memory would serialise jobs that do not ask for --mem.
SelectTypeParameters=CR_Core
# The default batch_sched_delay adds ~3 s to every submission.
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
# Impossible requests are refused at submission instead of pending forever.
EnforcePartLimits=ALL
# Keep finished jobs visible to squeue/scontrol for an hour (default 300 s).
MinJobAge=3600
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldPort=${RKD_SLURM_CTLD_PORT:-6817}
SlurmdPort=${RKD_SLURM_D_PORT:-6818}
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem $gres_line State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  printf '%s\n' "$gres_conf" >"$BASE/gres.conf"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "munge already answers (not started by this script)"
    return
  fi
  [ -s /etc/munge/munge.key ] || {
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  }
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  # Without systemd nothing creates munged's socket directory.
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/rkd-munged.pid
  wait_for 10 "munge up" sh -c 'munge -n | unmunge' || die "munged did not start"
  cp /run/munge/rkd-munged.pid "$BASE/munged.pid"
}

node_idle() { sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

cmd_up() {
  command -v slurmctld >/dev/null || die "Slurm is not installed: run '$0 install' first"
  [ "$(id -u)" -eq 0 ] || die "must run as root (daemons, mknod)"
  mkdir -p "$BASE"
  if running slurmctld && running slurmd && node_idle; then
    say "already up"
  else
    write_config
    start_munge
    running slurmctld || slurmctld
    wait_for "$TIMEOUT" "slurmctld up" scontrol ping || die "slurmctld did not answer in ${TIMEOUT}s ($BASE/log/slurmctld.log)"
    running slurmd || slurmd
    if ! wait_for "$TIMEOUT" "node $NODE idle" node_idle; then
      # A node drained by an earlier, different configuration comes back with resume.
      scontrol update nodename="$NODE" state=resume 2>/dev/null || true
      wait_for 15 "node $NODE idle" node_idle || die "node $NODE not idle after ${TIMEOUT}s: $(sinfo -h -o '%T %E'); see $BASE/log/"
    fi
  fi
  echo "export SLURM_CONF=$CONF"
}

stop_pid() { # stop_pid NAME: the PID this script recorded, TERM then KILL
  local pid
  pid="$(pid_of "$1")"
  [ -n "$pid" ] || return 0
  if alive "$pid"; then
    kill "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 15))
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    alive "$pid" && kill -9 "$pid" 2>/dev/null || true
    say "stopped $1 ($pid)"
  fi
  rm -f "$BASE/$1.pid"
}

cmd_down() {
  stop_pid slurmd
  stop_pid slurmctld
  stop_pid munged
}

cmd_status() {
  for d in munged slurmctld slurmd; do
    if running "$d"; then echo "$d: running ($(pid_of "$d"))"; else echo "$d: not running"; fi
  done
  [ -f "$CONF" ] && sinfo 2>/dev/null || true
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 install|up|status|down" >&2; exit 2 ;;
esac
