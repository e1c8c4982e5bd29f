"""Start the service's processes on one machine: the API (gunicorn) and Celery workers, each in its
own process group so that stopping kills their children too (no stray processes)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen
    log_path: Path
    log_file: IO[bytes]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")[-chars:]


@dataclass
class LocalStack:
    env: dict[str, str]
    log_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        popen = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        proc = ManagedProcess(name, popen, log_path, log_file)
        self.processes.append(proc)
        return proc

    def start_api(self, port: int | None = None) -> str:
        port = port or free_port()
        self._spawn("api", [sys.executable, "-m", "gunicorn", "--workers", "1", "--threads", "4",
                            "--bind", f"127.0.0.1:{port}", "--timeout", "120", "api.wsgi:app"])
        return f"http://127.0.0.1:{port}"

    def start_worker(self, queue: str, beat_schedule: Path | None = None) -> ManagedProcess:
        """A Celery worker on `queue`; with `beat_schedule` (a file path) it also runs beat, which
        sends the periodic reaper task."""
        argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "--queues", queue,
                "--concurrency", "1", "--hostname", f"{queue}-{os.getpid()}@127.0.0.1", "--loglevel", "INFO",
                "--without-gossip", "--without-mingle"]
        if beat_schedule is not None:
            argv += ["--beat", "--schedule", str(beat_schedule)]
        return self._spawn(f"worker-{queue}", argv)

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")

    def wait_log(self, proc: ManagedProcess, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if text in proc.log_tail(1_000_000):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{proc.name} did not log {text!r} within {timeout:.0f}s:\n{proc.log_tail()}")

    def check_alive(self) -> None:
        for proc in self.processes:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")

    def kill(self, proc: ManagedProcess, sig: int = signal.SIGKILL) -> None:
        """Signal the process's whole group (a Celery worker's pool children included)."""
        try:
            os.killpg(proc.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace_seconds: float = 10.0) -> None:
        for proc in self.processes:
            self.kill(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for proc in self.processes:
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self.kill(proc, signal.SIGKILL)  # the group: pool children outlive a killed parent otherwise
            try:
                proc.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            proc.log_file.close()
        self.processes.clear()
