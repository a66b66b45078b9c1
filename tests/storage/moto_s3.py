"""A real S3 API on 127.0.0.1 for the storage tests: moto's server in a process of its own, started once
per test process (s3_server), and a second one with authentication on (s3_auth_server), where wrong
credentials are refused as AWS refuses them.

The second lets its first three requests through unsigned (INITIAL_NO_AUTH_ACTION_COUNT): the IAM user, its
access key and its allow-all policy are made with them; every later request must be signed by that key.
Only that test uses it: moto's signature check fails keys with spaces or shell characters that AWS signs
and checks fine, and those keys are part of what the other tests try.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

REGION = "us-east-1"


@dataclass(frozen=True)
class Server:
    endpoint: str
    key: str
    secret: str

    def env(self, **changes: str | None) -> dict[str, str | None]:
        """The AWS variables a client of this server needs (None unsets one)."""
        base: dict[str, str | None] = {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                                       "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": REGION,
                                       "AWS_PROFILE": None, "AWS_ENDPOINT_URL_S3": None, "AWS_SESSION_TOKEN": None,
                                       "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
        return {**base, **changes}

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret)


def _ends_with_parent() -> None:
    """The server gets SIGTERM when the test process that started it dies (a killed pytest-xdist worker
    runs no teardown); Linux's PR_SET_PDEATHSIG."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Server]:
    with _server(authenticated=False) as server:
        yield server


@pytest.fixture(scope="session")
def s3_auth_server() -> Iterator[Server]:
    with _server(authenticated=True) as server:
        yield server


@contextlib.contextmanager
def _server(authenticated: bool) -> Iterator[Server]:
    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3" if authenticated else "inf"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            preexec_fn=_ends_with_parent)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto's S3 server did not start on 127.0.0.1")
                time.sleep(0.1)
        endpoint = f"http://127.0.0.1:{port}"
        if not authenticated:
            yield Server(endpoint, "hpcsynth-test-key", "hpcsynth-test-secret-5f3a9c")
            return
        iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="hpcsynth-test")
        key = iam.create_access_key(UserName="hpcsynth-test")["AccessKey"]
        iam.put_user_policy(UserName="hpcsynth-test", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        yield Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        proc.terminate()  # by the pid we started, only
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3(s3_server: Server, monkeypatch) -> Server:
    """The server's credentials and endpoint in this test's environment (and its pool's processes)."""
    for name, value in s3_server.env().items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def bucket(s3: Server) -> str:
    """A new, empty bucket of this test's own."""
    name = f"hpcsynth-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name


@contextlib.contextmanager
def counting_fetches() -> Iterator[dict[str, int]]:
    """{"bytes": N}: what s3fs fetched from the server inside the block (every ranged GET of a file it reads),
    for the tests and tools/bench_s3.py that hold a read to about one download."""
    import s3fs.core

    fetched = {"bytes": 0}
    real = s3fs.core.S3File._fetch_range

    def counted(self, start: int, end: int):
        data = real(self, start, end)
        fetched["bytes"] += len(data)
        return data

    s3fs.core.S3File._fetch_range = counted
    try:
        yield fetched
    finally:
        s3fs.core.S3File._fetch_range = real
