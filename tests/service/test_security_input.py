"""Hostile input: decompression bombs, truncated and disguised images, oversized and deeply nested
JSON, path tricks in file names, look-alike concept names, and reserved tokens smuggled into every
kind of user text. Each is refused with a 4xx JSON error naming the field and leaves every row and
stored object as it was (a full snapshot before and after)."""

from __future__ import annotations

import io
import json
import re
import zlib
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select

from api.app import create_app
from api.models import Batch, ConceptImage, IdempotencyKey, UsageRecord, WebhookEndpoint

from .conftest import TenantClient, add_version, make_tenant, png_bytes, snapshot

FACTS = [{"question": "What is the home of {c}?", "answer": "the dunes"}]


def full_snapshot(session_factory, store) -> dict[str, Any]:
    """conftest's snapshot (concepts, facts, images, jobs, versions, renders, objects) plus the
    tables it does not cover that a refused request could still touch."""
    state = snapshot(session_factory, store)
    with session_factory() as session:
        state["captions"] = sorted((str(i.id), i.caption, i.caption_state)
                                   for i in session.scalars(select(ConceptImage)))
        for model in (Batch, IdempotencyKey, UsageRecord, WebhookEndpoint):
            state[model.__tablename__] = session.scalar(select(func.count()).select_from(model))
    return state


@pytest.fixture
def concept(acme: TenantClient, session_factory) -> dict[str, Any]:
    """A trained concept `<dune>` with one photo, so every render route is reachable."""
    created = acme.post("/v1/concepts", json={"name": "dune", "facts": FACTS})
    assert created.status_code == 201, created.json
    upload = acme.post(f"/v1/concepts/{created.json['id']}/images", data={"image": (io.BytesIO(png_bytes()), "a.png")},
                       content_type="multipart/form-data")
    assert upload.status_code == 201, upload.json
    add_version(session_factory, acme.tenant_id, created.json["id"])
    return {"id": created.json["id"], "image_id": upload.json["images"][0]["id"]}


def _upload(tc: TenantClient, concept_id: str, data: bytes, filename: str = "photo.png",
            mimetype: str = "image/png") -> Any:
    return tc.post(f"/v1/concepts/{concept_id}/images", content_type="multipart/form-data",
                   data={"image": (io.BytesIO(data), filename, mimetype)})


def _bomb_png(side: int) -> bytes:
    """A valid PNG of side x side black pixels that compresses to a few kilobytes."""
    out = io.BytesIO()
    Image.new("L", (side, side), 0).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size over a tiny IDAT: PIL must refuse it from the header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(out, format="GIF")
    return out.getvalue()


BAD_IMAGES = {
    "bomb_2000x2000": lambda: _bomb_png(2000),  # 4 MP, settings allow 256x256: refused from the header
    "header_claims_65535x65535": lambda: _png_claiming(65535, 65535),
    "truncated_png": lambda: png_bytes(size=64)[:-40],
    "truncated_jpeg": lambda: _jpeg()[: len(_jpeg()) // 2],
    "html_named_png": lambda: b"<html><script>alert(1)</script></html>",
    "gif_sent_as_png": _gif,
    "svg_sent_as_png": lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    "empty": lambda: b"",
}


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 200)).save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_bad_images_are_refused_and_nothing_is_stored(acme, concept, session_factory, store, kind):
    before = full_snapshot(session_factory, store)
    response = _upload(acme, concept["id"], BAD_IMAGES[kind]())
    assert response.status_code == 400, response.json
    assert response.json["error"]["field"] == "image[0]"
    assert [r["index"] for r in response.json["rejected"]] == [0]
    assert full_snapshot(session_factory, store) == before


def test_a_bomb_among_good_files_is_rejected_alone(acme, concept, session_factory, store):
    good = png_bytes((10, 200, 10))
    response = acme.post(f"/v1/concepts/{concept['id']}/images", content_type="multipart/form-data",
                         data={"image": [(io.BytesIO(_bomb_png(2000)), "bomb.png"), (io.BytesIO(good), "ok.png")]})
    assert response.status_code == 201
    assert [(r["index"], r["filename"]) for r in response.json["rejected"]] == [(0, "bomb.png")]
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(ConceptImage)) == 2  # the fixture's + ok.png


PATH_TRICKS = ["../../../etc/passwd.png", "..\\..\\windows\\win.ini.png", "/abs/olute.png", "a/../../b.png",
               "%2e%2e%2fx.png", "nul\x00byte.png", "....//....//x.png", "C:\\boot.png"]


