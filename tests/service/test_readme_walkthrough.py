"""The README's curl walk-through, run as written: its two bash blocks are read from README.md and
fed, command by command, to one bash shell (so the variables and functions the README defines carry
from one command to the next, as in a reader's terminal). The server is started by the README's own
commands on the embedded defaults; only the port, the state folder and the backbone (`tiny`, for
speed) are overridden, right after the README sets them. Every command must exit 0, and the image
it downloads must be a PNG."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from infra.local_stack import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SECTION = "## The API with curl"
COMMAND_TIMEOUT_S = 240.0  # the longest command polls a training on `tiny` (seconds, not minutes)


def _processes_with_env(marker: str) -> list[int]:
    """Ids of live processes whose environment holds `marker` (this run's state folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"OMNI_DATA_DIR={marker}".encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except (PermissionError, FileNotFoundError, ProcessLookupError):
            continue
    return found


def readme_blocks() -> list[str]:
    """The fenced bash blocks of the README's walk-through section, in order."""
    text = (REPO / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start:end if end != -1 else None]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def shell_commands(block: str) -> list[str]:
    """Complete commands: a line, joined with the next while it ends in a backslash or leaves a
    quote open (the JSON bodies span lines); comments and blank lines are skipped."""
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending = f"{pending}\n{line}" if pending else line
        if pending.endswith("\\"):
            continue
        try:
            shlex.split(pending)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        commands.append(pending)
        pending = ""
    assert not pending, f"unfinished command in the README: {pending!r}"
    return commands


class Shell:
    """One bash process fed commands on stdin; each command's output and exit status go to files.
    bash is a session leader and has no job control, so the servers it starts in the background
    share its process group and are stopped with it."""

    def __init__(self, cwd: Path, env: dict[str, str], scratch: Path) -> None:
        self.scratch = scratch
        self.count = 0
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        self.send("set -o pipefail")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT_S) -> tuple[int, str]:
        self.count += 1
        out, rc = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.rc"
        # stdin from /dev/null: a command reading stdin must not eat the commands that follow.
        self.send(f"{{\n{command}\n}} < /dev/null > {out} 2>&1; echo $? > {rc}.tmp && mv {rc}.tmp {rc}")
        deadline = time.monotonic() + timeout
        while not rc.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"bash exited ({self.proc.returncode}) during {command!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{command!r} ran past {timeout:.0f}s:\n{out.read_text()[-3000:]}")
            time.sleep(0.2)
        return int(rc.read_text()), out.read_text()

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=10)
                time.sleep(1)  # the group's other members (gunicorn, celery) exit after bash
            except subprocess.TimeoutExpired:
                pass


def test_readme_walkthrough_runs_as_written(tmp_path):
    blocks = readme_blocks()
    assert len(blocks) == 2, "the walk-through is one block that starts the service and one that uses it"
    start, walk = (shell_commands(b) for b in blocks)
    assert any(c.startswith("curl") or "$(curl" in c for c in walk)

    # The reader's working directory is the repository root; here a scratch folder that shows the
    # same `examples/` (so maeve-home.png lands in tmp_path, not in the checkout).
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(REPO / "examples")
    scratch = tmp_path / "shell"
    scratch.mkdir()
    overrides = {"PORT": str(free_port()), "OMNI_DATA_DIR": str(tmp_path / "state")}
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "BROKER_URL", "S3_BUCKET", "S3_ENDPOINT_URL", "OMNI_STORE_DIR",
                        "OMNI_REDIS_URL")}
    env |= {"OMNI_BACKBONE": "tiny", "OMNI_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    shell = Shell(work, env, scratch)
    outputs: dict[str, str] = {}
    try:
        for command in start + walk:
            rc, out = shell.run(command)
            assert rc == 0, f"README command failed ({rc}): {command}\n{out[-3000:]}"
            outputs[command] = out
            assigned = [name for name in overrides if re.search(rf"\b{name}=", command)]
            if assigned:  # right after the README sets them, before anything uses them
                shell.send("export " + " ".join(f"{n}={shlex.quote(overrides[n])}" for n in assigned))
    finally:
        shell.stop()
    assert _processes_with_env(overrides["OMNI_DATA_DIR"]) == [], "the README's servers outlived the shell"

    image = work / "maeve-home.png"
    assert image.exists(), "step 4 did not download the image"
    with Image.open(image) as png:
        assert png.format == "PNG" and png.size[0] > 0
    versions_out = next(out for cmd, out in outputs.items() if cmd.rstrip().endswith("/versions"))
    versions = json.loads(versions_out)["versions"]
    assert len(versions) == 1 and versions[0]["number"] == 1
    webhook_out = next(out for cmd, out in outputs.items() if "/v1/webhooks" in cmd)
    webhook = json.loads(webhook_out)
    assert webhook["url"] == "http://127.0.0.1:9000/omni-events" and webhook["secret"].startswith("whsec_")
    # the state went where the override said, not into the checkout's build/walkthrough
    assert (tmp_path / "state" / "omni.sqlite3").exists()
