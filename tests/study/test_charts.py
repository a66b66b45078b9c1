"""Charts: the PNGs of `status --plot` and `estimate --plot` are written and show something; the timeline
and the terminal sparklines of status."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import planned_fake_run, run_cli
from hpcsynth.execute.launch import launch_run
from hpcsynth.study.charts import COLORS
from hpcsynth.status.timeline import TIMELINE_BINS, build_timeline, sparkline


def read_png(path: Path) -> tuple[np.ndarray, set[tuple[int, int, int]]]:
    import matplotlib.image

    pixels = matplotlib.image.imread(path)  # floats in [0, 1], RGBA
    rgb = (pixels[..., :3] * 255).round().astype(np.uint8)
    return rgb, set(map(tuple, rgb.reshape(-1, 3).tolist()))


def hex_rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = planned_fake_run(tmp_path_factory.mktemp("charts"), docs=40, shard_docs=10)
    assert launch_run(run, "local").done == 4
    return run


def test_status_plot_draws_progress_and_workers(finished, tmp_path: Path) -> None:
    out = tmp_path / "status.png"
    proc = run_cli("status", str(finished.root), "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"chart: {out}" in proc.stdout
    rgb, colours = read_png(out)
    assert rgb.shape[:2] == (1200, 1200)  # three rows: progress, workers, the engines' telemetry
    assert len(colours) > 100  # lines, fills, text: not a blank canvas
    assert (rgb.sum(axis=2) < 700).mean() > 0.05  # more than a few per cent of the image is drawn on
    # The committed-rate bars (green), the worker's throughput bar (blue), the phases (orange, green, grey).
    for color in (COLORS[0], COLORS[1], COLORS[2], COLORS[7]):
        assert hex_rgb(color) in colours, color
    # The engines' panel: the fake engine's prefix-cache hits (orange) and speculative acceptance (purple).
    assert hex_rgb(COLORS[4]) in colours


def test_estimate_plot_draws_cost_per_prompt_and_the_account(finished, tmp_path: Path) -> None:
    out = tmp_path / "estimate.png"
    proc = run_cli("estimate", str(finished.root), "--price", "2", "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    rgb, colours = read_png(out)
    assert rgb.shape[:2] == (600, 1400)  # two panels: the estimate and the account so far
    for color in COLORS[:4]:  # four prompts; the account's useful, start-up and idle rows (the rest are 0 here)
        assert hex_rgb(color) in colours, color
    plain = tmp_path / "plain.png"
    proc = run_cli("estimate", "--documents", "1000", "--generator", "smollm2-1.7b", "--generator", "gemma-3-4b",
                   "--plot", str(plain))
    assert proc.returncode == 0, proc.stderr
    rgb, colours = read_png(plain)
    assert rgb.shape[:2] == (600, 700) and len(colours) > 50
    assert all(hex_rgb(c) in colours for c in COLORS[:4])


def test_a_run_with_nothing_done_still_plots(tmp_path: Path) -> None:
    run = planned_fake_run(tmp_path, docs=10, shard_docs=10)
    out = tmp_path / "empty.png"
    proc = run_cli("status", str(run.root), "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    rgb, colours = read_png(out)
    assert rgb.shape[:2] == (1200, 1200) and len(colours) > 20  # axes and the "nothing yet" text


def test_bad_plot_path_is_one_line(finished, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where a directory should be")
    for name, says in (("chart.jpg", "charts are PNG files"), ("taken/c.png", "taken")):
        proc = run_cli("status", str(finished.root), "--plot", str(tmp_path / name))
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_timeline_bins_every_commit_and_stays_bounded() -> None:
    commits = [(1000.0 + i, 10.0) for i in range(500)]  # 500 shards over 500 s
    timeline = build_timeline(commits, start=900.0, end=0.0)
    assert len(timeline["tokens"]) == TIMELINE_BINS and sum(timeline["tokens"]) == 5000
    assert sum(timeline["shards"]) == 500 and timeline["start"] == 900.0
    assert timeline["tokens"][0] == 0  # before the first commit: workers starting
    assert build_timeline([], None, 5.0)["tokens"] == []
    assert sparkline([0, 1, 2, 4]) == "▁▃▅█" and sparkline([0, 0]) == "▁▁" and sparkline([]) == ""


def test_status_draws_sparklines_and_watch_keeps_the_live_rate(finished) -> None:
    from rich.console import Console

    from hpcsynth.status.collect import collect_status
    from hpcsynth.status.view import status_renderables, watch_status

    status = collect_status(finished)
    lines = [str(part) for part in status_renderables(status, 80)]
    progress = next(line for line in lines if line.startswith("progress "))
    assert "4/4 shards" in progress and "█" in progress and len(progress) <= 80
    assert any(line.startswith("tok/s ") and "committed, peak" in line for line in lines)
    lines = [str(part) for part in status_renderables(status, 80, [10.0, 20.0, 40.0])]
    assert any(line.startswith("tok/s ") and "40 now" in line for line in lines)
    console = Console(width=80, record=True, force_terminal=False)
    final = watch_status(finished, 0.01, console)
    # A finished run stops the watch at its first frame: one live rate, so the committed rates are drawn.
    said = console.export_text()
    assert final.shards.done == final.shards.total and "progress " in said and "committed, peak" in said


def test_forged_names_and_times_do_not_break_the_chart(tmp_path: Path) -> None:
    import orjson

    run = planned_fake_run(tmp_path, docs=20, shard_docs=10)
    assert launch_run(run, "local").done == 2
    # A worker name that is matplotlib math ("$...$" would fail to parse), a commit time far in the future.
    (run.root / "tasks" / "forged.json").write_bytes(orjson.dumps(
        {"name": "$\\frac{$x", "state": "finished", "generation_s": 1.0, "tokens": 5, "wall_s": 2.0}))
    marker = orjson.loads(run.done_path(1).read_bytes())
    run.done_path(1).write_bytes(orjson.dumps({**marker, "committed": 1e308}))
    out = tmp_path / "forged.png"
    proc = run_cli("status", str(run.root), "--plot", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    timeline = orjson.loads(proc.stdout)["timeline"]
    assert sum(timeline["shards"]) == 2 and len(timeline["tokens"]) == TIMELINE_BINS
    assert read_png(out)[0].shape[:2] == (1200, 1200)
