"""Engine telemetry (KV-cache use, prefix-cache hits, speculative acceptance, running and waiting requests,
preemptions): from each engine into the worker's task file (RUN/tasks/NAME.json) and out through
`hpcsynth status`. The fake engine's synthetic numbers, a stand-in server's /metrics and a stand-in vLLM
module run here without a model; tests/vllm_lane/test_vllm_telemetry_metrics.py reads a real vLLM."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest

from conftest import fake_config, run_cli, write_corpus
from hpcsynth.config import Config, config_from_dict
from hpcsynth.generate.engines.telemetry import (HISTORY_SAMPLES, TelemetryLog, history_of, parse_prometheus,
                                                 telemetry_of)
from hpcsynth.generate.pull import pull_shards
from hpcsynth.plan import plan_corpus
from hpcsynth.rundir import RunDir
from hpcsynth.status.collect import collect_status

PROMPTS = ("faq", "math", "table", "tutorial")
KEY = "hpcsynth-telemetry-key-0123456789abcdef"


def planned(tmp_path: Path, docs: int = 12, **sections) -> RunDir:
    corpus = write_corpus(tmp_path / "corpus.jsonl", docs)
    config = dataclasses.replace(fake_config(corpus, **sections), prompts=PROMPTS)
    run = RunDir(tmp_path / "run")
    plan_corpus(config, run)
    return run


def task_file(run: RunDir) -> dict:
    (path,) = run.tasks_dir.iterdir()
    try:
        return orjson.loads(path.read_bytes())
    except ValueError:  # caught mid-rewrite (it is rewritten in place): as status, count it absent
        return {}


def outputs(run: RunDir) -> list[dict]:
    from hpcsynth.files import read_jsonl_zst

    return [r for path in sorted((run.root / "outputs").iterdir()) for r in read_jsonl_zst(path)]


# --- the fake engine, through the worker and status

def test_a_fake_run_shows_telemetry_per_worker_and_for_the_run(tmp_path: Path) -> None:
    run = planned(tmp_path)
    results = pull_shards(run.root)
    assert {r.state for r in results} == {"done"}
    records = outputs(run)
    assert len(records) == 12 * len(PROMPTS)
    prompt_tokens = sum(r["prompt_tokens"] for r in records)
    completion_tokens = sum(r["completion_tokens"] for r in records)

    telemetry = task_file(run)["telemetry"]
    # The fake engine's synthetic numbers follow from what it generated (engines/fake.py): exact.
    assert telemetry["source"] == "fake"
    assert telemetry["prefix_cache_queries"] == 4 * prompt_tokens
    assert telemetry["prefix_cache_hits"] == 3 * prompt_tokens
    assert telemetry["spec_draft_tokens"] == 2 * completion_tokens
    assert telemetry["spec_accepted_tokens"] == telemetry["spec_drafts"] == completion_tokens
    assert telemetry["prefix_cache_hit_rate"] == 0.75 and telemetry["spec_acceptance_rate"] == 0.5
    assert telemetry["preemptions"] == 0 and telemetry["requests_waiting"] == 0
    history = telemetry["history"]
    assert history["fields"][0] == "t" and 1 <= len(history["samples"]) <= HISTORY_SAMPLES
    # Per shard: each done marker holds what the counters gained while it was open (one open at a time here).
    markers = [orjson.loads(path.read_bytes()) for path in sorted(run.done_dir.glob("*.json"))]
    assert len(markers) > 1
    for marker in markers:
        window = marker["telemetry"]
        assert window["prefix_cache_queries"] == 4 * marker["prompt_tokens"], marker
        assert window["spec_accepted_tokens"] == marker["completion_tokens"]
        assert window["prefix_cache_hit_rate"] == 0.75 and window["spec_acceptance_rate"] == 0.5
    assert sum(m["telemetry"]["prefix_cache_queries"] for m in markers) == telemetry["prefix_cache_queries"]

    status = orjson.loads(run_cli("status", str(run.root), "--json").stdout)
    (worker,) = status["tasks"]
    assert worker["telemetry"]["prefix_cache_hit_rate"] == 0.75
    assert worker["telemetry"]["spec_acceptance_rate"] == 0.5
    assert "history" not in worker["telemetry"]  # status --json stays small; the file keeps the history
    whole = status["timeline"]["telemetry"]
    assert whole["engines"] == 1 and whole["sources"] == ["fake"]
    assert whole["prefix_cache_queries"] == 4 * prompt_tokens and whole["prefix_cache_hit_rate"] == 0.75
    assert whole["spec_acceptance_rate"] == 0.5 and whole["preemptions"] == 0
    assert "kv_cache_usage" not in whole  # no worker is live: no "now" to show

    lines = run_cli("status", str(run.root), env={"COLUMNS": "80"}).stdout.splitlines()
    line = next(line for line in lines if line.startswith("fake engine:"))
    assert "prefix-cache hits 75%" in line and "spec. accepted 50%" in line and "preemptions 0" in line
    assert all(len(line) <= 80 for line in lines if str(run.root) not in line)


def test_live_workers_show_kv_cache_use_and_the_queue_now(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HPCSYNTH_FAKE_FAULTS", json.dumps({"delay_s": 0.04, "preempt_every": 10}))
    run = planned(tmp_path, docs=15, worker={"heartbeat_interval_s": 0.05})  # the clock ticks each second
    worker = threading.Thread(target=pull_shards, args=(run.root,), daemon=True)
    worker.start()
    seen = None
    deadline = time.monotonic() + 30
    while worker.is_alive() and time.monotonic() < deadline:
        status = collect_status(run, slurm=False)
        telemetry = status.timeline.get("telemetry") or {}
        if telemetry.get("live") == 1 and len(history_of(task_file(run).get("telemetry"))) >= 2:
            seen = status
            break
        time.sleep(0.1)
    worker.join(60)
    assert seen is not None, "no live telemetry while the worker generated"
    now = seen.timeline["telemetry"]
    assert now["kv_cache_usage"] == 0.25 and now["kv_cache_usage_max"] == 0.25
    assert now["requests_running"] == 1 and now["requests_waiting"] == 0
    assert seen.tasks[0]["live"] and seen.tasks[0]["telemetry"]["kv_cache_usage"] == 0.25
    assert len(now["history"]["kv_cache_usage"]) == 60 and 0.25 in now["history"]["kv_cache_usage"]
    from hpcsynth.status.view import status_renderables

    text = "\n".join(str(part) for part in status_renderables(seen, 80) if hasattr(part, "plain"))
    assert "KV cache 25%" in text and "running 1" in text and "waiting 0" in text
    # Once it ends: preemptions counted (one per ten completions), gauges of a finished worker not "now".
    final = orjson.loads(run_cli("status", str(run.root), "--json").stdout)["timeline"]["telemetry"]
    assert final["preemptions"] == 15 * len(PROMPTS) // 10 and "kv_cache_usage" not in final


# --- the endpoint engine: a server's /metrics

class StandIn(BaseHTTPRequestHandler):
    """An OpenAI-style server whose /metrics (vLLM's names, Prometheus text) counts what it served:
    per completion 100 prefix-cache queries and 60 hits, 5 drafts of 20 tokens with 15 accepted, and a
    preemption every 4th; it starts with a history of its own (another client's work before ours)."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        with server.lock:
            server.served += 1
        words = body["messages"][-1]["content"].split()[:body["max_tokens"]]
        self._reply(200, "application/json", json.dumps({
            "choices": [{"message": {"role": "assistant", "content": " ".join(words)}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": len(words)}}).encode())

    def do_GET(self) -> None:
        server = self.server
        server.seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
        if self.path != "/metrics" or server.metrics == "missing":
            self._reply(404, "text/plain", b"Not Found")
        elif server.metrics.startswith("redirect:"):
            self.send_response(302)
            self.send_header("Location", server.metrics.removeprefix("redirect:"))
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._reply(200, "text/plain; version=0.0.4", metrics_text(1000 + server.served).encode())

    def _reply(self, status: int, kind: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def metrics_text(served: int) -> str:
    labels = 'engine="0",model_name="tiny {model} \\"x\\""'  # braces, a space, escaped quotes
    return "\n".join([
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{labels}}} 3.0",
        f"vllm:num_requests_waiting{{{labels}}} 2.0",
        f'vllm:num_requests_waiting_by_reason{{{labels},reason="capacity"}} 99.0',
        f"vllm:kv_cache_usage_perc{{{labels}}} 0.42",
        "# TYPE vllm:prefix_cache_queries counter",
        f"vllm:prefix_cache_queries_total{{{labels}}} {100.0 * served}",
        f"vllm:prefix_cache_queries_created{{{labels}}} 1.75e+09",
        f"vllm:prefix_cache_hits_total{{{labels}}} {60.0 * served}",
        f"vllm:num_preemptions_total{{{labels}}} {float(served // 4)}",
        f"vllm:spec_decode_num_drafts_total{{{labels}}} {5.0 * served}",
        f"vllm:spec_decode_num_draft_tokens_total{{{labels}}} {20.0 * served}",
        f"vllm:spec_decode_num_accepted_tokens_total{{{labels}}} {15.0 * served}",
        f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{{labels},position="0"}} 7.0',
        f'vllm:e2e_request_latency_seconds_bucket{{{labels},le="0.3"}} 4.0',
        "",
    ])


@pytest.fixture
def serve() -> Iterator:
    started: list[ThreadingHTTPServer] = []

    def start(metrics: str = "ok") -> tuple[ThreadingHTTPServer, str]:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
        httpd.seen, httpd.metrics, httpd.served, httpd.lock = [], metrics, 0, threading.Lock()
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def endpoint_config(run: RunDir, url: str) -> Config:
    config = run.config()
    return dataclasses.replace(
        config, model=dataclasses.replace(config.model, engine="endpoint", path="tiny-model"),
        endpoint=dataclasses.replace(config.endpoint, url=url + "/v1", api_key_env="TELEMETRY_TEST_KEY",
                                     concurrency=4, timeout_s=5.0))


def endpoint_run(tmp_path: Path, url: str, monkeypatch) -> RunDir:
    from hpcsynth.generate.engines import make_engine

    monkeypatch.setenv("TELEMETRY_TEST_KEY", KEY)
    run = planned(tmp_path)
    config = endpoint_config(run, url)
    results = pull_shards(run.root, engine_factory=lambda _: make_engine(config))
    assert {r.state for r in results} == {"done"}
    return run


def test_endpoint_reads_the_servers_metrics_and_counts_only_its_own_share(tmp_path: Path, serve,
                                                                          monkeypatch) -> None:
    server, url = serve()
    run = endpoint_run(tmp_path, url, monkeypatch)
    served = server.served
    assert served == 12 * len(PROMPTS)
    telemetry = task_file(run)["telemetry"]
    assert telemetry["source"] == "endpoint" and telemetry["server"] == f"{url}/metrics"
    # The server's history before the worker (1000 completions' worth) is a baseline, not ours.
    assert telemetry["prefix_cache_queries"] == 100 * served and telemetry["prefix_cache_hits"] == 60 * served
    assert telemetry["spec_drafts"] == 5 * served and telemetry["spec_draft_tokens"] == 20 * served
    assert telemetry["spec_accepted_tokens"] == 15 * served
    assert telemetry["preemptions"] == (1000 + served) // 4 - 1000 // 4
    assert telemetry["prefix_cache_hit_rate"] == 0.6 and telemetry["spec_acceptance_rate"] == 0.75
    # Gauges as the server says: waiting is vllm:num_requests_waiting, not its by-reason breakdown.
    assert telemetry["kv_cache_usage"] == 0.42 and telemetry["requests_running"] == 3
    assert telemetry["requests_waiting"] == 2
    # The key went with each /metrics request to the endpoint's own host and nowhere else.
    assert server.seen and all(s == {"path": "/metrics", "authorization": f"Bearer {KEY}"} for s in server.seen)
    assert KEY not in (run.tasks_dir / next(run.tasks_dir.iterdir()).name).read_text()

    lines = run_cli("status", str(run.root), env={"COLUMNS": "80"}).stdout.splitlines()
    line = next(line for line in lines if line.startswith("server:"))
    assert "prefix-cache hits 60%" in line and "spec. accepted 75%" in line


def test_a_server_without_metrics_means_no_telemetry_asked_once(tmp_path: Path, serve, monkeypatch) -> None:
    server, url = serve(metrics="missing")
    run = endpoint_run(tmp_path, url, monkeypatch)
    assert [s["path"] for s in server.seen] == ["/metrics"]  # a 404 once, then never again
    assert "telemetry" not in task_file(run)
    status = run_cli("status", str(run.root), "--json")
    assert status.returncode == 0 and orjson.loads(status.stdout)["timeline"]["telemetry"] is None
    assert orjson.loads(status.stdout)["tasks"][0]["telemetry"] is None
    text = run_cli("status", str(run.root)).stdout
    assert "server:" not in text and "KV cache" not in text


def test_a_metrics_redirect_is_not_followed_and_the_key_stays_home(serve, monkeypatch) -> None:
    from hpcsynth.generate.engines import make_engine

    elsewhere, other = serve()
    server, url = serve(metrics=f"redirect:{other}/metrics")
    monkeypatch.setenv("TELEMETRY_TEST_KEY", KEY)
    config = config_from_dict({"model": {"engine": "endpoint", "path": "tiny-model"},
                               "endpoint": {"url": url + "/v1", "api_key_env": "TELEMETRY_TEST_KEY"}})
    engine = make_engine(config)
    assert [engine.telemetry() for _ in range(3)] == [None, None, None]
    assert [s["path"] for s in server.seen] == ["/metrics"]
    assert elsewhere.seen == []  # the redirect's target never heard from us, key or not


def test_endpoint_metrics_sit_beside_the_api() -> None:
    from hpcsynth.generate.engines.endpoint import metrics_url

    assert metrics_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/metrics"
    assert metrics_url("https://gateway.example/team/v1/") == "https://gateway.example/team/metrics"
    assert metrics_url("http://host:9000") == "http://host:9000/metrics"


# --- the formats themselves

def test_prometheus_text_gives_vllms_numbers() -> None:
    reading = parse_prometheus(metrics_text(10))
    assert reading == {"requests_running": 3.0, "requests_waiting": 2.0, "kv_cache_usage": 0.42,
                       "prefix_cache_queries": 1000.0, "prefix_cache_hits": 600.0, "preemptions": 2.0,
                       "spec_drafts": 50.0, "spec_draft_tokens": 200.0, "spec_accepted_tokens": 150.0}
    two_engines = "\n".join(['vllm:kv_cache_usage_perc{engine="0"} 0.2', 'vllm:kv_cache_usage_perc{engine="1"} 0.6',
                             'vllm:num_requests_running{engine="0"} 4', 'vllm:num_requests_running{engine="1"} 6',
                             "vllm:prefix_cache_hits_total 5", "vllm:num_preemptions_total NaN",
                             "vllm:num_requests_waiting +Inf", 'vllm:prefix_cache_queries_total{engine="0" 9'])
    assert parse_prometheus(two_engines) == {"kv_cache_usage": 0.4, "requests_running": 10.0,
                                             "prefix_cache_hits": 5.0}
    # An older server's names count only where the current ones are absent (a server of the change
    # reports both: adding them would count every hit twice).
    both = "vllm:gpu_prefix_cache_hits_total 5\nvllm:prefix_cache_hits_total 5\nvllm:gpu_cache_usage_perc 0.3\n"
    assert parse_prometheus(both) == {"prefix_cache_hits": 5.0, "kv_cache_usage": 0.3}
    assert parse_prometheus("") == {} and parse_prometheus("<html>not metrics</html>") == {}


def test_counters_are_the_workers_own() -> None:
    engine = TelemetryLog("vllm", "engine", every_s=10.0)
    assert engine.to_json() is None and not engine.add(None, 1.0) and not engine.add({"x": 1}, 1.0)
    assert engine.add({"prefix_cache_queries": 100, "prefix_cache_hits": 40, "kv_cache_usage": 0.5}, 2.0)
    assert engine.to_json()["prefix_cache_queries"] == 100  # an engine's counters start with it
    server = TelemetryLog("endpoint", "server", server="http://h/metrics")
    server.add({"prefix_cache_queries": 5000, "prefix_cache_hits": 4000}, 1.0)
    assert server.to_json()["prefix_cache_queries"] == 0  # a server's: what it did before is a baseline
    server.add({"prefix_cache_queries": 5100, "prefix_cache_hits": 4050}, 2.0)
    server.add({"prefix_cache_queries": 30, "prefix_cache_hits": 30}, 3.0)  # it restarted: counts from zero
    out = server.to_json()
    assert out["prefix_cache_queries"] == 130 and out["prefix_cache_hits"] == 80
    assert out["prefix_cache_hit_rate"] == round(80 / 130, 4)
    for t in range(200):
        engine.add({"kv_cache_usage": 0.1, "preemptions": t}, 10.0 + t)
    samples = engine.to_json()["history"]["samples"]
    assert len(samples) == HISTORY_SAMPLES and samples[-1][0] == 209.0
    assert "kv_cache_usage" in engine.to_json() and "prefix_cache_queries" in engine.to_json()


def test_forged_telemetry_counts_as_absent(tmp_path: Path) -> None:
    run = planned(tmp_path, docs=4)
    run.tasks_dir.mkdir()
    now = time.time()
    good = {"source": "vllm", "read_at": now, "kv_cache_usage": 0.5, "prefix_cache_queries": 100,
            "prefix_cache_hits": 40, "history": {"fields": ["t", "kv_cache_usage"],
                                                 "samples": [[now - 5, 0.4], [now, 0.5]]}}
    forged = {
        "a-list": [1, 2],
        "strings": {"source": "<evil>", "kv_cache_usage": "0.5", "requests_running": True, "preemptions": None},
        "out-of-range": {"source": "vllm", "kv_cache_usage": 7.5, "requests_waiting": -3, "preemptions": 1e300,
                         "read_at": "yesterday", "server": 5},
        "impossible": {"source": "vllm", "prefix_cache_queries": 10, "prefix_cache_hits": 11,
                       "spec_draft_tokens": 1, "spec_accepted_tokens": 2, "spec_drafts": 1,
                       "prefix_cache_hit_rate": 99, "spec_acceptance_rate": -1},
        "bad-history": {"source": "fake", "requests_running": 2,
                        "history": {"fields": ["t", "kv_cache_usage", "zz"],
                                    "samples": [[]] * 10000 + [[now, 9.0, 1], "row", [now], [None, 0.5, 0],
                                                                [1e308, 0.5, 0], [now - 1, 0.2, 1]]}},
        "history-not-a-dict": {"requests_running": 1, "history": [[now, 0.5]]},
        "fields-not-a-list": {"requests_running": 1, "history": {"fields": "t", "samples": 5}},
    }
    for name, telemetry in {"good": good, **forged}.items():
        (run.tasks_dir / f"{name}.json").write_bytes(orjson.dumps({
            "name": name, "state": "generating", "updated": now, "host": "elsewhere", "pid": 1,
            "telemetry": telemetry}))
    (run.tasks_dir / "torn.json").write_text('{"name": "torn", "telemetry": {"kv_cache_usage": 0.')
    result = run_cli("status", str(run.root), "--json")
    assert result.returncode == 0, result.stderr
    status = orjson.loads(result.stdout)
    by_name = {t["name"]: t["telemetry"] for t in status["tasks"]}
    assert by_name["good"]["kv_cache_usage"] == 0.5 and by_name["good"]["prefix_cache_hit_rate"] == 0.4
    assert by_name["a-list"] is None and by_name["strings"] is None
    assert by_name["out-of-range"] is None
    impossible = by_name["impossible"]  # hits beyond queries, accepted beyond drafted: neither rate shown
    assert impossible == {"source": "vllm", "read_at": None, "spec_drafts": 1}
    assert by_name["bad-history"] == {"source": "fake", "read_at": None, "requests_running": 2}
    (row,) = history_of({"history": forged["bad-history"]["history"]})  # the one whole sample of them
    assert row[0] == now - 1 and row[1] == 0.2 and all(v != v for v in row[2:])  # the rest absent (NaN)
    whole = status["timeline"]["telemetry"]
    assert whole["engines"] == 5 and whole["kv_cache_usage"] == 0.5 and whole["prefix_cache_hit_rate"] == 0.4
    assert whole["requests_running"] == 4 and all(isinstance(v, (int, float, list, dict, type(None)))
                                                  for v in whole.values())
    text = run_cli("status", str(run.root), env={"COLUMNS": "80"})
    assert text.returncode == 0, text.stderr
    line = next(line for line in text.stdout.splitlines() if "KV cache" in line)
    assert line.startswith("engine:") and "KV cache 50% (max 50%)" in line and "prefix-cache hits 40%" in line
    assert telemetry_of({"kv_cache_usage": float("nan")}) is None
    assert telemetry_of({"kv_cache_usage": float("inf"), "prefix_cache_queries": -1}) is None


def test_workers_on_one_server_count_it_once() -> None:
    from hpcsynth.status.timeline import run_telemetry

    now = time.time()
    server = "http://10.0.0.5:8000/metrics"
    early = {"telemetry": {"source": "endpoint", "server": server, "read_at": now - 5, "requests_running": 30,
                           "prefix_cache_queries": 900, "prefix_cache_hits": 300}}
    late = {"telemetry": {"source": "endpoint", "server": server, "read_at": now, "requests_running": 40,
                          "prefix_cache_queries": 100, "prefix_cache_hits": 90}}
    own = {"telemetry": {"source": "vllm", "read_at": now, "requests_running": 2, "prefix_cache_queries": 100,
                         "prefix_cache_hits": 10}}
    whole = run_telemetry([(early, True), (late, True), (own, True)], now)
    assert whole["engines"] == 2 and whole["sources"] == ["endpoint", "vllm"]
    # The server's queue now from its latest reading; its counters from the worker that saw the most.
    assert whole["requests_running"] == 42
    assert whole["prefix_cache_queries"] == 1000 and whole["prefix_cache_hits"] == 310


def test_the_runs_recent_past_in_bins() -> None:
    from hpcsynth.status.timeline import run_telemetry

    now = time.time()
    fields = ["t", "kv_cache_usage", "requests_running", "prefix_cache_queries", "prefix_cache_hits"]

    def worker(kv: float, running: float, queries: list[float], hits: list[float], at: float = now - 59) -> dict:
        samples = [[at + i, kv, running, q, h] for i, (q, h) in enumerate(zip(queries, hits))]
        return {"telemetry": {"source": "vllm", "read_at": now, "kv_cache_usage": kv, "requests_running": running,
                              "history": {"every_s": 1.0, "fields": fields, "samples": samples}}}

    steady = worker(0.2, 2, [10.0 * i for i in range(60)], [5.0 * i for i in range(60)])
    restarted = worker(0.6, 3, [10.0 * i for i in range(30)] + [10.0 * i for i in range(30)],
                       [5.0 * i for i in range(30)] + [5.0 * i for i in range(30)])
    forged = worker(0.9, 99, [0.0, 1.0], [0.0, 1.0], at=now + 1e9)  # times no clock wrote: dropped
    history = run_telemetry([(steady, True), (restarted, True), (forged, True)], now)["history"]
    assert history["start"] == round(now - 59, 3) and len(history["kv_cache_usage"]) == 60
    assert history["kv_cache_usage"] == [0.4] * 60 and history["requests_running"] == [5.0] * 60
    # Every step the counters gained 10 queries and 5 hits a worker; at the restart (0 after 290) the new
    # value counts: 0 queries that step, so no bin's rate goes wrong.
    assert history["prefix_cache_hit_rate"][0] is None and set(history["prefix_cache_hit_rate"][1:]) == {0.5}


# --- the vllm engine, on a stand-in vllm module (the real one: tests/vllm_lane)

class StandInLLM:
    built: list[dict] = []
    metrics: list = []

    def __init__(self, **kwargs) -> None:
        type(self).built.append(kwargs)
        self.llm_engine = SimpleNamespace(log_stats=not kwargs["disable_log_stats"],
                                          engine_core=SimpleNamespace(shutdown=lambda: None))

    def get_metrics(self) -> list:
        assert self.llm_engine.log_stats, "Stat logging disabled"  # as vLLM 0.32's LLMEngine.get_metrics
        return list(type(self).metrics)

    def get_tokenizer(self) -> None:
        return None


def vllm_metrics(queries: int, hits: int, running: float) -> list:
    labels = {"model_name": "m", "engine": "0"}
    return [SimpleNamespace(name="vllm:prefix_cache_queries", labels=labels, value=queries),
            SimpleNamespace(name="vllm:prefix_cache_hits", labels=labels, value=hits),
            SimpleNamespace(name="vllm:num_requests_running", labels=labels, value=running),
            SimpleNamespace(name="vllm:kv_cache_usage_perc", labels=labels, value=0.3),
            SimpleNamespace(name="vllm:e2e_request_latency_seconds", labels=labels, count=3, sum=1.0, buckets={})]


@pytest.fixture
def stand_in_vllm(monkeypatch):
    modules = {name: types.ModuleType(name) for name in ("vllm", "vllm.exceptions", "vllm.inputs",
                                                          "vllm.sampling_params", "vllm.platforms")}
    modules["vllm"].LLM, modules["vllm"].SamplingParams = StandInLLM, dict
    modules["vllm.exceptions"].VLLMClientError = type("VLLMClientError", (Exception,), {})
    modules["vllm.inputs"].tokens_input = list
    modules["vllm.sampling_params"].RequestOutputKind = SimpleNamespace(FINAL_ONLY=2)
    modules["vllm.platforms"].current_platform = SimpleNamespace(device_type="cuda")
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    StandInLLM.built, StandInLLM.metrics = [], []
    return StandInLLM


def test_vllm_engine_turns_statistics_on_and_carries_counters_over_a_restart(stand_in_vllm, monkeypatch) -> None:
    from hpcsynth.generate.engines import vllm_offline

    config = config_from_dict({"model": {"engine": "vllm", "path": "m"}, "vllm": {"max_num_seqs": 8}})
    engine = vllm_offline.VllmEngine(config)
    assert stand_in_vllm.built[-1]["disable_log_stats"] is False  # LLM's own default is True: no statistics
    stand_in_vllm.metrics = vllm_metrics(1000, 400, 8)
    assert engine.telemetry() == {"prefix_cache_queries": 1000, "prefix_cache_hits": 400, "requests_running": 8,
                                  "kv_cache_usage": 0.3}
    stand_in_vllm.metrics = vllm_metrics(1200, 500, 8)
    assert engine.step_down().startswith("max_num_seqs 8 -> 4")  # vLLM restarted: its counters start again
    stand_in_vllm.metrics = vllm_metrics(50, 20, 4)
    reading = engine.telemetry()
    assert reading["prefix_cache_queries"] == 1250 and reading["prefix_cache_hits"] == 520
    assert reading["requests_running"] == 4
    # The clock's thread reads while the worker closes the engine (vLLM's shutdown takes a while): never
    # the closing engine's counters with the carried ones already added (1250 + 1250: a run counted 3x).
    during = []
    engine.engine.engine_core.shutdown = lambda: during.append(engine.telemetry())
    engine.close()
    assert during == [reading]
    stand_in_vllm.metrics = []
    assert engine.telemetry() == reading  # a closed engine keeps its last numbers for the clock's last write

    # vllm.engine_args.disable_log_stats: true wins, and the engine then has no telemetry (get_metrics asserts).
    real = vllm_offline.engine_kwargs
    monkeypatch.setattr(vllm_offline, "engine_kwargs", lambda *a: {**real(*a), "disable_log_stats": True})
    quiet = vllm_offline.VllmEngine(config)
    assert stand_in_vllm.built[-1]["disable_log_stats"] is True and quiet.telemetry() is None
