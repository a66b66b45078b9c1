"""One tune trial: the engine built with one setting, the sample's requests through it, the rate measured.

Each trial is its own process (`python -m hpcsynth.tune.trial DIR K`): a trial that runs out of memory,
segfaults in a CUDA kernel or hangs takes only itself down, and the next starts on a clean device. The
parent (tune/search.py) gives it a deadline and classes how it ended from what it left:
  ok       DIR/trials/K.json with the measurements
  oom      the engine said out of memory (CUDA, vLLM's KV-cache sizing, MemoryError), or the process was
           killed by SIGKILL without our deadline (the kernel's out-of-memory killer)
  timeout  the deadline passed (a hang, or a setting too slow to finish the sample in time)
  invalid  the engine refused the setting before it started (hpcsynth's or vLLM's argument checks)
  crash    anything else: an exception, a signal, an exit without a result

Steady state: engine start-up (weights, CUDA graphs) is timed apart, and the rate counts only completions
between the first 20% and the last 10% of them: the ramp-up while the batch fills and the tail while it
drains say nothing of a shard of thousands of requests.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import orjson

from hpcsynth.errors import ConfigError, HpcsynthError
from hpcsynth.files import atomic_write_bytes, read_regular

WARMUP_SHARE = 0.2  # completions before this share are the ramp-up
TAIL_SHARE = 0.1  # completions after 1 - this share are the drain
STOP_GRACE_S = 10.0  # after SIGTERM, before SIGKILL
OOM_MARKERS = ("out of memory", "outofmemory", "no available memory for the cache blocks",
               "insufficient memory", "cannot allocate memory", "memoryerror")


def steady_rate(times: list[float], tokens: list[int]) -> tuple[float, float]:
    """(steady-state tokens per second, seconds it covers) from completion times (sorted) and their tokens.
    Under 5 completions there is no steady state to cut out: the whole span from the first request counts."""
    n = len(times)
    if n == 0:
        return 0.0, 0.0
    if n < 5:
        span = times[-1]
        return (sum(tokens) / span if span > 0 else 0.0), span
    first = max(0, math.ceil(n * WARMUP_SHARE) - 1)
    last = min(n - 1, max(first + 1, math.floor(n * (1 - TAIL_SHARE)) - 1))
    span = times[last] - times[first]
    counted = sum(tokens[first + 1:last + 1])
    if span <= 0:
        return 0.0, 0.0
    return counted / span, span


def classify(message: str) -> str:
    lowered = message.lower()
    if any(marker in lowered for marker in OOM_MARKERS):
        return "oom"
    return "crash"


def run_trial(tune_dir: Path, number: int) -> dict[str, Any]:
    """Measure one trial in this process (the child's body); the result is also written to DIR/trials/K.json."""
    from hpcsynth.config import load_config
    from hpcsynth.generate.engines import Request, make_engine
    from hpcsynth.generate.engines.telemetry import with_rates
    from hpcsynth.tune.space import apply, per_gpu

    spec = orjson.loads(read_regular(tune_dir / "trials" / f"{number}.spec.json"))
    planned = orjson.loads(read_regular(tune_dir / "options.json")).get("config_sha256")
    if hashlib.sha256(read_regular(tune_dir / "config.yaml")).hexdigest() != planned:
        raise ConfigError(f"{tune_dir / 'config.yaml'} changed during the tune: its trials would not compare; "
                          f"change the config you pass to `hpcsynth tune` and run the tune again")
    config = apply(load_config(tune_dir / "config.yaml"), spec["settings"], f"tune trial {number}")
    requests, prompt_of = [], {}
    for line in read_regular(tune_dir / "requests.jsonl", 1 << 34).splitlines():
        item = orjson.loads(line)
        requests.append(Request(item["record_id"], item["messages"], item["seed"]))
        prompt_of[item["record_id"]] = item["prompt"]
    started = time.monotonic()
    engine = make_engine(config)
    loaded = time.monotonic()
    times, tokens, kv_peak, rejected = [], [], 0.0, 0
    per_prompt: dict[str, list[int]] = {}
    prompt_tokens = 0
    last_look = loaded
    reading: dict[str, float] | None = None
    try:
        for completion in engine.generate(requests):
            now = time.monotonic()
            if completion.finish_reason == "rejected":
                rejected += 1
                continue
            times.append(now - loaded)
            tokens.append(completion.completion_tokens)
            prompt_tokens += completion.prompt_tokens
            per_prompt.setdefault(prompt_of.get(completion.record_id, "?"), []).append(completion.completion_tokens)
            if now - last_look >= 1.0 and hasattr(engine, "telemetry"):
                last_look, reading = now, engine.telemetry()
                kv_peak = max(kv_peak, (reading or {}).get("kv_cache_usage", 0.0))
        reading = engine.telemetry() if hasattr(engine, "telemetry") else None
    finally:
        engine.close()
    finished = time.monotonic()
    rate, span = steady_rate(times, tokens)
    gpus = per_gpu(config)
    result = {"trial": number, "state": "ok", "settings": spec["settings"],
              "tokens_per_s": rate / gpus, "tokens_per_s_engine": rate, "steady_s": span,
              "tokens_per_s_overall": sum(tokens) / (finished - started) / gpus if finished > started else 0.0,
              "load_s": loaded - started, "generate_s": finished - loaded, "requests": len(times),
              "rejected": rejected, "completion_tokens": sum(tokens), "prompt_tokens": prompt_tokens,
              "output_tokens_per_record": {p: sum(v) / len(v) for p, v in sorted(per_prompt.items()) if v},
              "gpus_per_engine": gpus, "telemetry": _telemetry(reading, kv_peak, with_rates)}
    return result


def _telemetry(reading: dict[str, float] | None, kv_peak: float, with_rates: Any) -> dict[str, float]:
    if not reading:
        return {}
    values = with_rates(dict(reading))
    keep = ("prefix_cache_hit_rate", "spec_acceptance_rate", "preemptions", "spec_drafts")
    out = {k: float(values[k]) for k in keep if isinstance(values.get(k), (int, float))}
    out["kv_cache_peak"] = max(kv_peak, float(reading.get("kv_cache_usage", 0.0)))
    return out


def main(argv: list[str]) -> int:
    tune_dir, number = Path(argv[0]), int(argv[1])
    out = tune_dir / "trials" / f"{number}.json"
    try:
        result = run_trial(tune_dir, number)
    except ConfigError as exc:  # a setting refused by our checks
        result = {"trial": number, "state": "invalid", "error": str(exc)}
    except (Exception, MemoryError) as exc:
        message = f"{type(exc).__name__}: {exc}"
        state = classify(message + " " + type(exc).__name__)
        if state == "crash" and isinstance(exc, HpcsynthError) and "refuse" in str(exc).lower():
            state = "invalid"
        if state == "crash" and _refused_argument(exc):
            state = "invalid"
        traceback.print_exc()
        result = {"trial": number, "state": state, "error": message.splitlines()[0][:500] if message else ""}
    atomic_write_bytes(out, orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY))
    return 0 if result["state"] == "ok" else 1


