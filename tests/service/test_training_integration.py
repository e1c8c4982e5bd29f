"""Training features over HTTP against the production kind of stack (gunicorn, PostgreSQL, Redis,
SeaweedFS S3, real Celery worker processes; see test_integration.py): the mock recipe makes version
1 in seconds; training again warm-starts from it while the customer asks for "save now", sees
preview samples, then "stop and keep", which records version 2 with version 1 as its parent; the
version's checkpoint downloads from S3 by presigned URL."""

from __future__ import annotations

import io
import time
import urllib.request

import pytest
from PIL import Image

from . import test_integration
from .test_integration import JOB_TIMEOUT, Stack, _facts, _photos

pytestmark = pytest.mark.integration

stack = test_integration.stack  # the same module-scoped stack fixture, started for this module


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read()


def _wait(client, job_id: str, condition, what: str) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        job = client.job(job_id)
        if condition(job):
            return job
        assert job["state"] in ("queued", "running"), (what, job["state"], job["error"])
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_mock_warm_start_save_now_previews_stop_and_keep(stack: Stack, tiny):
    from omnipersona.artifacts import load_concept

    client = stack.client("hooli")
    concept = client.create_concept("maeve", _facts())
    client.upload_images(concept["id"], _photos())
    base = f"/v1/concepts/{concept['id']}"

    mock = client.request("POST", f"{base}/train", json_body={"recipe": "mock"})
    assert mock.status == 202, mock.body
    started = time.monotonic()
    done = client.wait_job(mock.body["id"], JOB_TIMEOUT)
    assert done["state"] == "succeeded", done["error"]
    assert time.monotonic() - started < 30 and done["result"]["recipe"] == "mock"
    (v1,) = client.request("GET", f"{base}/versions").body["versions"]
    assert (v1["number"], v1["source"], v1["current"]) == (1, "mock", True)

    long = client.request("POST", f"{base}/train", json_body={"steps": 4000, "batch_size": 2})
    assert long.status == 202 and long.body["payload"]["init_version_id"] == v1["id"]
    job_id = long.body["id"]
    running = _wait(client, job_id, lambda j: j["state"] == "running" and j["progress_detail"]["step"] >= 2, "steps")
    assert running["progress_detail"]["total_steps"] == 4000 and "total" in running["progress_detail"]["losses"]
    saved = client.request("POST", f"/v1/jobs/{job_id}/save")
    assert saved.status == 202 and saved.body["save_requests"] == 1

    def has(kind: str):
        return lambda job: any(s["kind"] == kind for s in client.job(job_id)["snapshots"])

    _wait(client, job_id, has("saved"), "the saved snapshot")
    _wait(client, job_id, has("preview"), "a preview")
    eta = client.job(job_id)["progress_detail"]["eta_seconds"]
    assert eta is not None and eta > 0
    stopped = client.request("POST", f"/v1/jobs/{job_id}/stop")
    assert stopped.status == 202 and stopped.body["keep_on_stop"] is True
    final = client.wait_job(job_id, JOB_TIMEOUT)
    assert final["state"] == "succeeded", final["error"]
    assert final["result"]["stopped_early"] is True and final["result"]["warm_started_from"] == v1["id"]
    steps_done = final["result"]["steps_done"]
    assert 2 <= steps_done < 4000

    versions = client.request("GET", f"{base}/versions").body["versions"]
    assert [(v["number"], v["source"], v["current"]) for v in versions] == [(2, "stopped", True), (1, "mock", False)]
    v2 = versions[0]
    assert v2["parent_version_id"] == v1["id"] and v2["metrics"]["steps"] == steps_done

    # previews and saved tokens, from S3 by presigned URL
    snapshots = client.request("GET", f"/v1/jobs/{job_id}/snapshots?expires_in=120").body["snapshots"]
    preview = next(s for s in snapshots if s["kind"] == "preview")
    assert preview["step"] % test_integration.CHECKPOINT_EVERY == 0
    image = Image.open(io.BytesIO(_fetch(preview["urls"]["preview.png"])))
    assert image.format == "PNG" and image.size == (tiny.config.image_size,) * 2
    saved_snapshot = next(s for s in snapshots if s["kind"] == "saved")
    assert saved_snapshot["urls"]["tokens.safetensors"].startswith(stack.s3.endpoint_url)

    download = client.request("GET", f"{base}/versions/{v2['id']}/download?expires_in=60")
    assert download.status == 200 and download.body["expires_in"] == 60
    folder = stack.settings.data_dir / "v2-download"
    folder.mkdir(parents=True, exist_ok=True)
    for file in download.body["files"]:
        assert file["url"].startswith(stack.s3.endpoint_url) and "X-Amz-Signature=" in file["url"]
        (folder / file["name"]).write_bytes(_fetch(file["url"]))
    assert load_concept(folder, tiny.fingerprint()).name == "maeve"
    other = stack.client("umbrella")
    assert other.request("GET", f"{base}/versions/{v2['id']}/download").status == 404
