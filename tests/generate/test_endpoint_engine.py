"""The endpoint engine against a stand-in OpenAI server (standard library, loopback, no model).

The real server (vllm serve) is exercised in tests/vllm_lane/; here we steer its failures: 503s that pass,
503s that never pass, a 400 for an over-long prompt, a 404 for a wrong model name.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pytest

from conftest import loopback_server
from hpcsynth.config import config_from_dict
from hpcsynth.generate.engines import Request, make_engine
from hpcsynth.errors import EngineError


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers by marker in the last message: FLAKY (503 twice), DOWN (always 503), LONG (400)."""

    lock = threading.Lock()
    hits: Counter = Counter()
    open_now = 0
    most_open = 0
    bodies: list[dict] = []
    headers_seen: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        cls = type(self)
        with cls.lock:
            cls.hits[prompt] += 1
            hits = cls.hits[prompt]
            cls.bodies.append(body)
            cls.headers_seen.append(dict(self.headers))
            cls.open_now += 1
            cls.most_open = max(cls.most_open, cls.open_now)
        try:
            time.sleep(0.02)  # long enough for requests to overlap
            if body["model"] != "tiny-model":
                self._reply(404, {"error": {"message": f"The model `{body['model']}` does not exist."}})
            elif "DOWN" in prompt or ("FLAKY" in prompt and hits <= 2):
                self._reply(503, {"error": {"message": "overloaded"}})
            elif "LONG" in prompt:
                self._reply(400, {"error": {"message": "This model's maximum context length is 2048 tokens."}})
            else:
                words = prompt.split()[: body["max_tokens"]]
                finish = "length" if len(words) == body["max_tokens"] else "stop"
                self._reply(200, {"choices": [{"message": {"role": "assistant", "content": " ".join(words)},
                                               "finish_reason": finish}],
                                  "usage": {"prompt_tokens": len(prompt.split()) + 3,
                                            "completion_tokens": len(words)}})
        finally:
            with cls.lock:
                cls.open_now -= 1

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    FakeOpenAI.hits = Counter()
    FakeOpenAI.bodies, FakeOpenAI.headers_seen = [], []
    FakeOpenAI.open_now = FakeOpenAI.most_open = 0
    with loopback_server(FakeOpenAI) as base:
        yield f"{base}/v1"


def engine_for(url: str, model: str = "tiny-model", **endpoint):
    endpoint = {"url": url, "concurrency": 4, "timeout_s": 5.0, "retries": 3, "backoff_s": 0.01, **endpoint}
    config = config_from_dict({"model": {"engine": "endpoint", "path": model},
                               "sampling": {"max_tokens": 5, "top_k": 0}, "endpoint": endpoint})
    return make_engine(config)


def ask(record_id: str, text: str, seed: int = 7) -> Request:
    return Request(record_id, [{"role": "user", "content": text}], seed)


def test_retries_rejections_and_concurrency(server, monkeypatch):
    monkeypatch.setenv("TEST_API_KEY", "sekrit")
    engine = engine_for(server, api_key_env="TEST_API_KEY")
    requests = [ask(f"r{i}", f"document {i} one two three four five six") for i in range(12)]
    requests += [ask("flaky", "FLAKY a b"), ask("long", "LONG " * 50)]
    started = time.monotonic()
    completions = {c.record_id: c for c in engine.generate(iter(requests))}
    assert time.monotonic() - started < 10

    assert set(completions) == {r.record_id for r in requests}
    assert FakeOpenAI.hits["FLAKY a b"] == 3  # two 503s, then the answer
    assert completions["flaky"].finish_reason == "stop" and completions["flaky"].text == "FLAKY a b"
    long = completions["long"]
    assert long.finish_reason == "rejected" and "maximum context length" in long.error and long.text == ""
    assert FakeOpenAI.hits["LONG " * 50] == 1  # a 400 is final: never retried
    normal = completions["r3"]
    assert normal.finish_reason == "length" and normal.completion_tokens == 5 and normal.prompt_tokens == 11
    assert normal.seconds > 0
    assert 1 < FakeOpenAI.most_open <= 4  # bounded, and requests overlap
    body = FakeOpenAI.bodies[0]
    assert body["max_tokens"] == 5 and body["seed"] == 7 and body["top_k"] == -1
    assert all(h.get("Authorization") == "Bearer sekrit" for h in FakeOpenAI.headers_seen)


def test_server_down_fails_the_stream(server):
    engine = engine_for(server, retries=2)
    with pytest.raises(EngineError, match="failed 3 times.*HTTP 503: overloaded"):
        list(engine.generate([ask("ok", "fine words"), ask("down", "DOWN now")]))
    assert FakeOpenAI.hits["DOWN now"] == 3


def test_wrong_model_is_a_setup_error(server):
    engine = engine_for(server, model="other-model")
    with pytest.raises(EngineError, match="HTTP 404.*does not exist"):
        list(engine.generate([ask("a", "hello")]))


def test_nothing_listening_is_retried_then_fails():
    engine = engine_for("http://127.0.0.1:9/v1", retries=1)  # port 9 (discard): nothing listens
    with pytest.raises(EngineError, match="failed 2 times"):
        list(engine.generate([ask("a", "hello")]))


def test_missing_api_key_is_a_setup_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(EngineError, match="NO_SUCH_KEY_VAR"):
        engine_for("http://127.0.0.1:9/v1", api_key_env="NO_SUCH_KEY_VAR")


def test_closing_the_stream_ends_retry_waits(server):
    engine = engine_for(server, backoff_s=30.0)  # a retry would wait 15-30 s
    stream = engine.generate([ask("ok", "fine words")] + [ask(f"down{i}", f"DOWN {i}") for i in range(3)])
    assert next(stream).record_id == "ok"
    stream.close()  # the worker stops early, e.g. it lost its lease
    deadline = time.monotonic() + 5
    while any(t.name.startswith("hpcsynth-endpoint") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "retrying threads outlived the stream"
        time.sleep(0.05)
