"""The endpoint engine (model.engine: endpoint): an OpenAI-compatible /v1/chat/completions server.

For a `vllm serve` (or SGLang, TGI) that someone else runs. Standard library only, so this engine costs
nothing to install. Up to endpoint.concurrency requests are open at once; a new one starts as soon as one
returns, so the server's batch stays full.

What happens to a failed request:
- connection errors, timeouts, 408, 429 and 5xx are retried with exponential backoff; once
  endpoint.retries are spent the engine raises EngineError, so the shard fails and is retried later
  (a server that is down must not turn a whole shard into rejected records);
- 400, 413 and 422 (prompt too long, bad request) become a "rejected" Completion carrying the server's
  message: that request will never succeed, the others go on;
- other 4xx (401, 403, 404: wrong key, url or model name) raise EngineError at once: a setup problem;
- redirects are never followed (urllib would resend the key to the new address): EngineError at once.

The API key goes only to endpoint.url's own host, and over plain http only to loopback unless
endpoint.allow_plain_http_key says so; server messages are redacted before they are stored anywhere.

Telemetry is the server's /metrics (Prometheus text, vLLM's names; engines/telemetry.py), next to the
API: http://host:8000/v1 -> http://host:8000/metrics. The worker's clock asks at most once a tick, over
the same connection rules (no redirect followed, no proxy for loopback); a server without it (404, a
redirect, 401/403) is not asked again and the worker has no telemetry, which is no error.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from hpcsynth.config import Config
from hpcsynth.generate.engines.protocol import Completion, Request
from hpcsynth.generate.engines.feed import Feeder
from hpcsynth.generate.engines.telemetry import parse_prometheus
from hpcsynth.errors import EngineError
from hpcsynth.redact import redact, register_secret

RETRY_STATUS = {408, 429}
REJECT_STATUS = {400, 413, 422}
MAX_BACKOFF_S = 60.0
# /metrics is asked from the worker's clock between its writes: a short wait, a bounded answer (vLLM's
# is ~100 KB with every histogram; past this it is not a metrics page).
METRICS_TIMEOUT_S = 5.0
MAX_METRICS_BYTES = 8 << 20

log = logging.getLogger("hpcsynth.generate.worker")


class EndpointEngine:
    telemetry_source = "endpoint"
    telemetry_scope = "server"  # its counters are the server's, shared with its other clients (TelemetryLog)

    def __init__(self, config: Config) -> None:
        endpoint = config.endpoint
        self.config = config
        # vllm serve registers the model under the path it was given, so the path is its name.
        self.model_id = config.model.path
        self.revision = config.model.revision
        self.url = endpoint.url.rstrip("/") + "/chat/completions"
        self.headers = {"Content-Type": "application/json"}
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or ""
        if parts.scheme not in ("http", "https") or not host:
            raise EngineError(f"endpoint.url {redact(endpoint.url)!r} is not an http(s) address; set it to the "
                              f"server's base URL, e.g. http://127.0.0.1:8000/v1")
        if endpoint.api_key_env:
            key = os.environ.get(endpoint.api_key_env, "")
            if not key:
                raise EngineError(f"endpoint.api_key_env names ${endpoint.api_key_env}, which is not set")
            register_secret(key)
            if parts.scheme == "http" and not _is_loopback(host) and not endpoint.allow_plain_http_key:
                raise EngineError(f"endpoint.url is plain http to {host}, so the API key would cross the network "
                                  f"readable; use https, or set endpoint.allow_plain_http_key: true on a "
                                  f"network you trust")
            self.headers["Authorization"] = f"Bearer {key}"
        # A proxy set for the cluster's outbound traffic must not capture a server on this node.
        handlers: list[Any] = [_NoRedirect()]
        if _is_loopback(host):
            handlers.append(urllib.request.ProxyHandler({}))
        self.opener = urllib.request.build_opener(*handlers)
        self.jitter = random.Random()
        self.metrics_url: str | None = metrics_url(endpoint.url)
        self.telemetry_server = redact(self.metrics_url)

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        feeder = Feeder(requests, max(1, self.config.endpoint.concurrency))
        pool = ThreadPoolExecutor(max_workers=feeder.capacity, thread_name_prefix="hpcsynth-endpoint")
        open_: set[Future[Completion]] = set()
        stopped = threading.Event()
        try:
            while True:
                open_.update(pool.submit(self._complete, request, stopped) for request in feeder.refill(len(open_)))
                if not open_:
                    return
                done, open_ = wait(open_, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            # Stopped early or failed: drop what has not started, end retry waits now; calls on the wire
            # end by their timeout.
            stopped.set()
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        pass

    def telemetry(self) -> dict[str, float] | None:
        """One reading of the server's /metrics, or None: not reachable now (asked again next tick), or
        not served (a 404, a redirect, a refusal: never asked again)."""
        url = self.metrics_url
        if url is None:
            return None
        try:
            # Only the Authorization header goes along, to endpoint.url's own scheme, host and port.
            headers = {k: v for k, v in self.headers.items() if k == "Authorization"}
            request = urllib.request.Request(url, headers=headers, method="GET")
            with self.opener.open(request, timeout=min(METRICS_TIMEOUT_S, self.config.endpoint.timeout_s)) as response:
                if response.status != 200:
                    self._no_metrics(f"HTTP {response.status}")
                    return None
                data = response.read(MAX_METRICS_BYTES + 1)
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRY_STATUS and exc.code < 500:
                self._no_metrics(f"HTTP {exc.code}")
            return None
        except (OSError, ValueError):  # refused, reset, timed out: the server may come back
            return None
        if len(data) > MAX_METRICS_BYTES:
            self._no_metrics(f"more than {MAX_METRICS_BYTES >> 20} MiB")
            return None
        return parse_prometheus(data.decode("utf-8", "replace")) or None

    def _no_metrics(self, why: str) -> None:
        log.info("telemetry: %s answered %s; the server's metrics are not read again",
                 redact(self.metrics_url or ""), why)
        self.metrics_url = None

    def body(self, request: Request) -> dict[str, Any]:
        sampling = self.config.sampling
        return {
            # sampling.extra first: vLLM's server reads its SamplingParams extras from the body; named keys win.
            **sampling.extra,
            "model": self.model_id, "messages": request.messages, "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature, "top_p": sampling.top_p, "seed": request.seed,
            # Sent even when off (-1): otherwise the server falls back to the model's generation_config.
            "top_k": sampling.top_k if sampling.top_k > 0 else -1,
        }

    def _complete(self, request: Request, stopped: threading.Event) -> Completion:
        started = time.monotonic()
        completion = self._post(request, stopped)
        return dataclasses.replace(completion, seconds=time.monotonic() - started)

    def _post(self, request: Request, stopped: threading.Event) -> Completion:
        endpoint = self.config.endpoint
        data = json.dumps(self.body(request)).encode()
        problem = ""
        for attempt in range(endpoint.retries + 1):
            if attempt and stopped.wait(self._backoff(attempt)):
                raise EngineError("the stream was closed")
            try:
                post = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
                with self.opener.open(post, timeout=endpoint.timeout_s) as response:
                    if response.status != 200:  # 2xx without a completion: a proxy or a wrong server
                        raise EngineError(f"{redact(self.url)} answered HTTP {response.status}, not a completion; "
                                          f"check endpoint.url")
                    payload = json.loads(response.read())
                return _completion(request, payload)
            except urllib.error.HTTPError as exc:
                message = redact(_server_message(exc))
                if exc.code in REJECT_STATUS:
                    return Completion(request.record_id, "", "rejected", 0, 0, f"HTTP {exc.code}: {message}")
                if 300 <= exc.code < 400:
                    raise EngineError(_redirect_refused(self.url, exc)) from None
                if exc.code not in RETRY_STATUS and exc.code < 500:
                    raise EngineError(f"{redact(self.url)} answered HTTP {exc.code}: {message} (check endpoint.url, "
                                      "model.path and endpoint.api_key_env)") from None
                problem = f"HTTP {exc.code}: {message}"
            except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
                # OSError: refused, reset, timed out; the others: a garbled 200 answer.
                problem = redact(f"{type(exc).__name__}: {exc}")
        raise EngineError(f"{redact(self.url)} failed {endpoint.retries + 1} times for {request.record_id}; "
                          f"last: {problem}")

    def _backoff(self, attempt: int) -> float:
        delay = min(self.config.endpoint.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
        return delay * self.jitter.uniform(0.5, 1.0)  # spread out the retries of many open requests


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib would resend the Authorization header to wherever the
    Location points, turned into a GET, and take that server's answer for a completion."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        return None  # urllib then raises the 3xx as an HTTPError


def _redirect_refused(url: str, exc: urllib.error.HTTPError) -> str:
    target = exc.headers.get("Location", "") if exc.headers else ""
    return (f"{redact(url)} answered HTTP {exc.code}, a redirect to {redact(target) or 'elsewhere'}; hpcsynth does "
            f"not follow redirects (the API key would go along): set endpoint.url to the server itself")


def metrics_url(base: str) -> str:
    """The server's Prometheus page beside its API: BASE with a last /v1 replaced by /metrics (vLLM,
    SGLang and TGI serve it at their root; a proxy's prefix is kept)."""
    parts = urllib.parse.urlsplit(base.rstrip("/"))
    path = parts.path[:-3] if parts.path.endswith("/v1") else parts.path
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path + "/metrics", "", ""))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _completion(request: Request, payload: dict[str, Any]) -> Completion:
    choice = payload["choices"][0]
    usage = payload.get("usage") or {}
    prompt_tokens, completion_tokens = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
    text = choice["message"].get("content") or ""
    reason = choice.get("finish_reason")
    if reason in ("stop", "length"):
        return Completion(request.record_id, text, reason, prompt_tokens, completion_tokens)
    return Completion(request.record_id, "", "rejected", prompt_tokens, 0,
                      f"the server finished the request with {reason!r}")


def _server_message(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read().decode("utf-8", "replace")
    except OSError:
        return exc.reason or ""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.strip()[:500] or str(exc.reason)
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message") or error)[:500]
    return str(error)[:500]