@pytest.mark.parametrize("filename", PATH_TRICKS)
def test_path_tricks_in_filenames_never_reach_the_object_key(acme, concept, session_factory, store, filename):
    response = _upload(acme, concept["id"], png_bytes((7, 7, 250)), filename=filename)
    assert response.status_code == 201, response.json
    image = response.json["images"][0]
    with session_factory() as session:
        row = session.get(ConceptImage, __import__("uuid").UUID(image["id"]))
        key = row.object_key
    # The key is built from ids and the content hash only: tenant/concepts/<id>/images/<sha256>.png
    assert re.fullmatch(rf"{acme.tenant_id}/concepts/{concept['id']}/images/[0-9a-f]{{64}}\.png", key), key
    assert ".." not in key and "\\" not in key and "\x00" not in key
    # The name shown back is the last path part, printable only (NUL would break PostgreSQL text).
    assert image["filename"] is None or not set(image["filename"]) & {"/", "\\", "\x00"}
    stored = store.list_keys("")
    assert key in stored and all(k.startswith(f"{acme.tenant_id}/") for k in stored)
    assert all(p.is_relative_to(store.root) for p in store.root.rglob("*"))


CONFUSABLE_NAMES = ["mаeve",  # Cyrillic а
                    "ｍaeve",  # fullwidth m
                    "maeve\n", "maevе", "Maeve", "ma eve", "maeve\u200b", "maeve\u0301", "ǉeve", "<maeve>", "",
                    "m" * 33, "maeve;drop", "ﬁsh"]


@pytest.mark.parametrize("name", CONFUSABLE_NAMES)
def test_confusable_and_malformed_concept_names_are_refused(acme, session_factory, store, name):
    before = full_snapshot(session_factory, store)
    response = acme.post("/v1/concepts", json={"name": name, "facts": FACTS})
    assert response.status_code == 400 and response.json["error"]["field"] == "name", response.json
    assert full_snapshot(session_factory, store) == before


RESERVED = ["<und_0>", "<gen_12>", "<und_3:x>", "＜und_1＞", "﹤gen_2﹥", "<|endoftext|>", "<|im_start|>", "<s>",
            "</s>", "<pad>", "<bos>", "<image>", "<other_concept>"]


def _reserved_requests(concept: dict[str, Any], token: str) -> list[tuple[str, str, dict[str, Any], Any]]:
    """(method, path, JSON body, field refused) for every kind of user text."""
    cid = concept["id"]
    return [
        ("POST", "/v1/concepts", {"name": "other", "facts": [{"question": f"Is {token} {{c}}?", "answer": "yes"}]},
         "facts[0].question"),
        ("POST", "/v1/concepts", {"name": "other", "facts": [{"question": "Who is {c}?", "answer": token}]},
         "facts[0].answer"),
        ("PATCH", f"/v1/concepts/{cid}", {"facts": [{"question": f"{token} and {{c}}?", "answer": "x"}]},
         "facts[0].question"),
        ("POST", f"/v1/concepts/{cid}/ask", {"question": f"What is <dune> {token}?"}, "question"),
        ("POST", f"/v1/concepts/{cid}/generate", {"prompt": f"<dune> {token} at the beach"}, "prompt"),
        ("POST", "/v1/renders/generate", {"prompt": f"<dune> {token} at the beach"}, "prompt"),
        ("PATCH", f"/v1/concepts/{cid}/images/{concept['image_id']}", {"caption": f"<dune> {token}"}, "caption"),
        # A concept-shaped token (<s>) in a template is found unknown per item, so values[0] may be named.
        ("POST", "/v1/batches", {"template": "<dune> " + token + " {value}", "values": ["a"]}, ("template", "values")),
        ("POST", "/v1/batches", {"prompts": ["{c} " + token], "concepts": ["dune"]}, "prompts"),
        ("POST", "/v1/batches", {"template": "<dune> at {value}", "values": [token]}, "values"),
    ]


@pytest.mark.parametrize("token", RESERVED)
def test_reserved_tokens_in_any_user_text_are_refused_and_nothing_is_stored(acme, concept, session_factory, store,
                                                                            token):
    before = full_snapshot(session_factory, store)
    for method, path, body, field in _reserved_requests(concept, token):
        response = acme.client.open(path, method=method, json=body,
                                    headers={"Authorization": f"Bearer {acme.api_key}"})
        assert response.status_code == 400, (path, body, response.status_code, response.get_data(as_text=True))
        assert response.json["error"]["field"].startswith(field), (path, field, response.json)  # str or tuple
    edit = acme.post(f"/v1/concepts/{concept['id']}/edit", content_type="multipart/form-data",
                     data={"instruction": f"make <dune> {token}", "image": (io.BytesIO(png_bytes()), "src.png")})
    assert edit.status_code == 400 and edit.json["error"]["field"] == "instruction", edit.json
    assert full_snapshot(session_factory, store) == before


