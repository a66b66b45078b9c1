"""The campaign FinePhrase ran: 339,000 shards, 1,000 GPU workers, one run directory on a parallel filesystem.

What does the run directory cost the filesystem's metadata server, per committed shard and per second,
and what do a worker's start and a status refresh cost at 10^4-10^5 shards? Builds (or reuses, under
--work) runs of 1-document shards planned for real, with a fraction done the way a worker leaves it
(tools/campaign_runs.py, tools/campaign_state.py), then for the checkout given by --code (put on
PYTHONPATH of every process; default: this repository) measures, through entry points every version has:

  workers   W real workers (`python -m hpcsynth.generate.pull RUN`, fake engine) on a 90%-done run, each
            under strace; metadata calls and fsyncs per committed shard after each worker's first claim,
            the share spent probing shards other workers hold or committed, and start-up calls per worker
  claims    the same at W=2 at 0%, 50% and 90% done (one size)
  start     a worker's seconds, CPU and peak RSS until its first claim (audit hook, no strace)
  status    `status RUN --json` and `estimate RUN`: CPU s and peak RSS, first refresh and a second after
            W=2's commits; metadata calls of each (strace)
  beats     calls per second of a worker generating one long shard (heartbeats, renewals, its clock)

Counts, not wall time: 2 shared cores make wall time the neighbours' (see tools/campaign_trace.py).

    python tools/bench_campaign.py --work DIR --sizes 10000,100000,339000 [--code CHECKOUT] [--out FILE]
    python tools/bench_campaign.py --work DIR --code A --against B      # both, then a ratio table
    python tools/bench_campaign.py --compare BEFORE.json AFTER.json     # ratio table of two saved runs
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign_report import compare, report  # noqa: E402
from campaign_runs import env_for, restore, template  # noqa: E402
from campaign_trace import LAUNCHER, add, metadata, read_trace, strace_prefix  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# FinePhrase: 339M documents in 339k shards of 1,000, 4 prompts x ~359 completion tokens per document,
# ~4,000 effective tok/s per H100 over the campaign (docs/cost.md): 1.436M tokens, ~359 s per shard.
SECONDS_PER_SHARD = 1_000 * 4 * 359 / 4_000
GPUS = 1_000
PEAK = """
import resource, subprocess, sys, time
t = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_utime + r.ru_stime, r.ru_maxrss, time.perf_counter() - t)
"""


def peak(command: list[str], env: dict) -> dict:
    """CPU seconds, peak RSS (MB) and wall seconds of one child, alone (a small parent's RUSAGE_CHILDREN)."""
    out = subprocess.run([sys.executable, "-c", PEAK] + command, env=env, check=True, capture_output=True,
                         text=True).stdout.split()
    return {"cpu_s": round(float(out[0]), 3), "rss_mb": round(int(out[1]) / 1024, 1), "wall_s": round(float(out[2]), 3)}


def traced_calls(command: list[str], env: dict, trace: Path, run: Path, info: dict) -> dict:
    subprocess.run(strace_prefix(trace) + command, env=env, check=True, stdout=subprocess.DEVNULL)
    counts = read_trace(trace, str(run), info["done_path_example"])
    trace.unlink()
    return add(counts["start"], counts["steady"])


def done_count(info: dict) -> int:
    try:
        return len(os.listdir(info["done_dir"]))
    except FileNotFoundError:  # nothing committed yet
        return 0


def workers(code: Path, run: Path, info: dict, count: int, per_worker: int, traces: Path,
            delay_s: float = 0.05, stop_after_s: float | None = None) -> dict:
    """W traced workers; stopped once all have started and W x per_worker shards were committed since."""
    env = env_for(code, HPCSYNTH_FAKE_FAULTS=json.dumps({"delay_s": delay_s}))
    traces.mkdir(parents=True, exist_ok=True)
    tasks = Path(info["tasks_dir"])
    clocks = len(os.listdir(tasks)) if tasks.is_dir() else 0
    first = done_count(info)
    procs = [subprocess.Popen(strace_prefix(traces / f"w{i}.trace") + [sys.executable, "-m", "hpcsynth.generate.pull",
                              str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(count)]
    started, began, target = time.monotonic(), None, None
    while any(p.poll() is None for p in procs) and time.monotonic() - started < 900:
        time.sleep(0.25)
        if began is None and tasks.is_dir() and len(os.listdir(tasks)) >= clocks + count:
            began, target = time.monotonic(), done_count(info) + count * per_worker
        if stop_after_s is not None and began is not None and time.monotonic() - began >= stop_after_s:
            break
        if target is not None and stop_after_s is None and done_count(info) >= target:
            break
    for p in procs:  # the python under each strace: a child of the strace this bench started
        for child in _children(p.pid):
            os.kill(child, signal.SIGTERM)
    for p in procs:
        p.wait()
    per = [read_trace(traces / f"w{i}.trace", str(run), info["done_path_example"]) for i in range(count)]
    for i in range(count):
        (traces / f"w{i}.trace").unlink()
    commits = done_count(info) - first
    steady = {}
    for key in ("steady", "own_shards", "other_shards"):
        steady[key] = {}
        for one in per:
            steady[key] = add(steady[key], one[key])
    start = {}
    for one in per:
        start = add(start, one["start"])
    late = sum(metadata(one["late"]) for one in per)
    late_s = sum(one["late_s"] or 0 for one in per)
    return {"workers": count, "commits": commits, "steady": steady["steady"], "own": steady["own_shards"],
            "other": steady["other_shards"], "start_per_worker": {k: v / count for k, v in start.items()},
            "start_s": [one["start_s"] for one in per], "late_calls": late, "late_s": late_s,
            "metadata_per_commit": round(metadata(steady["steady"]) / max(commits, 1), 1),
            "fsync_per_commit": round(steady["steady"].get("fsync", 0) / max(commits, 1), 2),
            "busy_share": round(metadata(steady["other_shards"]) / max(metadata(steady["steady"]), 1), 3),
            "start_metadata_per_worker": round(metadata(start) / count)}


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def first_claim(code: Path, run: Path, work: Path) -> dict:
    """A worker's start-up until its first claim: wall, CPU, peak RSS; best CPU of two tries."""
    best = None
    for _ in range(2):
        out = work / f"first-claim-{os.getpid()}.json"
        begun = time.time()
        subprocess.run([sys.executable, "-c", LAUNCHER, str(run), str(out)], env=env_for(code),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
        note = json.loads(out.read_text())
        result = {"wall_s": round(note["wall"] - begun, 2), "cpu_s": round(note["cpu_s"], 2),
                  "rss_mb": round(note["rss_kb"] / 1024, 1), "claim": f"{note['event']} {note['path']}"}
        best = result if best is None or result["cpu_s"] < best["cpu_s"] else best
    return best


def measure_size(code: Path, work: Path, shards: int, args, log) -> dict:
    run, meta = template(code, work, shards, 0.9, log)
    info = meta["info"]
    out: dict = {"shards": shards, "done": info["done"], "plan_s": meta["plan_s"], "fabricated": meta["fabricated"]}
    env = env_for(code)
    status = [sys.executable, "-m", "hpcsynth", "status", str(run), "--json"]
    estimate = [sys.executable, "-m", "hpcsynth", "estimate", str(run)]
    traces = work / f"traces-{os.getpid()}"
    traces.mkdir(exist_ok=True)
    restore(run, info)
    log(f"  {shards:,}: status and estimate, first refresh, then W=2 workers, second refresh ...")
    out["status_1"], out["estimate_1"] = peak(status, env), peak(estimate, env)
    out["w2"] = workers(code, run, info, 2, args.per_worker, traces)
    out["status_2"], out["estimate_2"] = peak(status, env), peak(estimate, env)
    out["status_2"]["new_commits"] = out["w2"]["commits"]
    restore(run, info)
    second = args.second_w
    log(f"  {shards:,}: the same, traced; W={second} workers ...")
    out["status_1"]["metadata"] = traced_calls(status, env, traces / "s.trace", run, info)
    out["estimate_1"]["metadata"] = traced_calls(estimate, env, traces / "e.trace", run, info)
    key = f"w{second}" if f"w{second}" not in out else f"w{second}_again"
    out[key] = workers(code, run, info, second, args.per_worker, traces)
    out["status_2"]["metadata"] = traced_calls(status, env, traces / "s.trace", run, info)
    out["estimate_2"]["metadata"] = traced_calls(estimate, env, traces / "e.trace", run, info)
    out["status_2"]["new_commits_traced"] = out[key]["commits"]
    restore(run, info)
    log(f"  {shards:,}: a worker's start until its first claim ...")
    out["start"] = first_claim(code, run, work)
    restore(run, info)
    return out


def claims(code: Path, work: Path, shards: int, args, log) -> dict:
    out = {}
    for fraction in (0.0, 0.5, 0.9):
        run, meta = template(code, work, shards, fraction, log)
        restore(run, meta["info"])
        log(f"  claims at {fraction:.0%} done of {shards:,} ...")
        out[f"{fraction:.0%}"] = workers(code, run, meta["info"], 2, args.per_worker, work / f"traces-{os.getpid()}")
        restore(run, meta["info"])
    return out


def heartbeat_rate(code: Path, work: Path, shards: int, log) -> dict:
    """One worker generating one long shard (10 s a completion): its calls per second once claimed."""
    run, meta = template(code, work, shards, 0.9, log)
    restore(run, meta["info"])
    log(f"  a worker generating one long shard for ~30 s ({shards:,}) ...")
    result = workers(code, run, meta["info"], 1, 1, work / "traces", delay_s=10.0, stop_after_s=32.0)
    restore(run, meta["info"])
    return {"calls_per_worker_s": round(result["late_calls"] / max(result["late_s"], 1e-9), 3),
            "window_s": round(result["late_s"], 1), "calls": result["late_calls"]}


def measure(code: Path, args, log) -> dict:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    result = {"code": str(code), "commit": _commit(code), "dirty": _dirty(code), "load": os.getloadavg()[0],
              "date": time.strftime("%Y-%m-%d %H:%M"), "sizes": {}}
    for shards in sizes:
        result["sizes"][str(shards)] = measure_size(code, work, shards, args, log)
        _save(result, args)
    claim_size = args.claim_size or (100_000 if 100_000 in sizes else max(sizes))
    if "claims" in args.parts:
        result["claims"] = {"shards": claim_size, **claims(code, work, claim_size, args, log)}
    if "beats" in args.parts:
        result["beats"] = heartbeat_rate(code, work, min(sizes), log)
        result["extrapolation"] = extrapolate(result)
    _save(result, args)
    return result


def extrapolate(result: dict) -> dict:
    """Steady metadata rate at 1,000 GPUs = per-shard calls at W=1,000 x commits/s + time-based calls x W.
    Per-shard calls at W=1,000 extend the line through W=2 and W=8 (flat code: the same number)."""
    both = [n for n, s in result["sizes"].items() if "w2" in s and "w8" in s]
    largest = result["sizes"][max(both, key=int)]
    c2, c8 = largest["w2"]["metadata_per_commit"], largest["w8"]["metadata_per_commit"]
    # A line that falls (W=8 a hair cheaper than W=2: noise) must not promise fewer calls than were seen.
    per_shard = max(c2 + (c8 - c2) / 6 * (GPUS - 2), c2, c8)
    commits_s = GPUS / SECONDS_PER_SHARD
    beats = result["beats"]["calls_per_worker_s"] * GPUS
    biggest = result["sizes"][max(result["sizes"], key=int)]  # start-up grows with the run: the largest
    start = biggest["w2"]["start_metadata_per_worker"] * GPUS
    return {"seconds_per_shard": round(SECONDS_PER_SHARD, 1), "commits_per_s": round(commits_s, 2),
            "per_shard_calls_at_1000": round(per_shard, 1), "shard_rate": round(per_shard * commits_s),
            "time_rate": round(beats), "steady_rate": round(per_shard * commits_s + beats),
            "flat_rate": round(c8 * commits_s + beats),
            "launch_storm_calls": round(start), "launch_storm_s_at_1e4": round(start / 1e4, 1),
            "launch_storm_s_at_1e5": round(start / 1e5, 1), "of_size": largest["shards"],
            "storm_of_size": biggest["shards"]}


def combine(paths: list[str]) -> dict:
    """Results of several invocations of one checkout (say 10k and 100k, then 339k alone) as one."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    result = {**parts[0], "sizes": {}}
    for part in parts:
        result["sizes"].update(part["sizes"])
        result.update({k: part[k] for k in ("claims", "beats") if k in part})
    result["extrapolation"] = extrapolate(result)
    return result


def _commit(code: Path) -> str:
    return subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def _dirty(code: Path) -> int:
    out = subprocess.run(["git", "-C", str(code), "status", "--short", "--untracked-files=no"],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


def _save(result: dict, args) -> None:
    Path(args.out_path).write_text(json.dumps(result, indent=1))



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", default=str(REPO), help="the checkout to measure (default: this repository)")
    parser.add_argument("--against", help="a second checkout: measured after --code, then a ratio table")
    parser.add_argument("--work", default=os.environ.get("BENCH_DIR", "bench-campaign"),
                        help="where runs are built and cached (several GB at 339k shards)")
    parser.add_argument("--sizes", default="10000,100000,339000", help="shard counts, comma-separated")
    parser.add_argument("--per-worker", type=int, default=12, help="commits per worker in the worker runs")
    parser.add_argument("--second-w", type=int, default=8,
                        help="W of the second, traced worker run (2 at 339k saves ~10 minutes of start-ups)")
    parser.add_argument("--claim-size", type=int, default=0, help="size of the claims-vs-done runs")
    parser.add_argument("--out", help="JSON results (default: WORK/campaign-COMMIT.json)")
    parser.add_argument("--parts", default="sizes,claims,beats",
                        help="sizes (workers, start, status at each size), claims (vs done), beats (time-based)")
    parser.add_argument("--combine", nargs="+", metavar="JSON", help="merge saved results of one checkout "
                        "(sizes from each, claims and beats from the last that has them) into --out")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="ratio table of two saved results")
    args = parser.parse_args()
    if args.compare:
        compare(*(json.loads(Path(p).read_text()) for p in args.compare))
        return
    if args.combine:
        result = combine(args.combine)
        report(result)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))
        return
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    codes = [Path(c).resolve() for c in [args.code] + ([args.against] if args.against else [])]
    args.out = str(Path(args.out).resolve()) if args.out else None
    # Every child runs in WORK: `python -m` and `-c` put the working directory first on sys.path, and a
    # checkout there (this repository, say) would shadow the one on PYTHONPATH.
    os.chdir(work)
    args.work = str(work)
    results = []
    for code in codes:
        args.out_path = args.out if args.out and not args.against else \
            str(Path(args.work) / f"campaign-{_commit(code)}{'-dirty' if _dirty(code) else ''}.json")
        results.append(measure(code, args, lambda m: print(m, file=sys.stderr, flush=True)))
        report(results[-1])
        print(f"saved {args.out_path}")
    if len(results) == 2:
        compare(*results)


if __name__ == "__main__":
    main()