def _refused_argument(exc: BaseException) -> bool:
    """vLLM's argument checks (pydantic's ValidationError, a TypeError on an unknown keyword) raise before any
    model loads: the setting is not one this vLLM takes, which is not a crash of it."""
    return type(exc).__name__ in ("ValidationError", "TypeError") or "validation error" in str(exc).lower()


# --- the parent's side ------------------------------------------------------------------------------------


def start_trial(tune_dir: Path, number: int, settings: dict[str, Any]) -> subprocess.Popen:
    """Start trial `number` as its own process group (a deadline stops it and whatever it started)."""
    trials = tune_dir / "trials"
    trials.mkdir(exist_ok=True)
    atomic_write_bytes(trials / f"{number}.spec.json", orjson.dumps({"settings": settings}))
    (trials / f"{number}.json").unlink(missing_ok=True)
    log = open(trials / f"{number}.log", "wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "hpcsynth.tune.trial", str(tune_dir.resolve()), str(number)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log.close()


def finish_trial(tune_dir: Path, number: int, process: subprocess.Popen, timeout_s: float) -> dict[str, Any]:
    """Wait for the trial up to `timeout_s`, then class how it ended (ok, oom, timeout, invalid, crash)."""
    started = time.monotonic()
    timed_out = False
    try:
        process.wait(timeout=max(0.1, timeout_s))
    except subprocess.TimeoutExpired:
        timed_out = True
        stop_group(process)
    except BaseException:  # Ctrl-C, SIGTERM: the trial goes with the tuner
        stop_group(process)
        raise
    wall = time.monotonic() - started
    path = tune_dir / "trials" / f"{number}.json"
    result: dict[str, Any] | None = None
    if path.is_file() and not timed_out:
        try:
            result = orjson.loads(read_regular(path))
        except (orjson.JSONDecodeError, OSError):
            result = None
    if result is None:
        state, error = _ended(process.returncode, timed_out, timeout_s, tune_dir, number)
        result = {"trial": number, "state": state, "error": error}
    result["wall_s"] = wall
    return result


def _ended(code: int | None, timed_out: bool, timeout_s: float, tune_dir: Path, number: int) -> tuple[str, str]:
    if timed_out:
        return "timeout", f"no result within {timeout_s:.0f} s; stopped"
    tail = _log_tail(tune_dir / "trials" / f"{number}.log")
    if tail and classify(tail) == "oom":
        return "oom", _last_line(tail)
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        if -code == signal.SIGKILL:
            return "oom", f"killed by {name} (most likely the kernel's out-of-memory killer)"
        return "crash", f"died of {name}"
    return "crash", _last_line(tail) or f"exited with code {code} without a result"


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the trial's process group, SIGKILL after a grace; only the group this tuner started."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            process.wait(timeout=wait)
            if sig == signal.SIGTERM:
                with_group_gone(process.pid)
            return
        except subprocess.TimeoutExpired:
            continue


def with_group_gone(pgid: int) -> None:
    """After the leader exits, anything left of its group (an engine core process) is killed too."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _log_tail(path: Path) -> str:
    from hpcsynth.files import read_tail

    try:
        return read_tail(path, 16384).decode("utf-8", "replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or [""])[-1][:500]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
