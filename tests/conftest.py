"""Shared fixtures: one tiny model per test session, one thread everywhere (2 shared cores thrash at 2+)."""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib
import dataclasses
import subprocess
from pathlib import Path

import orjson
import pytest

from hpcsynth.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    from hpcsynth.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def write_corpus(path: Path, count: int, prefix: str = "doc") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for i in range(count):
            text = f"Document {i} about topic {i % 7}.\n" + " ".join(f"word{(i * 13 + j) % 97}" for j in range(40))
            handle.write(orjson.dumps({"id": f"{prefix}-{i}", "text": text}) + b"\n")
    return path


def outlived(pids: list[int], seconds: float = 10) -> list[int]:
    """Which of `pids` still run after up to `seconds` (zombies count as ended); those are killed, by these
    PIDs only, so that a failing test leaves nothing running."""
    import signal
    import time

    alive, deadline = set(pids), time.monotonic() + seconds
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if Path(f"/proc/{pid}").exists()
                 and Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1][0] != "Z"}
        time.sleep(0.05)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    return sorted(alive)


def same_process(pid: int, start: str) -> bool:
    """pid still names the process that started at `start` (RUN/local/ and lock records give both)."""
    from hpcsynth.locks import process_start

    return bool(start) and process_start(pid) == start


def all_gone(processes: list[dict], timeout: float = 10.0) -> bool:
    """Whether every {"pid", "start"} of `processes` has ended within `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(same_process(p["pid"], p["start"]) for p in processes):
            return True
        time.sleep(0.1)
    return False


@dataclasses.dataclass(frozen=True)
class Result:
    """What a CLI call did, shaped like subprocess.CompletedProcess (returncode, stdout, stderr)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str | os.PathLike, env: dict[str, str | None] | None = None, cwd: str | os.PathLike | None = None,
            input: str | None = None, timeout: float = 300, umask: int | None = None) -> Result:
    """Run `hpcsynth ARGS` in this process (hpcsynth.cli.app.main) as `python -m hpcsynth` would run it:
    exit code, stdout and stderr as subprocess.run(text=True) gives them, without paying Python's start-up
    and our imports at every call (some 330 calls in the suite; the way click and sqlite-utils test their
    CLIs). Worker processes the local executor starts are still real processes.

    env sets variables for the call (None unsets one); cwd and umask hold for the call only. Each call
    starts as a fresh process would and leaves this process as it found it (see _as_a_fresh_process): calls
    do not leak into each other. A hang fails after `timeout` seconds as subprocess.TimeoutExpired.

    One thing a call cannot have of its own is a pid: a worker this launch runs in-process names its clock
    RUN/tasks/HOST-PID.json and its leases after this process. Where that, a signal, kill -9, two commands
    at once or the memory of the process is the point, tests start a process (run_process, Popen).
    """
    argv = [os.fspath(a) for a in args]
    with _as_a_fresh_process(argv, env or {}, cwd, umask, input or "") as (out, err):
        code = _call_main(argv, timeout)
    if isinstance(code, subprocess.TimeoutExpired):
        raise code
    return Result(["hpcsynth", *argv], code, _as_text(out.getvalue()), _as_text(err.getvalue()))


class _CliTimeout(BaseException):
    """Raised by SIGALRM in a call past its timeout: a BaseException, so that no `except Exception` of the
    code under test takes it for an error of its own."""


def _call_main(argv: list[str], timeout: float):
    """main(argv)'s exit code, as the interpreter turns a return, a SystemExit or an uncaught exception
    into one; subprocess.TimeoutExpired when it ran past `timeout` (SIGALRM interrupts it)."""
    import signal
    import sys
    import traceback

    from hpcsynth.cli.app import main

    def alarm(signum, frame):  # noqa: ANN001 (signal's signature)
        raise _CliTimeout

    signal.signal(signal.SIGALRM, alarm)  # put back by _as_a_fresh_process
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's errors, --help, --version
        code = exc.code
    except _CliTimeout:
        return subprocess.TimeoutExpired(["hpcsynth", *argv], timeout)
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)  # SystemExit("message")
    return 1


