"""A real S3-compatible server on 127.0.0.1 (moto's server mode) for tests and benchmarks.

Clients reach it the standard way, through the environment: ``AWS_ENDPOINT_URL_S3`` and
credentials in ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (botocore, s3fs and
subprocesses all read them). Nothing of bankflow's is mocked.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    env: dict[str, str]  # what a client (or subprocess) needs in its environment

    def new_bucket(self, prefix: str = "team") -> str:
        """A fresh bucket; returns its name."""
        import fsspec

        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(name)
        return name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(secret: str = "bankflow-test-secret") -> Iterator[S3Server]:
    """Start moto's S3 server in a thread; set the environment while it runs."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bankflow-test-key",
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield S3Server(endpoint=env["AWS_ENDPOINT_URL_S3"], env=env)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
