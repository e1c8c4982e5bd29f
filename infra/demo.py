"""The README's main job over the service: start the API and both workers on the embedded
defaults (SQLite, SQLite-backed broker, local object store), then, over HTTP, create a tenant's
concept from the bundled example (examples/maeve), upload its photos, train it, ask, generate and
edit; write the images and a summary; stop every process it started.

    python3 infra/demo.py --out outputs/service-demo

Idempotent: each run starts from an empty state folder under --out."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from api.admin import create_tenant, migrate  # noqa: E402
from api.celery_config import declare_queues, make_celery  # noqa: E402
from api.client import OmniClient  # noqa: E402
from api.db import make_engine, make_session_factory, session_scope  # noqa: E402
from api.settings import Settings  # noqa: E402
from infra.local_stack import LocalStack  # noqa: E402

EXAMPLE = REPO / "examples" / "maeve"


def _progress_printer() -> Callable[[dict], None]:
    last = {"step": -1}

    def show(job: dict) -> None:
        history = job["progress_history"]
        if history and history[-1]["step"] != last["step"]:
            entry = history[-1]
            losses = " ".join(f"{k}={v:.3f}" for k, v in entry["losses"].items())
            print(f"  train step {entry['step']}/{entry['steps']}  loss {losses}", flush=True)
            last["step"] = entry["step"]

    return show


def run(out: Path, steps: int, sample_steps: int, backbone: str | None, timeout: float) -> dict:
    out = out.resolve()
    state = out / "state"
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(out / "logs", ignore_errors=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "BROKER_URL", "S3_BUCKET", "S3_ENDPOINT_URL", "OMNI_STORE_DIR")}
    env |= {"OMNI_DATA_DIR": str(state), "PYTHONUNBUFFERED": "1"}
    if backbone:
        env["OMNI_BACKBONE"] = backbone
    settings = Settings.from_env(env)
    migrate(settings)
    declare_queues(make_celery(settings))
    with session_scope(make_session_factory(make_engine(settings.database_url))) as session:
        _, api_key = create_tenant(session, "demo")
    stack = LocalStack(env, out / "logs")
    try:
        url = stack.start_api()
        workers = [stack.start_worker("train"), stack.start_worker("render")]
        stack.wait_http(f"{url}/healthz")
        for worker in workers:
            stack.wait_log(worker, "ready.")
        print(f"API at {url}; workers on queues train and render (backbone {settings.backbone})", flush=True)
        client = OmniClient(url, api_key)
        facts = [tuple(f) for f in json.loads((EXAMPLE / "facts.json").read_text())]
        photos = sorted((EXAMPLE / "photos").glob("*.png"))
        concept = client.create_concept("maeve", facts)
        client.upload_images(concept["id"], [(p.name, p.read_bytes()) for p in photos])
        print(f"concept <maeve>: {len(facts)} facts, {len(photos)} photos; training {steps} steps", flush=True)
        job = client.train(concept["id"], steps)
        train_job = client.wait_job(job["id"], timeout, _progress_printer())
        if train_job["state"] != "succeeded":
            raise RuntimeError(f"training {train_job['state']}: {train_job['error']}")
        photo = photos[0].read_bytes()
        started = {
            "ask_photo": client.ask(concept["id"], "is <maeve> in this image ?", photo),
            "ask_fact": client.ask(concept["id"], facts[0][0].replace("{c}", "<maeve>")),
            "generate": client.generate(concept["id"], "<maeve> at its home", seed=0, steps=sample_steps),
            "edit": client.edit(concept["id"], "remove <maeve>", photo, seed=0, steps=sample_steps),
        }
        results: dict[str, dict] = {}
        for name, render in started.items():
            job = client.wait_job(render["job_id"], timeout)
            if job["state"] != "succeeded":
                raise RuntimeError(f"{name} {job['state']}: {job['error']}")
            render = client.render(render["id"])
            entry = {"request": render["text"], "answer": render["answer"], "trace": render["trace"],
                     "conditioned_prompt": render["conditioned_prompt"]}
            if render["image_url"]:
                path = out / f"{name}.png"
                path.write_bytes(client.render_image(render["id"]))
                entry["image"] = str(path)
            results[name] = entry
        summary = {"api": url, "backbone": settings.backbone,
                   "concept": client.request("GET", f"/v1/concepts/{concept['id']}").body,
                   "train_job": train_job, "renders": results}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "service-demo")
    parser.add_argument("--steps", type=int, default=100, help="training steps")
    parser.add_argument("--sample-steps", type=int, default=20, help="flow-sampling steps per image")
    parser.add_argument("--backbone", help="backbone spec (default: OMNI_BACKBONE or the embedded default)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for each job")
    args = parser.parse_args(argv)
    # SIGTERM (as well as Ctrl-C) unwinds through run()'s `finally`, which stops the processes.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    t0 = time.monotonic()
    summary = run(args.out, args.steps, args.sample_steps, args.backbone, args.timeout)
    for name, entry in summary["renders"].items():
        shown = entry.get("image") or repr(entry["answer"])
        print(f"{name:10s} {entry['request']!r} -> {shown}")
        if entry["trace"]:
            print(f"           recaptioning: {entry['trace']}")
    print(f"done in {time.monotonic() - t0:.0f}s; images and summary.json in {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
