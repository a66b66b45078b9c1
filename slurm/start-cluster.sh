#!/usr/bin/env bash
# start-cluster.sh -- hpcsynth's single-node Slurm dev cluster (for the test suite, CI, and trying the tool).
#
# Runs slurmctld + slurmd + slurmdbd (with a private MariaDB, so `sacct` works) on 127.0.0.1, as root,
# without systemd. Debian/Ubuntu packages (written against Debian 12: Slurm 22.05, MariaDB 10.11).
#
# Usage:  slurm/start-cluster.sh [--fresh] [DIR]
#   DIR      cluster directory: config, state, logs, accounting DB, PID files
#            (default: $HPCSYNTH_SLURM_DIR, else /tmp/hpcsynth-slurm)
#   --fresh  wipe DIR first (refused while daemons of DIR are running)
#
# Idempotent: installs missing packages, writes the configuration only while none of the cluster's daemons
# run, starts only the daemons that are not running (tracked by PID files in DIR/run/started/), then waits
# until the node is usable. Calls on the same DIR are serialised by a lock file (DIR.lock).
# Afterwards:  export SLURM_CONF=DIR/etc/slurm.conf   (or: source DIR/cluster.env)
#
# Knobs (environment, all optional):
#   HPCSYNTH_SLURM_CPUS=8             CPUs the node advertises (may exceed the real cores)
#   HPCSYNTH_SLURM_MEM_MB=<90% RAM>   RealMemory of the node (jobs get DefMemPerCPU=512 MB per CPU)
#   HPCSYNTH_SLURM_GPUS=4             fake GPUs (gres gpu; 0 = none); symlinks to /dev/null in DIR/dev
#   HPCSYNTH_SLURM_MAX_ARRAY_SIZE=1001  MaxArraySize (Slurm's default; largest task index is this - 1)
#   HPCSYNTH_SLURM_CRED_EXPIRE=10     AuthInfo cred_expire (also the wait before a requeued job restarts)
#   HPCSYNTH_SLURM_NODENAME=<hostname -s>
#   HPCSYNTH_SLURM_ACCOUNTING=1       0 = no MariaDB/slurmdbd (sacct then does not work; submitit needs it)
#   HPCSYNTH_SLURM_PORT_BASE=6817     slurmctld=BASE, slurmd=BASE+1, slurmdbd=BASE+2
#   HPCSYNTH_SLURM_DB_PORT=13306      MariaDB port (127.0.0.1 only)
#   HPCSYNTH_SLURM_CGROUP=0           1 = proctrack/cgroup + task/cgroup (needs a writable cgroupfs)
#   HPCSYNTH_SLURM_LINK_ETC=1         point /etc/slurm/slurm.conf at DIR/etc/slurm.conf (only if that path
#                                     is absent or already a symlink), so plain `sinfo` works
#   HPCSYNTH_SLURM_WAIT_S=60          how long to wait for each daemon
#   HPCSYNTH_SLURM_NO_INSTALL=0       1 = never run apt-get; fail if packages are missing
set -euo pipefail

# ------------------------------------------------------------------------------------------ arguments
FRESH=0
DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --fresh) FRESH=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "start-cluster: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) [ -z "$DIR" ] || { echo "start-cluster: more than one DIR given" >&2; exit 2; }; DIR="$1" ;;
  esac
  shift
