"""A small HTTP client for the API (standard library only), used by the README demo and the
integration tests; it shows the flow a customer's code follows."""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class ApiResponse:
    status: int
    body: Any  # parsed JSON, or bytes for images
    content_type: str


class ApiCallError(RuntimeError):
    def __init__(self, response: ApiResponse, what: str) -> None:
        super().__init__(f"{what}: HTTP {response.status} {response.body}")
        self.response = response


def encode_multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """(body, content type) for fields and (field, filename, data) files."""
    boundary = "omni-" + secrets.token_hex(12)
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, data in files:
        head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n")
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class OmniClient:
    def __init__(self, base_url: str, api_key: str | None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def request(self, method: str, path: str, *, json_body: Any = None, fields: dict[str, str] | None = None,
                files: list[tuple[str, str, bytes]] | None = None) -> ApiResponse:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if files is not None or fields is not None:
            data, headers["Content-Type"] = encode_multipart(fields or {}, files or [])
        elif json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return self._response(resp.status, resp.headers.get("Content-Type", ""), resp.read())
        except urllib.error.HTTPError as err:
            return self._response(err.code, err.headers.get("Content-Type", ""), err.read())

    @staticmethod
    def _response(status: int, content_type: str, raw: bytes) -> ApiResponse:
        body: Any = json.loads(raw) if content_type.startswith("application/json") and raw else raw
        return ApiResponse(status, body, content_type)

    def _ok(self, response: ApiResponse, what: str, expected: tuple[int, ...] = (200, 201, 202)) -> Any:
        if response.status not in expected:
            raise ApiCallError(response, what)
        return response.body

    # -- the flow ------------------------------------------------------------------------------
    def create_concept(self, name: str, facts: list[tuple[str, str]]) -> dict[str, Any]:
        body = {"name": name, "facts": [{"question": q, "answer": a} for q, a in facts]}
        return self._ok(self.request("POST", "/v1/concepts", json_body=body), "create concept")

    def upload_images(self, concept_id: str, images: list[tuple[str, bytes]]) -> dict[str, Any]:
        files = [("image", name, data) for name, data in images]
        return self._ok(self.request("POST", f"/v1/concepts/{concept_id}/images", files=files), "upload images")

    def train(self, concept_id: str, steps: int) -> dict[str, Any]:
        return self._ok(self.request("POST", f"/v1/concepts/{concept_id}/train", json_body={"steps": steps}),
                        "start training")

    def job(self, job_id: str) -> dict[str, Any]:
        return self._ok(self.request("GET", f"/v1/jobs/{job_id}"), "get job")

    def ask(self, concept_id: str, question: str, image: bytes | None = None) -> dict[str, Any]:
        if image is None:
            response = self.request("POST", f"/v1/concepts/{concept_id}/ask", json_body={"question": question})
        else:
            response = self.request("POST", f"/v1/concepts/{concept_id}/ask", fields={"question": question},
                                    files=[("image", "photo.png", image)])
        return self._ok(response, "ask")

    def generate(self, concept_id: str, prompt: str, seed: int = 0, steps: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": prompt, "seed": seed} | ({"steps": steps} if steps else {})
        return self._ok(self.request("POST", f"/v1/concepts/{concept_id}/generate", json_body=body), "generate")

    def edit(self, concept_id: str, instruction: str, image: bytes, seed: int = 0,
             steps: int | None = None) -> dict[str, Any]:
        fields = {"instruction": instruction, "seed": str(seed)} | ({"steps": str(steps)} if steps else {})
        response = self.request("POST", f"/v1/concepts/{concept_id}/edit", fields=fields,
                                files=[("image", "photo.png", image)])
        return self._ok(response, "edit")

    def render(self, render_id: str) -> dict[str, Any]:
        return self._ok(self.request("GET", f"/v1/renders/{render_id}"), "get render")

    def render_image(self, render_id: str) -> bytes:
        return self._ok(self.request("GET", f"/v1/renders/{render_id}/image"), "get render image", (200,))

    def wait_job(self, job_id: str, timeout: float, on_progress: Callable[[dict[str, Any]], None] | None = None,
                 poll_seconds: float = 0.5) -> dict[str, Any]:
        """Polls until the job finishes; raises TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["state"] in ("succeeded", "failed", "canceled"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:.0f}s")
            time.sleep(poll_seconds)
