"""Helpers for tests that need a real Slurm: the project's single-node dev cluster (slurm/start-cluster.sh).

Plain functions, no pytest fixtures: a test (or a session fixture in conftest.py) calls

    ok, reason = cluster_available()      # skip with `reason` when not ok
    info = ensure_cluster()               # idempotent; starts only what is not running
    subprocess.run(["sbatch", ...], env=info.env)

`info.env` is a copy of os.environ with SLURM_CONF pointing at the cluster and the Slurm variables of an
enclosing job or session (SLURM_*, SBATCH_*, ...) removed. The cluster is left running after the tests;
`stop_cluster(info)` stops it (recorded PIDs only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SLURM_SCRIPTS = Path(__file__).resolve().parents[1] / "slurm"
START_SCRIPT = SLURM_SCRIPTS / "start-cluster.sh"
STOP_SCRIPT = SLURM_SCRIPTS / "stop-cluster.sh"
DEFAULT_BASE_DIR = Path("/tmp/hpcsynth-slurm-test")
BASE_DIR_ENV = "HPCSYNTH_SLURM_DIR"

# what start-cluster.sh needs on PATH once the packages are installed
_BINARIES = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "squeue", "scontrol", "sacctmgr",
             "munged", "munge", "mariadbd", "mariadb-install-db", "mariadb-admin")
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
# environment of an enclosing Slurm job/session that must not leak into commands for the dev cluster
_STRIP_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SACCT_", "SINFO_", "SCONTROL_")
_OUTPUT_TAIL_LINES = 40


@dataclass(frozen=True)
class ClusterInfo:
    conf: Path                                    # the cluster's slurm.conf
    env: dict[str, str] = field(hash=False, repr=False)  # os.environ copy with SLURM_CONF set, for subprocess(env=)
    nodename: str                                 # the single node's NodeName
    dir: Path                                     # cluster directory (config, state, logs, accounting DB)


def default_base_dir() -> Path:
    """$HPCSYNTH_SLURM_DIR if set, else /tmp/hpcsynth-slurm-test (apart from a user's /tmp/hpcsynth-slurm)."""
    return Path(os.environ.get(BASE_DIR_ENV) or DEFAULT_BASE_DIR)


def cluster_available() -> tuple[bool, str]:
    """Whether ensure_cluster() can work here: (True, how) or (False, why not)."""
    if not sys.platform.startswith("linux"):
        return False, f"the Slurm dev cluster needs Linux (this is {sys.platform})"
    if not START_SCRIPT.is_file():
        return False, f"{START_SCRIPT} is missing"
    if os.geteuid() != 0:
        return False, "the Slurm dev cluster needs root (slurmd runs jobs as their users)"
    missing = [name for name in _BINARIES if shutil.which(name, path=_SBIN_PATH) is None]
    if not missing:
        return True, "Slurm, munge and MariaDB are installed"
    if os.environ.get("HPCSYNTH_SLURM_NO_INSTALL") == "1":
        return False, f"missing {', '.join(missing)} and HPCSYNTH_SLURM_NO_INSTALL=1"
    if shutil.which("apt-get", path=_SBIN_PATH) is None or shutil.which("dpkg-query", path=_SBIN_PATH) is None:
        return False, f"missing {', '.join(missing)} and no apt-get to install them"
    return True, f"missing {', '.join(missing)}; start-cluster.sh will install them with apt-get"


def _tail(text: str) -> str:
    return "\n".join(text.rstrip().splitlines()[-_OUTPUT_TAIL_LINES:])


def _read_cluster_env(base: Path) -> dict[str, str]:
    values = {}
    for line in (base / "cluster.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def _client_env(conf: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(_STRIP_PREFIXES)}
    env["SLURM_CONF"] = str(conf)
    return env


def ensure_cluster(base_dir: Path | None = None, *, timeout: float = 1200.0) -> ClusterInfo:
    """Start the dev cluster in base_dir unless it already runs (idempotent) and describe it.

    Runs slurm/start-cluster.sh, which installs missing packages (apt-get; hence the long timeout), starts
    only the daemons that are not running and waits until the node is usable. Knobs are read from the
    environment by the script (HPCSYNTH_SLURM_*, see slurm/README.md); they take effect on a cold start only.
    Raises RuntimeError with the tail of the script's output when it fails.
    """
    base = Path(base_dir) if base_dir is not None else default_base_dir()
    base = base.absolute()
    output = _run_script([str(START_SCRIPT), str(base)], timeout, f"logs in {base}/log; ",
                         env={**os.environ, **port_knobs(base)})
    try:
        values = _read_cluster_env(base)
        conf = Path(values["SLURM_CONF"])
        nodename = values["HPCSYNTH_SLURM_NODENAME"]
    except (OSError, KeyError) as exc:
        raise RuntimeError(f"{START_SCRIPT.name} succeeded but {base}/cluster.env is unusable ({exc!r}); "
                           f"output tail:\n{_tail(output)}") from None
    return ClusterInfo(conf=conf, env=_client_env(conf), nodename=nodename, dir=base)


def stop_cluster(info: ClusterInfo, *, keep_jobs: bool = False, timeout: float = 300.0) -> None:
    """Stop the cluster's daemons (by their recorded PIDs; its jobs are cancelled first unless keep_jobs).

    Config, job state, accounting DB and logs stay in info.dir, so a later ensure_cluster() is a fast cold
    start. Raises RuntimeError with the script's output tail when it fails.
    """
    _run_script([str(STOP_SCRIPT)] + (["--keep-jobs"] if keep_jobs else []) + [str(info.dir)], timeout)


def _run_script(args: list[str], timeout: float, hint: str = "", env: dict[str, str] | None = None) -> str:
    """Run one of slurm/*.sh; RuntimeError with its output tail when it fails or hangs."""
    name = f"{Path(args[0]).name} {args[-1]}"
    try:
        proc = subprocess.run(["bash", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        output = exc.output.decode(errors="replace") if isinstance(exc.output, bytes) else (exc.output or "")
        raise RuntimeError(f"{name} did not finish within {timeout:.0f} s; output tail:\n{_tail(output)}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}); {hint}output tail:\n{_tail(proc.stdout)}")
    return proc.stdout


# start-cluster.sh's default ports, which a user's own dev cluster (README, slurm/README.md) holds too.
DEFAULT_PORT_BASE, DEFAULT_DB_PORT = 6817, 13306
# Where the tests' cluster looks for free ports when those are taken (base, base+1, base+2 and a DB port).
FALLBACK_PORT_BASE, FALLBACK_DB_PORT = 16817, 23306
_PORT_KNOBS = ("HPCSYNTH_SLURM_PORT_BASE", "HPCSYNTH_SLURM_DB_PORT")


def port_knobs(base: Path) -> dict[str, str]:
    """Ports for the tests' cluster in `base`, so that it never collides with a dev cluster a user
    started from the README: the user's own knobs if set; the ports of the tests' cluster if it already
    runs (start-cluster.sh then keeps it as it is); the defaults if free; else the first free ones."""
    if any(knob in os.environ for knob in _PORT_KNOBS):
        return {}
    running = _running_ports(base)
    if running:
        return running
    if _ports_free(DEFAULT_PORT_BASE, DEFAULT_DB_PORT):
        return {}
    # Another cluster holds the defaults: leave /etc/slurm/slurm.conf pointing at that one, too.
    return {**pick_free_ports(), "HPCSYNTH_SLURM_LINK_ETC": "0"}


def pick_free_ports(start: int = FALLBACK_PORT_BASE, db_start: int = FALLBACK_DB_PORT) -> dict[str, str]:
    for offset in range(0, 1000, 10):
        if _ports_free(start + offset, db_start + offset):
            return {"HPCSYNTH_SLURM_PORT_BASE": str(start + offset), "HPCSYNTH_SLURM_DB_PORT": str(db_start + offset)}
    raise RuntimeError(f"no free ports for the test cluster from {start} and {db_start}; set {' and '.join(_PORT_KNOBS)}")


def _ports_free(port_base: int, db_port: int) -> bool:
    return not any(_listening(port) for port in (port_base, port_base + 1, port_base + 2, db_port))


def _listening(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _running_ports(base: Path) -> dict[str, str]:
    """The ports of the cluster in `base` when its slurmctld runs (its PID file names a live process)."""
    try:
        pid = int((base / "run" / "started" / "slurmctld.pid").read_text().strip())
        os.kill(pid, 0)
        conf = (base / "etc" / "slurm.conf").read_text() + (base / "etc" / "slurmdbd.conf").read_text()
    except (OSError, ValueError):
        return {}
    values = dict(line.split("=", 1) for line in conf.splitlines() if "=" in line and not line.startswith("#"))
    if "SlurmctldPort" not in values or "StoragePort" not in values:
        return {}
    return {"HPCSYNTH_SLURM_PORT_BASE": values["SlurmctldPort"].strip(),
            "HPCSYNTH_SLURM_DB_PORT": values["StoragePort"].strip()}


def hpcsynth_on(cluster: ClusterInfo, *args: str) -> subprocess.CompletedProcess:
    """`hpcsynth ARGS` with the cluster's client environment; a non-zero exit fails with its output."""
    proc = subprocess.run([sys.executable, "-m", "hpcsynth", *args], env=cluster.env, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"hpcsynth {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_cancelled(cluster: ClusterInfo, ids: list[str], seconds: float = 60) -> None:
    """Until sacct shows every job of `ids` CANCELLED (it lags scancel by a moment); fails after `seconds`."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        states = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "-o", "State"], env=cluster.env,
                                capture_output=True, text=True).stdout.splitlines()
        if states and all(state.startswith("CANCELLED") for state in states):
            return
        assert time.monotonic() < deadline, f"jobs {ids} not all cancelled: {states}"
        time.sleep(1)