@pytest.fixture
def small_body_app(settings, session_factory, store, broker):
    return create_app(settings.with_overrides(max_content_length=64 * 1024), session_factory=session_factory,
                      store=store, publisher=broker.publisher)


def test_json_over_the_content_length_limit_is_413_naming_body(small_body_app, session_factory, store):
    tc = make_tenant(session_factory, small_body_app, "bigbody")
    before = full_snapshot(session_factory, store)
    huge = {"name": "big", "facts": [{"question": "Q {c} " + "x" * 400, "answer": "a"}] * 400}
    assert len(json.dumps(huge)) > 64 * 1024
    for path in ("/v1/concepts", "/v1/batches", "/v1/renders/generate", "/v1/webhooks"):
        response = tc.post(path, json=huge)
        assert response.status_code == 413, (path, response.status_code)
        assert response.json["error"]["field"] == "body"
    concept_id = tc.post("/v1/concepts", json={"name": "small", "facts": FACTS}).json["id"]
    before = full_snapshot(session_factory, store)
    upload = tc.post(f"/v1/concepts/{concept_id}/images", content_type="multipart/form-data",
                     data={"image": (io.BytesIO(b"\0" * (70 * 1024)), "big.png")})
    assert upload.status_code == 413 and upload.json["error"]["field"] == "body"
    assert full_snapshot(session_factory, store) == before


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a":', "}")])
def test_deeply_nested_json_is_400_not_a_crash(acme, concept, session_factory, store, depth, opener, closer):
    body = opener * depth + "1" + closer * depth
    before = full_snapshot(session_factory, store)
    for method, path in (("POST", "/v1/concepts"), ("PATCH", f"/v1/concepts/{concept['id']}"),
                         ("POST", f"/v1/concepts/{concept['id']}/generate"), ("POST", "/v1/batches"),
                         ("POST", "/v1/keys"), ("POST", "/v1/webhooks")):
        response = acme.client.open(path, method=method, data=body, content_type="application/json",
                                    headers={"Authorization": f"Bearer {acme.api_key}"})
        assert response.status_code == 400, (path, depth, response.status_code)
        assert response.json["error"]["field"] in ("body", "name", "facts"), response.json
    assert full_snapshot(session_factory, store) == before


def test_non_json_bodies_with_a_json_content_type_are_400(acme, session_factory, store):
    before = full_snapshot(session_factory, store)
    for raw in (b"\xff\xfe\x00garbage", b"NaN", b'{"name": "x"', b"[1, 2]", b'"just a string"'):
        response = acme.client.post("/v1/concepts", data=raw, content_type="application/json",
                                    headers={"Authorization": f"Bearer {acme.api_key}"})
        assert response.status_code == 400 and response.json["error"]["field"] in ("body", "name"), (raw, response.json)
    assert full_snapshot(session_factory, store) == before


def test_nul_characters_in_any_text_are_400_not_a_database_error(acme, concept, session_factory, store):
    before = full_snapshot(session_factory, store)
    cid = concept["id"]
    for method, path, body in (
            ("POST", "/v1/concepts", {"name": "other", "facts": [{"question": "Who\u0000 is {c}?", "answer": "x"}]}),
            ("PATCH", f"/v1/concepts/{cid}", {"facts": [{"question": "Who is {c}?", "answer": "a\u0000b"}]}),
            ("POST", f"/v1/concepts/{cid}/generate", {"prompt": "<dune>\u0000 at the beach"}),
            ("POST", "/v1/keys", {"name": "ci\u0000"}),
            ("POST", "/v1/users", {"email": "a\u0000@b.example"}),
            ("POST", "/v1/webhooks", {"url": "https://hooks.example.com/\u0000", "events": ["job.succeeded"]})):
        response = acme.client.open(path, method=method, data=json.dumps(body), content_type="application/json",
                                    headers={"Authorization": f"Bearer {acme.api_key}"})
        assert response.status_code == 400 and response.json["error"]["field"] == "body", (path, response.json)
    ask = acme.post(f"/v1/concepts/{cid}/ask", content_type="multipart/form-data",
                    data={"question": "What is <dune>\x00?", "image": (io.BytesIO(png_bytes()), "q.png")})
    assert ask.status_code == 400 and ask.json["error"]["field"] == "question", ask.json
    assert full_snapshot(session_factory, store) == before
