"""PNG charts: `status --plot` (progress over time, throughput and time split per worker) and `estimate --plot`
(cost per generator and prompt, and where a run's time went). matplotlib is imported here only, with the
Agg backend: no display needed on a login node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcsynth.errors import ConfigError
from hpcsynth.files import atomic_write_bytes
from hpcsynth.optional import require
from hpcsynth.status.runstatus import RunStatus
from hpcsynth.study.estimate import Estimate

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")  # matplotlib's tab10, spelled out so that tests can look for them in the image
PHASES = (("startup_s", "start-up", "#ff7f0e"), ("generation_s", "generation", "#2ca02c"),
          ("idle_s", "idle", "#7f7f7f"))


def _pyplot():
    require("matplotlib", extra="charts", for_what="--plot's charts")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Rendered in memory, then written atomically: a chart a browser reloads is never half a file."""
    import io

    check_plot_path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    try:
        atomic_write_bytes(Path(path), buffer.getvalue())
    except OSError as exc:  # no write permission, a full disk: the option's fault line, not a traceback
        raise ConfigError(f"--plot {path}: cannot write it ({exc.strerror or exc}); choose another path") from None


def check_plot_path(path: Path) -> None:
    """A PNG name in a directory that exists. A typo in a directory is not created (as mkdir -p would), and
    a directory is not replaced by a chart. A symlink is replaced by the chart, never written through."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--plot {path}: charts are PNG files; name it {path.with_suffix('.png').name}")
    if path.is_dir():
        raise ConfigError(f"--plot {path} is a directory; name a file in it, e.g. {path / 'chart.png'}")
    if not path.parent.is_dir():
        what = "is not a directory" if path.parent.exists() else "does not exist"
        raise ConfigError(f"--plot {path}: {path.parent} {what}; create that directory or choose another path")


def _time_unit(seconds: float) -> tuple[float, str]:
    """(seconds per unit, its name) that keeps an axis's numbers readable: a test run is seconds long."""
    if seconds >= 7200:
        return 3600.0, "hours"
    return (60.0, "minutes") if seconds >= 120 else (1.0, "seconds")