@contextlib.contextmanager
def _as_a_fresh_process(argv: list[str], env: dict[str, str | None], cwd, umask: int | None, stdin: str):
    """Within: stdout and stderr captured (as bytes), stdin given, env, cwd, umask and sys.argv set, no log
    handler and no known secret, as in a process of its own. After: os.environ, cwd, umask, signal handlers,
    logging (log_to() adds file handlers), redact()'s secrets, sys.argv and the streams as they were."""
    import io
    import logging
    import signal
    import sys

    from hpcsynth import redact

    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    saved_signals = {s: signal.getsignal(s) for s in signal.valid_signals()
                     if s not in (signal.SIGKILL, signal.SIGSTOP) and signal.getsignal(s) is not None}
    loggers = [logging.getLogger(), logging.getLogger("hpcsynth")]
    saved_logging = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    saved_secrets = set(redact._known)
    saved_umask = os.umask(umask) if umask is not None else None
    out, err = io.BytesIO(), io.BytesIO()
    # Text streams over bytes, as on a pipe: .buffer, .encoding, isatty() False; stderr's errors are Python's.
    sys.stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    sys.stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace", write_through=True)
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8")
    sys.argv = ["hpcsynth", *argv]
    # No handler anywhere: warnings reach stderr through logging's last resort (not pytest's capture
    # handler), and a failed marker names the log this call opens (not one an earlier launch_run left).
    for logger in loggers:
        logger.handlers = []
    loggers[1].setLevel(logging.NOTSET)
    loggers[1].propagate = True
    redact._known.clear()  # a fresh process knows no secret until its engine registers one
    try:
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if cwd is not None:
            os.chdir(cwd)
        yield out, err
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
            stream.detach()  # keep the bytes: closing the wrapper would close them
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        if saved_umask is not None:
            os.umask(saved_umask)
        for name in set(os.environ) - set(saved_env):
            del os.environ[name]
        for name, value in saved_env.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
        for signum, handler in saved_signals.items():
            if signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)
        for logger, handlers, level, propagate in saved_logging:
            for handler in set(logger.handlers) - set(handlers):
                handler.close()  # the run's log file, opened by log_to()
            logger.handlers, logger.level, logger.propagate = handlers, level, propagate
        redact._known.clear()
        redact._known.update(saved_secrets)


def _as_text(data: bytes) -> str:
    """Bytes as subprocess.run(text=True) reads them from a pipe: UTF-8, universal newlines."""
    import io

    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace").read()


def run_process(*args: str | os.PathLike, env: dict[str, str] | None = None, timeout: float = 300,
                **popen) -> subprocess.CompletedProcess[str]:
    """`python -m hpcsynth ARGS` as a process of its own, for where the process is the point: a memory cap
    (preexec_fn), a relaunch whose worker must not share this process's pid (RUN/tasks/HOST-PID.json, lease
    owners). env adds to this process's environment."""
    import sys

    return subprocess.run([sys.executable, "-m", "hpcsynth", *map(os.fspath, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, **popen)


def fake_config(corpus: Path, **sections) -> Config:
    """The demo config on the fake engine, with fast intervals; sections replace parts of it."""
    config = load_config(REPO / "configs" / "demo.yaml")
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, engine="fake", path="fake-model"),
        plan=dataclasses.replace(config.plan, inputs=(str(corpus),), shard_docs=5),
        worker=dataclasses.replace(config.worker, flush_interval_s=0.05, heartbeat_interval_s=0.05),
    )
    for name, changes in sections.items():
        config = dataclasses.replace(config, **{name: dataclasses.replace(getattr(config, name), **changes)})
    return config


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Path:
    """GPT-NeoX-20B's tokenizer.json where ../shared/data has it, else a tokenizer trained here in seconds."""
    shared = SHARED_DATA / "tokenizers" / "gpt-neox-20b.tokenizer.json"
    if shared.is_file():
        return shared
    from hpcsynth.tinymodel import build_tokenizer

    folder = tmp_path_factory.mktemp("tok")
    build_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def cluster():
    """The project's single-node Slurm (slurm/start-cluster.sh), started once, left running."""
    from slurm_cluster import cluster_available, ensure_cluster

    ok, reason = cluster_available()
    if not ok:
        pytest.skip(reason)
    return ensure_cluster()


def planned_fake_run(tmp_path: Path, name: str = "run", docs: int = 40, shard_docs: int = 10, **sections):
    """A run planned from a generated corpus on the fake engine (see fake_config), in tmp_path/name."""
    from hpcsynth.plan import plan_corpus
    from hpcsynth.rundir import RunDir

    corpus = write_corpus(tmp_path / "corpus.jsonl", docs)
    config = fake_config(corpus, plan={"shard_docs": shard_docs}, **sections)
    run = RunDir(tmp_path / name)
    plan_corpus(config, run)
    return run


def pytest_collection_modifyitems(config, items) -> None:
    """tools/test.sh runs the lane on several pytest-xdist workers (--dist loadgroup): the tests that use
    the one Slurm dev cluster form one group, run one after the other by one worker, since they watch its
    queue, fill its CPUs and requeue its jobs. Most of the lane waits (on Slurm, on killed processes, on
    timeouts) rather than computes, so the other workers fill those waits."""
    for item in items:
        if item.get_closest_marker("slurm") or "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str = "1m"):
    """A real small filesystem mounted at folder (made here), to fill up; skips where this process may not
    mount (needs root). Unmounted after, whatever the test did."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip(f"mounting a {size} tmpfs needs root and the right to mount")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextlib.contextmanager
def loopback_server(handler):
    """A stand-in HTTP server (a BaseHTTPRequestHandler class) on 127.0.0.1 and a free port, served from a
    thread for the block; yields its base URL, http://127.0.0.1:PORT."""
    import threading
    from http.server import ThreadingHTTPServer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
