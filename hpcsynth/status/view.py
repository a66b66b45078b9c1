"""How status looks on a terminal: `hpcsynth status` once, or `--watch` until the run has finished.

Text is built from short phrases joined up to the console's width (80 when piped), so a line breaks
between phrases, never inside one; long reasons and log lines are cut with an ellipsis instead.
"""

from __future__ import annotations

import re
import shlex
import time
from collections import deque

from hpcsynth.rundir import RunDir, shard_name
from hpcsynth.status.collect import STATES, Watch, collect_run
from hpcsynth.status.runstatus import RunStatus, SlurmSummary
from hpcsynth.status.timeline import TIMELINE_BINS, cumulative, sparkline


def render_status(status: RunStatus, console=None) -> None:
    from rich.console import Console

    from rich.text import Text

    console = console or Console()
    for part in status_renderables(status, console.width):
        # A phrase wider than the console (a long run path) stays one line, for the terminal to wrap:
        # folded at column 80 it would break the path, and the next command would not paste whole.
        # (Lines cut with an ellipsis stay cut.)
        console.print(part, soft_wrap=isinstance(part, Text) and part.overflow == "fold")


def watch_status(run: RunDir, interval: float, console=None) -> RunStatus:
    """Refresh until every shard is done (or nothing is left running), then print a one-line summary.

    Between refreshes it sleeps `interval`, and never less than the refresh took (a watch uses at most
    half a core, whatever the run's size). The done table stays in memory (status/collect.py Watch), so a
    refresh reads only what the run gained. On a terminal the frame is redrawn in place; piped (a log file,
    a script), each refresh prints its frame below the last.
    """
    from rich.console import Console, Group
    from rich.live import Live

    console = console or Console()
    keep = Watch()
    began = time.monotonic()
    status = collect_run(run, watch=keep).status
    took = time.monotonic() - began
    rates: deque[float] = deque([status.tokens_per_s], maxlen=TIMELINE_BINS)  # the live rate, refresh by refresh

    def frame() -> Group:
        return Group(*status_renderables(status, console.width, list(rates)))

    live = Live(frame(), console=console, refresh_per_second=1, auto_refresh=False) if console.is_terminal else None
    if live is None:
        console.print(frame())
    else:
        live.start(refresh=True)
    try:
        while not finished(status):
            time.sleep(max(interval, took))
            began = time.monotonic()
            status = collect_run(run, watch=keep).status
            took = time.monotonic() - began
            rates.append(status.tokens_per_s)
            if live is None:
                console.print()
                console.print(frame())
            else:
                live.update(frame(), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
    return status  # the last frame ends with the summary line (status_renderables)


def finished(status: RunStatus) -> bool:
    """Every shard is done, or the rest failed or went stale and no worker or Slurm task is left on them."""
    shards = status.shards
    if shards.done == shards.total:
        return True
    waiting = shards.pending + shards.running + shards.requeued
    slurm_busy = any(state in ("PENDING", "RUNNING", "REQUEUED") for state in status.slurm.array_tasks)
    return waiting == 0 and status.live_workers == 0 and not slurm_busy


def summary_line(status: RunStatus) -> str:
    return " ".join(summary_phrases(status))


def summary_phrases(status: RunStatus) -> list[str]:
    """What is done, where the outputs are, the next command: one line, or a few at a narrow width."""
    shards, run = status.shards, shlex.quote(status.run)  # commands a user can paste
    if shards.done == shards.total:
        return [f"done: all {shards.total:,} shards,", f"{status.records_done:,} records in {run}/outputs;",
                f"next: hpcsynth reduce {run}"]
    return [f"stopped: {shards.done:,} of {shards.total:,} shards done,",
            f"{shards.failed:,} failed, {shards.stale:,} stale;", f"next: hpcsynth launch {run} --retry-failed"]


def status_renderables(status: RunStatus, width: int = 80, rate_samples: list[float] | None = None) -> list:
    """What `status` prints; `rate_samples` are the live rates --watch saw, refresh by refresh."""
    from rich.table import Table
    from rich.text import Text

    parts: list = [Text(_inert(f"hpcsynth run {status.run}"), overflow="fold")]
    shards = status.shards
    table = Table(show_header=True, box=None, padding=(0, 1))
    for state in (*STATES, "total"):
        table.add_column(state, justify="right", no_wrap=True)
    table.add_row(*(f"{shards.of(s):,}" for s in (*STATES, "total")))
    parts.append(table)
    eta = status.eta_s
    split = status.worker_hours
    parts += _flow([f"documents {status.docs_done:,}/{status.documents:,}",
                    f"records {status.records_done:,}/{status.records_expected:,}",
                    f"tokens {status.tokens_done:,}", f"{status.tokens_per_s:,.0f} tok/s",
                    f"ETA {'-' if eta is None else _duration(eta)}"], width)
    parts += _history_lines(status, width, rate_samples or [])
    parts += _telemetry_lines((status.timeline or {}).get("telemetry"), width)
    hours = []
    if status.gpu_hours or not status.cpu_worker_hours:
        hours.append(f"GPU-hours {status.gpu_hours:.2f}")
    if status.cpu_worker_hours:
        hours.append(f"CPU worker-hours {status.cpu_worker_hours:.2f}")
    parts += _flow([*hours, f"worker time: start-up {_duration(split.startup_s * 3600)}",
                    f"generation {_duration(split.generation_s * 3600)}",
                    f"idle {_duration(split.idle_s * 3600)}",
                    f"({status.workers} workers, {status.live_workers} live)"], width)
    parts += _slurm_lines(status.slurm, width)
    parts += _repair_lines(status, width)
    broken = [t for t in status.tasks if t.get("state") == "failed"]
    if broken:
        parts.append(_cut(f"{len(broken)} worker(s) failed to start", f", e.g. {broken[0]['name']}: "
                          f"{broken[0].get('error', '')}"))
    if status.stale_shards:
        parts.append(_cut("stale heartbeats", ": " + ", ".join(shard_name(s) for s in status.stale_shards[:10]),
                          style="yellow"))
    for failure in status.failed_shards[:10]:
        parts.append(_cut("failed", f" {shard_name(failure.shard)}: {failure.reason}"))
        parts += [_cut(f"    {line}", style="dim") for line in failure.log_tail]
    redo = status.redo_shards
    if redo:
        parts.append(_cut(f"{len(redo)} done shard(s) to generate again",
                          f" (`hpcsynth launch {shlex.quote(status.run)}` does it): {shard_name(redo[0].shard)}: "
                          f"{redo[0].reason}", style="yellow"))
    if finished(status):
        parts += _flow(summary_phrases(status), width, sep=" ")
    for part in parts:
        if isinstance(part, Text) and part.overflow == "ellipsis":
            # Cut here: rich wraps a printed Text whatever its no_wrap says, so a long reason would
            # run over several lines instead of ending in an ellipsis.
            part.truncate(width, overflow="ellipsis")
    return parts


def _repair_lines(status: RunStatus, width: int) -> list:
    """`hpcsynth repair`'s attempts: each one's sub-runs done, records and cost, apart from the run's hours."""
    attempts: dict[int, list[dict]] = {}
    for entry in status.repair:
        attempts.setdefault(int(entry["attempt"]), []).append(entry)
    lines = []
    for attempt, subs in sorted(attempts.items()):
        done = sum(1 for s in subs if s["shards_done"] >= s["shards"])
        gpu, cpu = sum(s["gpu_seconds"] for s in subs) / 3600, sum(s["cpu_seconds"] for s in subs) / 3600
        hours = f"GPU-hours {gpu:.2f}" if gpu or not cpu else f"CPU worker-hours {cpu:.2f}"
        failed = sum(s["failed"] for s in subs)
        lines += _flow([f"repair attempt {attempt}: {done}/{len(subs)} sub-runs done",
                        f"shards {sum(s['shards_done'] for s in subs):,}/{sum(s['shards'] for s in subs):,}",
                        f"records {sum(s['records'] for s in subs):,}/{sum(s['records_planned'] for s in subs):,}",
                        hours + (f", {failed} shard(s) failed" if failed else "")], width)
    return lines


def _history_lines(status: RunStatus, width: int, samples: list[float]) -> list:
    """Sparklines: committed progress over the run's time (done markers), and tok/s over time: the live
    rate at each --watch refresh, else the committed tokens per time bin."""
    timeline = status.timeline or {}
    tokens, bin_s = timeline.get("tokens") or [], timeline.get("bin_s") or 0.0
    lines = []
    if tokens:
        shards = status.shards
        lines.append(_spark("progress", cumulative(timeline["shards"]), "green", width,
                            f"{shards.done:,}/{shards.total:,} shards in {_duration(bin_s * len(tokens))}"))
    if len(samples) > 1:
        lines.append(_spark("tok/s", samples, "cyan", width, f"{samples[-1]:,.0f} now (each refresh)"))
    elif tokens and bin_s:
        rates = [t / bin_s for t in tokens]
        lines.append(_spark("tok/s", rates, "cyan", width, f"committed, peak {max(rates):,.0f}"))
    return lines


# What status calls the engine whose telemetry it shows (RUN/tasks/NAME.json's telemetry.source).
TELEMETRY_LABELS = {"vllm": "vLLM", "endpoint": "server", "fake": "fake engine"}


def _telemetry_lines(telemetry: object, width: int) -> list:
    """One line of what the engines report (status/timeline.py run_telemetry): KV-cache use now (mean,
    and the fullest worker's), prefix-cache hit rate, speculative acceptance rate, requests running and
    waiting, preemptions; only what some worker reports, none when no engine reports anything."""
    if not isinstance(telemetry, dict):
        return []
    phrases = []
    if "kv_cache_usage" in telemetry:
        fullest = telemetry.get("kv_cache_usage_max", telemetry["kv_cache_usage"])
        most = f" (max {fullest:.0%})" if telemetry.get("live", 0) > 1 else ""
        phrases.append(f"KV cache {telemetry['kv_cache_usage']:.0%}{most}")
    if "prefix_cache_hit_rate" in telemetry:
        phrases.append(f"prefix-cache hits {telemetry['prefix_cache_hit_rate']:.0%}")
    if "spec_acceptance_rate" in telemetry:
        phrases.append(f"spec. accepted {telemetry['spec_acceptance_rate']:.0%}")
    for key, label in (("requests_running", "running"), ("requests_waiting", "waiting")):
        if key in telemetry:
            phrases.append(f"{label} {telemetry[key]:,.0f}")
    if "preemptions" in telemetry:
        phrases.append(f"preemptions {telemetry['preemptions']:,.0f}")
    if not phrases:
        return []
    return _flow([f"{_telemetry_label(telemetry)}:", *phrases], width)


def _telemetry_label(telemetry: dict) -> str:
    sources = telemetry.get("sources")
    if isinstance(sources, list) and len(sources) == 1 and sources[0] in TELEMETRY_LABELS:
        return TELEMETRY_LABELS[sources[0]]
    return "engine"


def _spark(label: str, values: list[float], style: str, width: int, said: str):
    """label, a sparkline fitted into what the line leaves, and what it shows."""
    from rich.text import Text

    room = max(width - 10 - len(said), 8)
    return Text.assemble((f"{label:<9}", "bold"), (sparkline(fit(values, room)), style), " " + _inert(said))


def fit(values: list[float], room: int) -> list[float]:
    """At most `room` values: consecutive ones averaged, so a long history keeps its shape."""
    if len(values) <= room:
        return values
    step = len(values) / room
    groups = [values[int(i * step):max(int((i + 1) * step), int(i * step) + 1)] for i in range(room)]
    return [sum(g) / len(g) for g in groups]


def _slurm_lines(slurm: SlurmSummary, width: int) -> list:
    if not slurm.jobs:
        return []
    states = [f"{k.lower()} {v}" for k, v in sorted(slurm.array_tasks.items())] or ["not in sacct yet"]
    reasons = [f"waiting: {reason} ({count})" for reason, count in sorted(slurm.pending_reasons.items())]
    lines = _flow([f"Slurm jobs {', '.join(slurm.jobs)}:", "array tasks", *states, *reasons], width)
    if slurm.never_starts:
        lines.append(_cut("these tasks can never start", f": {slurm.never_starts}; change the site profile, "
                          f"`hpcsynth cancel` and launch again"))
    for task in slurm.failed_tasks[:5]:
        said = task["setup_error"] or (task["log_tail"] or [""])[-1]
        lines.append(_cut(f"array task {task['task']} {task['state'].lower()}", f": {said}"))
    return lines


def _flow(phrases: list[str], width: int, sep: str = "  ") -> list:
    """Phrases joined into lines of at most `width`; a phrase is split only when it alone is wider
    (a long run path), and then folded rather than cut."""
    from rich.text import Text

    lines, current = [], ""
    for phrase in phrases:
        joined = f"{current}{sep}{phrase}" if current else phrase
        if current and len(joined) > width:
            lines.append(current)
            joined = phrase
        current = joined
    if current:
        lines.append(current)
    return [Text(_inert(line), overflow="fold") for line in lines]


# C0 and C1 control characters but tab: an escape sequence in a log line or a forged marker would
# reach the terminal (retitle it, rewrite the screen) through rich, which passes ESC through.
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def _inert(text: object) -> str:
    """Text from the run directory, made inert for the terminal: no control characters."""
    return CONTROL.sub("?", str(text or ""))


def _cut(label: str, rest: str = "", style: str = "red"):
    """One line, cut with an ellipsis at the console's edge (full text: `status --json`). Only the
    label is styled: reasons and log lines are plain text, whatever brackets they hold."""
    from rich.text import Text

    text = Text.assemble((_inert(label), style), _inert(rest), overflow="ellipsis")
    text.no_wrap = True
    return text


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"
