"""`hpcsynth tune` on the endpoint engine against a stand-in OpenAI server on 127.0.0.1: the real engine and
trial path over HTTP, where the knob is how many requests are open at once. The server takes 50 ms per answer
whatever the load, as a server with room to spare does, so more open requests finish more per second."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import orjson
import pytest
import yaml

from conftest import loopback_server, run_cli, write_corpus


class Slow(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(0.05)
        words = body["messages"][-1]["content"].split()[: body["max_tokens"]]
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": " ".join(words)},
                                        "finish_reason": "length"}],
                           "usage": {"prompt_tokens": 50, "completion_tokens": len(words)}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # no /metrics: a server without telemetry
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    with loopback_server(Slow) as base:
        yield f"{base}/v1"


def test_tune_finds_more_open_requests_faster_against_a_server(server: str, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "sample.jsonl", 24)
    config = tmp_path / "endpoint.yaml"
    config.write_text(yaml.safe_dump({"model": {"engine": "endpoint", "path": "tiny-model"}, "prompts": ["faq", "math"],
                                      "sampling": {"max_tokens": 8},
                                      "endpoint": {"url": server, "concurrency": 2, "retries": 0}}))
    result = run_cli("tune", config, "--input", corpus, "--out", tmp_path / "tune", "--requests", "48",
                     "--try", "endpoint.concurrency=1,8", "--json")
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    rates = {t["settings"].get("endpoint.concurrency", 2): t["tokens_per_s"] for t in data["trials"]}
    assert [t["state"] for t in data["trials"]] == ["ok", "ok", "ok"]
    assert rates[1] < rates[2] < rates[8], rates
    assert data["winner"]["settings"] == {"endpoint.concurrency": 8}
    assert all(t["telemetry"] == {} for t in data["trials"])  # the server reports none: nothing invented
    assert data["device"] == "endpoint" and data["estimate"]["unit"] == "server"  # the rate is the server's
