"""The endpoint engine's key: never sent on a redirect, never over plain http to another host, never
stored in a failed marker, a reject, a log or status. Real HTTP servers on loopback stand in for a
hostile or misconfigured one."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from conftest import run_cli, write_corpus
from hpcsynth.config import config_from_dict
from hpcsynth.errors import EngineError
from hpcsynth.generate.engines import Request, make_engine

KEY = "hpcsynth-test-key-0123456789abcdef"
COMPLETION = {"choices": [{"message": {"content": "stolen answer"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


class Recorder(BaseHTTPRequestHandler):
    """Answers every method with `self.server.reply` (status, headers, body) and records what came."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
        status, headers, body = self.server.reply
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _handle

    def log_message(self, *args) -> None:
        pass


def serve(reply: tuple[int, dict, bytes]) -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    httpd.seen, httpd.reply = [], reply
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture
def servers() -> Iterator:
    started: list[ThreadingHTTPServer] = []

    def start(reply):
        httpd, url = serve(reply)
        started.append(httpd)
        return httpd, url

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def engine_for(url: str, **endpoint):
    endpoint = {"url": url, "concurrency": 2, "timeout_s": 5.0, "retries": 1, "backoff_s": 0.01, **endpoint}
    return make_engine(config_from_dict({"model": {"engine": "endpoint", "path": "m"}, "endpoint": endpoint}))


def ask(text: str = "hello") -> Request:
    return Request("000000-000000/faq", [{"role": "user", "content": text}], 1)


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_to_another_origin_is_refused_and_the_key_stays_home(servers, monkeypatch, code: int) -> None:
    monkeypatch.setenv("TEST_KEY", KEY)
    other, other_url = servers((200, {"Content-Type": "application/json"}, json.dumps(COMPLETION).encode()))
    _, url = servers((code, {"Location": f"{other_url}/v1/chat/completions"}, b""))
    engine = engine_for(f"{url}/v1", api_key_env="TEST_KEY")
    with pytest.raises(EngineError, match=f"HTTP {code}, a redirect to {other_url}.*does not follow redirects"):
        list(engine.generate([ask()]))
    assert other.seen == []  # neither the key nor the request reached the other server


@pytest.mark.parametrize("status", [201, 204])
def test_a_2xx_that_is_not_a_completion_is_an_error(servers, status: int) -> None:
    _, url = servers((status, {}, b""))
    with pytest.raises(EngineError, match=f"answered HTTP {status}, not a completion"):
        list(engine_for(f"{url}/v1").generate([ask()]))


def test_key_over_plain_http_to_another_host_is_refused_unless_allowed(monkeypatch) -> None:
    monkeypatch.setenv("TEST_KEY", KEY)
    with pytest.raises(EngineError, match="plain http to gpu-node.example.*allow_plain_http_key"):
        engine_for("http://gpu-node.example:8000/v1", api_key_env="TEST_KEY")
    engine_for("https://gpu-node.example/v1", api_key_env="TEST_KEY")
    engine_for("http://127.0.0.2:8000/v1", api_key_env="TEST_KEY")  # all of 127/8 is loopback
    engine_for("http://[::1]:8000/v1", api_key_env="TEST_KEY")
    engine_for("http://gpu-node.example:8000/v1", api_key_env="TEST_KEY", allow_plain_http_key=True)
    engine_for("http://gpu-node.example:8000/v1")  # no key, nothing to leak


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://host/v1", "127.0.0.1:8000/v1"])
def test_only_http_urls(url: str) -> None:
    with pytest.raises(EngineError, match="not an http"):
        engine_for(url)


def test_server_echoing_the_key_is_redacted_in_rejects_and_errors(servers, monkeypatch) -> None:
    monkeypatch.setenv("TEST_KEY", KEY)
    echo = {"error": {"message": f"bad request from Authorization: Bearer {KEY} (key {KEY})"}}
    _, url = servers((400, {"Content-Type": "application/json"}, json.dumps(echo).encode()))
    [rejected] = list(engine_for(f"{url}/v1", api_key_env="TEST_KEY").generate([ask()]))
    assert rejected.finish_reason == "rejected" and "bad request" in rejected.error
    assert KEY not in rejected.error and "[redacted]" in rejected.error

    _, url = servers((401, {"Content-Type": "application/json"}, json.dumps(echo).encode()))
    with pytest.raises(EngineError) as caught:
        list(engine_for(f"{url}/v1", api_key_env="TEST_KEY").generate([ask()]))
    assert KEY not in str(caught.value) and "HTTP 401" in str(caught.value)


@pytest.mark.parametrize("text", [
    "Authorization: Bearer abcdef0123456789", '{"api_key": "s3cr3t-value"}', "token=abcdef012345",
    "key sk-abcdefghijklmnopqrstuvwx", "hf_abcdefghijklmnopqrstuvwxyz", "https://user:pa55word@host/v1",
    "password: hunter2hunter2",
])
def test_credential_shapes_are_redacted(text: str) -> None:
    from hpcsynth.redact import redact

    out = redact(text)
    assert "[redacted]" in out
    for secret in ("abcdef0123456789", "s3cr3t-value", "abcdef012345", "abcdefghijklmnopqrstuvwx",
                   "pa55word", "hunter2hunter2"):
        assert secret not in out


def test_registered_secret_of_any_shape_is_redacted_and_plain_text_is_not() -> None:
    from hpcsynth.redact import redact, register_secret

    register_secret("plain words key 42")
    assert redact("the server said: plain words key 42!") == "the server said: [redacted]!"
    text = "HTTP 503: overloaded; retry later (max_tokens=2048, model tiny)"
    assert redact(text) == text


def test_failed_marker_and_log_hold_no_key(tmp_path: Path, monkeypatch) -> None:
    """A real worker on a server that fails every request and echoes the key: the shard fails, and
    neither RUN/failed/ nor RUN/logs/ nor status shows the key."""

    echo = {"error": {"message": f"upstream down; your header was Bearer {KEY}"}}
    httpd, url = serve((503, {"Content-Type": "application/json"}, json.dumps(echo).encode()))
    try:
        corpus = write_corpus(tmp_path / "c.jsonl", 2)
        config = tmp_path / "config.yaml"
        config.write_text(f"prompts: [faq]\nmodel: {{engine: endpoint, path: m}}\nendpoint: {{url: '{url}/v1', "
                          f"api_key_env: TEST_KEY, retries: 1, backoff_s: 0.01}}\n")
        env = {"TEST_KEY": KEY}
        run = tmp_path / "run"
        for args in (["plan", str(config), "--run", str(run), "--input", str(corpus)], ["launch", str(run)]):
            run_cli(*args, env=env, timeout=120)
        status = run_cli("status", str(run), "--json", env=env, timeout=60)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert httpd.seen and all(seen["headers"].get("Authorization") == f"Bearer {KEY}" for seen in httpd.seen)
    marker = orjson.loads((run / "failed" / "000000.json").read_bytes())
    assert "upstream down" in marker["reason"]
    written = b"".join(p.read_bytes() for p in run.rglob("*") if p.is_file())
    assert KEY.encode() not in written
    report = orjson.loads(status.stdout)
    assert report["failed_shards"] and KEY not in status.stdout
    assert any("upstream down" in line for line in report["failed_shards"][0]["log_tail"])