def _num(value: Any) -> float:
    """A number from a worker's file, 0 for anything else (a forged or hand-edited file)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _dollars(text: str) -> str:
    return text.replace("$", r"\$")  # a bare $ starts matplotlib's math mode


def plot_status(status: RunStatus, path: Path) -> None:
    plt = _pyplot()
    fig, ((progress, rate), (speed, split), (cache, queue)) = plt.subplots(3, 2, figsize=(12, 12))
    fig.suptitle(_dollars(f"hpcsynth run {Path(status.run).name}: {status.shards.done:,}/"
                 f"{status.shards.total:,} shards, {status.tokens_done:,} tokens"))
    timeline = status.timeline or {}
    tokens, bin_s = timeline.get("tokens") or [], timeline.get("bin_s") or 0.0
    scale, unit = _time_unit(bin_s * len(tokens))
    if tokens:
        hours = [(i + 1) * bin_s / scale for i in range(len(tokens))]
        total = 0.0
        done = []
        for count in tokens:
            total += count
            done.append(total)
        progress.fill_between(hours, done, color=COLORS[0], alpha=0.35, step="post")
        progress.step(hours, done, where="post", color=COLORS[0])
        rate.bar([h - bin_s / scale / 2 for h in hours], [t / bin_s for t in tokens], width=bin_s / scale,
                 color=COLORS[2])
    else:
        for ax in (progress, rate):
            ax.text(0.5, 0.5, "no shard committed yet", ha="center", va="center", transform=ax.transAxes)
    progress.set(title="progress: committed completion tokens", xlabel=f"{unit} since the first worker started",
                 ylabel="tokens")
    rate.set(title="throughput: committed tokens per second", xlabel=unit, ylabel="tok/s")
    _workers(speed, split, [t for t in status.tasks if isinstance(t.get("name"), str)])
    _engine(cache, queue, ((status.timeline or {}).get("telemetry") or {}).get("history") or {})
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _engine(cache, queue, history: dict[str, Any]) -> None:
    """What the engines reported over the run's recent past (status/timeline.py _telemetry_bins): KV-cache use,
    prefix-cache hit rate and speculative acceptance (shares), and the queue with the preemptions per span."""
    bin_s = _num(history.get("bin_s"))
    series = {key: history.get(key) for key in ("kv_cache_usage", "prefix_cache_hit_rate", "spec_acceptance_rate",
                                                 "requests_running", "requests_waiting", "preemptions")}
    bins = max((len(v) for v in series.values() if isinstance(v, list)), default=0)
    scale, unit = _time_unit(bin_s * bins)
    times = [(i + 0.5) * bin_s / scale for i in range(bins)]

    def points(key: str) -> tuple[list[float], list[float]]:
        values = series.get(key)
        pairs = [(t, _num(v)) for t, v in zip(times, values or []) if isinstance(v, (int, float))]
        return [t for t, _ in pairs], [v for _, v in pairs]

    drawn = False
    for key, label, color in (("kv_cache_usage", "KV-cache use", COLORS[0]),
                              ("prefix_cache_hit_rate", "prefix-cache hits", COLORS[1]),
                              ("spec_acceptance_rate", "speculative acceptance", COLORS[4])):
        xs, ys = points(key)
        if xs:
            cache.plot(xs, ys, marker="o", markersize=3, color=color, label=label)
            drawn = True
    cache.set(title="engine: caches and speculation", xlabel=unit, ylabel="share", ylim=(0, 1.05))
    for key, label, color in (("requests_running", "running", COLORS[2]), ("requests_waiting", "waiting", COLORS[3])):
        xs, ys = points(key)
        if xs:
            queue.plot(xs, ys, marker="o", markersize=3, color=color, label=label)
            drawn = True
    xs, ys = points("preemptions")
    if any(ys):
        queue.bar(xs, ys, width=bin_s / scale * 0.8, color=COLORS[9], alpha=0.6, label="preemptions")
    queue.set(title="engine: requests and preemptions", xlabel=unit, ylabel="requests")
    if drawn:
        for ax in (cache, queue):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="upper right", fontsize="small")
    else:
        for ax in (cache, queue):
            ax.text(0.5, 0.5, "no engine telemetry (none reported yet)", ha="center", va="center",
                    transform=ax.transAxes)


def plot_estimate(estimate: Estimate, account: dict[str, Any] | None, path: Path) -> None:
    from hpcsynth.study.view import short

    plt = _pyplot()
    panels = 2 if account else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 6), squeeze=False)
    cost_ax = axes[0][0]
    unit = estimate.unit
    priced = bool(estimate.price)
    generators = list(dict.fromkeys(r.generator for r in estimate.rows))
    prompts = list(dict.fromkeys(r.prompt for r in estimate.rows))
    bottom = [0.0] * len(generators)
    for i, prompt in enumerate(prompts):
        values = [sum(r.cost if priced else r.gpu_hours for r in estimate.rows
                      if r.generator == g and r.prompt == prompt) for g in generators]
        cost_ax.bar([_dollars(short(g)) for g in generators], values, bottom=bottom, color=COLORS[i % len(COLORS)],
                    label=_dollars(prompt))
        bottom = [a + b for a, b in zip(bottom, values)]
    totals = estimate.totals
    cost_ax.set(title=_dollars(f"estimate: {totals['gpu_hours']:,.1f} {unit}-hours, {totals['wall_hours']:,.1f} h on "
                      f"{estimate.gpus:,} {unit}(s)" + (f", ${totals['cost']:,.0f}" if priced else "")),
                ylabel=_dollars(f"$ at ${estimate.price:,.2f}/{unit}-hour") if priced else f"{unit}-hours")
    cost_ax.legend(title="prompt")
    if account:
        ax = axes[0][1]
        parts = [("useful generation", account["useful"]["hours"])] + [
            (name.replace("_", " "), fig_["hours"]) for name, fig_ in account["wasted"].items()]
        labels = [p[0] for p in parts]
        ax.barh(labels, [p[1] for p in parts], color=[COLORS[i % len(COLORS)] for i in range(len(parts))])
        ax.invert_yaxis()
        ax.set(title=_dollars(f"so far: {account['hours']['hours']:,.4g} {account['unit']}-hours"
                              + (f", ${account['cost']:,.2f}" if account["price_per_hour"] else "")),
               xlabel=f"{account['unit']}-hours")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_grid_status(status: dict[str, Any], path: Path) -> None:
    """A grid: committed tokens over time per generator (a generator's prompts commit together, shard by
    shard, so each line is also the progress of that generator's cells), tokens per cell, and each
    generator's workers as in a plain run's chart."""
    plt = _pyplot()
    fig, ((progress, cells), (speed, split)) = plt.subplots(2, 2, figsize=(12, 8))
    generators = status.get("generators") or {}
    fig.suptitle(_dollars(f"hpcsynth grid {Path(status['run']).name}: {len(generators)} generator(s) x "
                          f"{len(status.get('prompts') or [])} prompt(s)"))
    starts = [g.timeline["start"] for g in generators.values() if (g.timeline or {}).get("tokens")]
    origin = min(starts, default=0.0)
    spans = [g.timeline["start"] - origin + g.timeline["bin_s"] * len(g.timeline["tokens"])
             for g in generators.values() if (g.timeline or {}).get("tokens")]
    scale, unit = _time_unit(max(spans, default=0.0))
    for i, (name, gen) in enumerate(generators.items()):
        timeline = gen.timeline or {}
        if not timeline.get("tokens"):
            continue
        offset, width = timeline["start"] - origin, timeline["bin_s"]
        xs = [(offset + (k + 1) * width) / scale for k in range(len(timeline["tokens"]))]
        total, ys = 0.0, []
        for count in timeline["tokens"]:
            total += count
            ys.append(total)
        progress.step(xs, ys, where="post", color=COLORS[i % len(COLORS)], label=_dollars(name))
    if starts:
        progress.legend(title="generator")
    else:
        progress.text(0.5, 0.5, "no shard committed yet", ha="center", va="center", transform=progress.transAxes)
    progress.set(title="progress per generator: committed tokens", xlabel=f"{unit} since the first start",
                 ylabel="tokens")
    names, prompts = list(generators), list(status.get("prompts") or [])
    bottom = [0.0] * len(names)
    for i, prompt in enumerate(prompts):
        values = [sum(c["tokens"] for c in status.get("cells", []) if c["generator"] == g and c["prompt"] == prompt)
                  for g in names]
        cells.bar([_dollars(n) for n in names], values, bottom=bottom, color=COLORS[i % len(COLORS)],
                  label=_dollars(prompt))
        bottom = [a + b for a, b in zip(bottom, values)]
    cells.set(title="committed tokens per cell", ylabel="tokens")
    if prompts:
        cells.legend(title="prompt")
    tasks = [{**t, "name": f"{g}/{t['name']}"} for g, gen in generators.items() for t in gen.tasks
             if isinstance(t.get("name"), str)]
    _workers(speed, split, tasks)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _workers(speed, split, tasks: list[dict]) -> None:
    """Throughput per worker (its tokens / its generation time) and where each worker's time went."""
    names = [_dollars(t["name"][-24:]) for t in tasks]  # names are files anyone could have written
    per_task = [_num(t.get("tokens")) / _num(t.get("generation_s")) if _num(t.get("generation_s")) > 0 else 0.0
                for t in tasks]
    speed.barh(names, per_task, color=[COLORS[i % len(COLORS)] for i in range(len(tasks))])
    speed.set(title="throughput per worker (tokens / generation time)", xlabel="tok/s")
    left = [0.0] * len(tasks)
    scale, unit = _time_unit(max((_num(t.get("wall_s")) for t in tasks), default=0))
    for key, label, color in PHASES:
        widths = [_num(t.get(key)) / scale for t in tasks]
        split.barh(names, widths, left=left, color=color, label=label)
        left = [a + b for a, b in zip(left, widths)]
    split.set(title="where each worker's time went", xlabel=unit)
    if tasks:
        split.legend(loc="lower right")
    else:
        for ax in (speed, split):
            ax.text(0.5, 0.5, "no worker has started", ha="center", va="center", transform=ax.transAxes)
