#!/usr/bin/env bash
# stop-cluster.sh -- stop the daemons that slurm/start-cluster.sh started, and nothing else.
#
# Usage:  slurm/stop-cluster.sh [--keep-jobs] [DIR]
#   DIR          cluster directory (default: $HPCSYNTH_SLURM_DIR, else /tmp/hpcsynth-slurm)
#   --keep-jobs  do not cancel the cluster's jobs first; slurmctld recovers them from DIR/state at the
#                next start (their job processes keep running meanwhile)
#
# Only the PIDs recorded in DIR/run/started/ are signalled, and only while each still runs the expected
# executable (guards against PID reuse): SIGTERM, up to 30 s, then SIGKILL. No process is looked up or
# killed by name. A munged that was already running before start-cluster.sh is left alone.
# Config, job state, accounting database and logs stay in DIR (start-cluster.sh --fresh wipes them).
set -uo pipefail

KEEP_JOBS=0
DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --keep-jobs) KEEP_JOBS=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "stop-cluster: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) [ -z "$DIR" ] || { echo "stop-cluster: more than one DIR given" >&2; exit 2; }; DIR="$1" ;;
  esac
  shift
done
DIR="${DIR:-${HPCSYNTH_SLURM_DIR:-/tmp/hpcsynth-slurm}}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
DIR="${DIR%/}"
STARTED="$DIR/run/started"
export SLURM_CONF="$DIR/etc/slurm.conf"

T0="${EPOCHREALTIME/./}"
say() { local us=$(( ${EPOCHREALTIME/./} - T0 )); printf '[stop-cluster %3d.%02ds] %s\n' $((us / 1000000)) $((us % 1000000 / 10000)) "$*"; }

[ -d "$STARTED" ] || { echo "stop-cluster: nothing recorded in $STARTED, nothing to stop"; exit 0; }
exec 9>"$DIR.lock"
flock -w 600 9 || { echo "stop-cluster: could not lock $DIR.lock" >&2; exit 1; }

# pid_of NAME -> prints the recorded PID if it is alive and runs NAME (Debian names some daemons NAME-wlm)
pid_of() {
  local pid exe
  pid=$(cat "$STARTED/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  exe="${exe##*/}"; exe="${exe% (deleted)}"
  { [ "$exe" = "$1" ] || [ "$exe" = "$1-wlm" ]; } || return 1
  echo "$pid"
}

if [ "$KEEP_JOBS" = 0 ] && pid_of slurmctld >/dev/null; then
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs: $jobs"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null
    for _ in $(seq 150); do                    # KillWait=5 s plus epilog; up to 30 s
      [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
      sleep 0.2
    done
    left=$(squeue -h -o '%A:%T' 2>/dev/null | tr '\n' ' ')
    say "jobs gone: ${left:-yes}"
  fi
fi

# stop NAME... -> SIGTERM all of them at once, then wait for each (SIGKILL after 30 s)
stop() {
  local name pid i names=() pids=()
  for name in "$@"; do
    if pid=$(pid_of "$name"); then
      kill -TERM "$pid" 2>/dev/null
      names+=("$name"); pids+=("$pid")
    elif [ -e "$STARTED/$name.pid" ]; then
      say "$name: recorded pid $(cat "$STARTED/$name.pid") is not running; forgetting it"
      rm -f "$STARTED/$name.pid"
    fi
  done
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}; name=${names[$i]}
    for _ in $(seq 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name: pid $pid still alive 30 s after SIGTERM; SIGKILL"
      kill -KILL "$pid" 2>/dev/null
      sleep 0.5
    fi
    say "$name stopped (pid $pid)"
    rm -f "$STARTED/$name.pid"
  done
}

# slurmctld flushes accounting to slurmdbd on shutdown, so slurmdbd goes after it, MariaDB last
stop slurmd slurmctld
stop slurmdbd
stop mariadbd munged
say "done; config, state, accounting DB and logs kept in $DIR"