done
DIR="${DIR:-${HPCSYNTH_SLURM_DIR:-/tmp/hpcsynth-slurm}}"
case "$DIR" in /*) ;; *) DIR="$PWD/$DIR" ;; esac
DIR="${DIR%/}"

CPUS="${HPCSYNTH_SLURM_CPUS:-8}"
GPUS="${HPCSYNTH_SLURM_GPUS:-4}"
MAX_ARRAY="${HPCSYNTH_SLURM_MAX_ARRAY_SIZE:-1001}"
CRED_EXPIRE="${HPCSYNTH_SLURM_CRED_EXPIRE:-10}"
NODENAME="${HPCSYNTH_SLURM_NODENAME:-$(hostname -s)}"
ACCOUNTING="${HPCSYNTH_SLURM_ACCOUNTING:-1}"
PORT_BASE="${HPCSYNTH_SLURM_PORT_BASE:-6817}"
DB_PORT="${HPCSYNTH_SLURM_DB_PORT:-13306}"
CGROUP="${HPCSYNTH_SLURM_CGROUP:-0}"
LINK_ETC="${HPCSYNTH_SLURM_LINK_ETC:-1}"
WAIT_S="${HPCSYNTH_SLURM_WAIT_S:-60}"
NO_INSTALL="${HPCSYNTH_SLURM_NO_INSTALL:-0}"
CTLD_PORT="$PORT_BASE"
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_USER="slurm"
DB_PASS="hpcsynth-dev"     # the database listens on 127.0.0.1 only and holds nothing but test accounting

T0="${EPOCHREALTIME/./}"
say() { local us=$(( ${EPOCHREALTIME/./} - T0 )); printf '[start-cluster %3d.%02ds] %s\n' $((us / 1000000)) $((us % 1000000 / 10000)) "$*"; }
die() { echo "start-cluster: ERROR: $*" >&2; exit 1; }

for v in CPUS GPUS MAX_ARRAY CRED_EXPIRE PORT_BASE DB_PORT WAIT_S; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
[ "$(id -u)" = 0 ] || die "must run as root (slurmd runs jobs as their users; SlurmUser=root)"

# ------------------------------------------------------------------------------------------ packages
PKGS="slurm-wlm munge bc"
[ "$ACCOUNTING" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  [ "$NO_INSTALL" != 1 ] || die "missing packages:$missing (HPCSYNTH_SLURM_NO_INSTALL=1)"
  command -v apt-get >/dev/null || die "missing packages:$missing and no apt-get to install them"
  say "installing:$missing (apt-get, --no-install-recommends)"
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=600 "$@"; }
  # try without `apt-get update` first (fast when the package lists are current), then with it
  # shellcheck disable=SC2086
  if ! apt_install $missing >"/tmp/hpcsynth-slurm-apt.log" 2>&1; then
    # shellcheck disable=SC2086
    { apt-get update -o DPkg::Lock::Timeout=600 && apt_install $missing; } >>"/tmp/hpcsynth-slurm-apt.log" 2>&1 \
      || { tail -20 /tmp/hpcsynth-slurm-apt.log >&2; die "apt-get install failed (log: /tmp/hpcsynth-slurm-apt.log)"; }
  fi
  say "packages installed"
fi

# ------------------------------------------------------------------------------------------ lock, helpers
mkdir -p "$(dirname "$DIR")"
# fd 9 holds the lock; every daemon is started with 9>&- so that none of them inherits (and keeps) it
exec 9>"$DIR.lock"
flock -w 600 9 || die "could not lock $DIR.lock (another start/stop still running?)"

STARTED="$DIR/run/started"        # <daemon>.pid for every daemon this script started
export SLURM_CONF="$DIR/etc/slurm.conf"

# running NAME -> true if STARTED/NAME.pid names a live process whose executable is NAME (Debian: NAME-wlm)
running() {
  local pid exe
  pid=$(cat "$STARTED/$1.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  exe="${exe##*/}"; exe="${exe% (deleted)}"
  [ "$exe" = "$1" ] || [ "$exe" = "$1-wlm" ]
}
# wait_until DESCRIPTION CMD... -> polls CMD every 0.1 s for up to WAIT_S seconds
wait_until() {
  local desc="$1" deadline=$(( $(date +%s) + WAIT_S )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
  say "$desc"
}
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# check_port PORT WHAT KNOB -> die if something else listens on PORT (usually another dev cluster)
check_port() {
  port_in_use "$1" || return 0
  local hint="" other
  other=$(readlink /etc/slurm/slurm.conf 2>/dev/null || true)
  if [ -n "$other" ] && [ "$other" != "$SLURM_CONF" ]; then
    hint=" Perhaps the dev cluster in ${other%/etc/slurm.conf} runs: $(dirname "$0")/stop-cluster.sh ${other%/etc/slurm.conf}."
  fi
  die "port $1 ($2) is in use, not by the cluster in $DIR.${hint} Or choose other ports with $3."
}
node_usable() { sinfo -h -n "$NODENAME" -o %T 2>/dev/null | grep -qxE 'idle|mixed|allocated|completing'; }
# record NAME PIDFILE -> copy a daemon's own PID file into STARTED/
record() { cp "$2" "$STARTED/$1.pid"; }

DAEMONS="slurmd slurmctld slurmdbd mariadbd"
any_running=0
for d in $DAEMONS; do running "$d" && any_running=1; done

if [ "$FRESH" = 1 ] && [ -d "$DIR" ]; then
  [ "$any_running" = 0 ] || die "--fresh while daemons of $DIR run; stop them first: $(dirname "$0")/stop-cluster.sh $DIR"
  keep_munged=""
  running munged && keep_munged=$(cat "$STARTED/munged.pid")
  rm -rf "$DIR"
  say "wiped $DIR"
  if [ -n "$keep_munged" ]; then mkdir -p "$STARTED"; echo "$keep_munged" >"$STARTED/munged.pid"; fi
fi
mkdir -p "$DIR"/{etc,state,spool,log,run,dev,mysql} "$STARTED"
chmod 755 "$DIR" "$DIR/etc"     # jobs of other users read slurm.conf

# ------------------------------------------------------------------------------------------ configuration
# write_config ETCDIR: slurm.conf, gres.conf, slurmdbd.conf, cgroup.conf for the current knobs
write_config() {
  local etc="$1" mem_total_kb mem track acct gres_node=""
  mem_total_kb=$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)
  mem="${HPCSYNTH_SLURM_MEM_MB:-$(( mem_total_kb / 1024 * 9 / 10 ))}"
  if [ "$CGROUP" = 1 ]; then
    track="ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup,task/affinity"
    # ConstrainDevices stays off: all fake GPUs are /dev/null, constraining them would deny /dev/null itself
    printf '%s\n' CgroupPlugin=autodetect ConstrainCores=yes ConstrainRAMSpace=yes ConstrainDevices=no >"$etc/cgroup.conf"
  else
    track="ProctrackType=proctrack/linuxproc
TaskPlugin=task/none"
    rm -f "$etc/cgroup.conf"
  fi
  if [ "$ACCOUNTING" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu"
  else
    acct="AccountingStorageType=accounting_storage/none"
  fi
  if [ "$GPUS" -gt 0 ]; then gres_node="Gres=gpu:$GPUS"; fi

  cat >"$etc/slurm.conf" <<EOF
# hpcsynth dev cluster -- generated by slurm/start-cluster.sh; edits are overwritten at the next cold start
ClusterName=hpcsynth
SlurmctldHost=$NODENAME(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# default 120 s; it is also how long a requeued job waits before it may start again
AuthInfo=cred_expire=$CRED_EXPIRE
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$track
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without it every job takes the whole node's memory and jobs run one at a time
DefMemPerCPU=512
SchedulerType=sched/backfill
# defaults leave an eligible job pending for up to a minute
SchedulerParameters=bf_interval=1,sched_interval=2
# the node may claim more CPUs/memory than the machine has
SlurmdParameters=config_overrides
# preempted jobs get SIGUSR2 first (submitit checkpoints on it), then are requeued
SlurmctldParameters=preempt_send_user_signal
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
MaxArraySize=$MAX_ARRAY
MaxJobCount=100000
MinJobAge=300
# default 30 s between SIGTERM and SIGKILL on every cancel/requeue
KillWait=5
InactiveLimit=0
ReturnToService=2
MailProg=/bin/true
$acct
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
GresTypes=gpu
NodeName=$NODENAME NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$mem $gres_node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
PartitionName=gpu   Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=OFF
# jobs in 'low' are preempted (signalled, then requeued) by jobs in 'high'
PartitionName=low   Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=10
PartitionName=high  Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF

  # Fake GPUs: gres/gpu needs File= (count-only gpu gres is reported as 0 by slurmd: node INVAL), and the
  # files must be character/block devices; symlinks to /dev/null pass. Jobs get CUDA_VISIBLE_DEVICES.
  echo "AutoDetect=off" >"$etc/gres.conf"
  if [ "$GPUS" -gt 0 ]; then
    echo "NodeName=$NODENAME Name=gpu File=$DIR/dev/nvidia[0-$((GPUS - 1))]" >>"$etc/gres.conf"
  fi

  cat >"$etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$etc/slurmdbd.conf"     # slurmdbd refuses a slurmdbd.conf that others can read
  chmod 644 "$etc/slurm.conf" "$etc/gres.conf"
}

if [ "$any_running" = 0 ]; then
  getent hosts "$NODENAME" >/dev/null \
    || say "WARNING: '$NODENAME' does not resolve; if clients fail, add '127.0.0.1 $NODENAME' to /etc/hosts"
  write_config "$DIR/etc"
  rm -f "$DIR"/dev/nvidia*
  for ((i = 0; i < GPUS; i++)); do ln -s /dev/null "$DIR/dev/nvidia$i"; done
  {
    echo "SLURM_CONF=$SLURM_CONF"
    echo "HPCSYNTH_SLURM_DIR=$DIR"
    echo "HPCSYNTH_SLURM_NODENAME=$NODENAME"
    echo "HPCSYNTH_SLURM_GPUS=$GPUS"
    echo "HPCSYNTH_SLURM_CPUS=$CPUS"
    echo "HPCSYNTH_SLURM_MAX_ARRAY_SIZE=$MAX_ARRAY"
  } >"$DIR/cluster.env"
  sed 's/^/export /' "$DIR/cluster.env" >"$DIR/env.sh"
else
  # daemons are up: keep their configuration, but say so when the knobs now ask for a different one
  tmp_etc=$(mktemp -d)
  write_config "$tmp_etc"
  for f in slurm.conf gres.conf slurmdbd.conf; do
    cmp -s "$tmp_etc/$f" "$DIR/etc/$f" \
      || say "WARNING: running cluster keeps its $f; the current settings differ (stop-cluster.sh, then start again to apply)"
  done
  rm -rf "$tmp_etc"
fi

# ------------------------------------------------------------------------------------------ munge
if running munged; then
  say "munged running (pid $(cat "$STARTED/munged.pid"))"
elif munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "using a munged that this script did not start (stop-cluster.sh will leave it alone)"
else
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
      || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
  chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key; chmod 755 /run/munge
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged --force </dev/null >>"$DIR/log/munged.stdout" 2>&1 9>&-
  wait_until "munged up" sh -c 'munge -n | unmunge' || die "munged did not come up (see /var/log/munge/munged.log)"
  record munged /run/munge/munged.pid
fi

# ------------------------------------------------------------------------------------------ accounting
if [ "$ACCOUNTING" = 1 ]; then
  if running mariadbd; then
    say "mariadbd running (pid $(cat "$STARTED/mariadbd.pid"))"
  else
    check_port "$DB_PORT" MariaDB HPCSYNTH_SLURM_DB_PORT
    if [ ! -d "$DIR/mysql/mysql" ]; then
      mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql" \
        --auth-root-authentication-method=socket --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 \
        || die "mariadb-install-db failed, see $DIR/log/mariadb-install.log"
      say "MariaDB data directory created"
    fi
    rm -f "$DIR/run/mariadbd.pid"
    setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$DIR/mysql" \
      --socket="$DIR/run/mysqld.sock" --pid-file="$DIR/run/mariadbd.pid" \
      --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
      --log-error="$DIR/log/mariadb.err" --innodb-buffer-pool-size=128M \
      --innodb-lock-wait-timeout=900 </dev/null >>"$DIR/log/mariadbd.stdout" 2>&1 9>&- &
    wait_until "mariadbd up" mariadb-admin --socket="$DIR/run/mysqld.sock" ping \
      || die "mariadbd did not come up, see $DIR/log/mariadb.err"
    wait_until "mariadbd pid file" test -s "$DIR/run/mariadbd.pid" || die "mariadbd wrote no PID file"
    record mariadbd "$DIR/run/mariadbd.pid"
    mariadb --socket="$DIR/run/mysqld.sock" -e "
      CREATE DATABASE IF NOT EXISTS slurm_acct_db;
      CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
      CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
      GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'127.0.0.1';
      GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'localhost';" || die "could not create the accounting database"
  fi

  if running slurmdbd; then
    say "slurmdbd running (pid $(cat "$STARTED/slurmdbd.pid"))"
  else
    check_port "$DBD_PORT" slurmdbd HPCSYNTH_SLURM_PORT_BASE
    rm -f "$DIR/run/slurmdbd.pid"
    slurmdbd </dev/null >>"$DIR/log/slurmdbd.stdout" 2>&1 9>&-   # reads slurmdbd.conf next to $SLURM_CONF; daemonizes
    wait_until "slurmdbd up" sacctmgr -n show cluster || die "slurmdbd did not come up, see $DIR/log/slurmdbd.log"
    record slurmdbd "$DIR/run/slurmdbd.pid"
  fi
fi

# ------------------------------------------------------------------------------------------ slurmctld, slurmd
if running slurmctld; then
  say "slurmctld running (pid $(cat "$STARTED/slurmctld.pid"))"
else
  check_port "$CTLD_PORT" slurmctld HPCSYNTH_SLURM_PORT_BASE
  rm -f "$DIR/run/slurmctld.pid"
  slurmctld -f "$SLURM_CONF" </dev/null >>"$DIR/log/slurmctld.stdout" 2>&1 9>&-   # recovers jobs from DIR/state
  wait_until "slurmctld up" sh -c 'scontrol ping | grep -q UP' || die "slurmctld did not come up, see $DIR/log/slurmctld.log"
  record slurmctld "$DIR/run/slurmctld.pid"
fi

if running slurmd; then
  say "slurmd running (pid $(cat "$STARTED/slurmd.pid"))"
else
  check_port "$SLURMD_PORT" slurmd HPCSYNTH_SLURM_PORT_BASE
  rm -f "$DIR/run/slurmd.pid"
  mkdir -p "$DIR/spool/slurmd-$NODENAME"
  slurmd -f "$SLURM_CONF" -N "$NODENAME" </dev/null >>"$DIR/log/slurmd.stdout" 2>&1 9>&-
  wait_until "slurmd up" test -s "$DIR/run/slurmd.pid" || die "slurmd did not start, see $DIR/log/slurmd.log"
  record slurmd "$DIR/run/slurmd.pid"
fi

# A node left DOWN/DRAIN/INVAL (unclean stop, earlier bad config) stays so across restarts: resume it.
if ! WAIT_S=5 wait_until "node $NODENAME usable" node_usable; then
  say "node $NODENAME: $(sinfo -h -N -n "$NODENAME" -o '%T %E' | head -1); resuming it"
  scontrol update NodeName="$NODENAME" State=RESUME 2>/dev/null || true
  wait_until "node $NODENAME usable after RESUME" node_usable \
    || die "node not usable: $(sinfo -h -N -o '%N %T %E'), see $DIR/log/slurmd.log"
fi

# only now, so that a failed start leaves the link of a running cluster alone
if [ "$LINK_ETC" = 1 ]; then
  if [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
    mkdir -p /etc/slurm
    ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
  else
    say "NOTE: /etc/slurm/slurm.conf is a real file, left alone; use SLURM_CONF=$SLURM_CONF"
  fi
fi

say "ready"
cat <<EOF
hpcsynth Slurm dev cluster is up in $DIR
  export SLURM_CONF=$SLURM_CONF        (or: source $DIR/env.sh)
  daemons: $(for f in "$STARTED"/*.pid; do [ -e "$f" ] && printf '%s=%s ' "$(basename "$f" .pid)" "$(cat "$f")"; done)
  logs:    $DIR/log/
  sacct:   $([ "$ACCOUNTING" = 1 ] && echo "on (slurmdbd 127.0.0.1:$DBD_PORT, MariaDB 127.0.0.1:$DB_PORT)" || echo off)
$(sinfo)
stop with: $(cd "$(dirname "$0")" && pwd)/stop-cluster.sh $DIR
EOF
