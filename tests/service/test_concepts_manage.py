"""Concepts beyond create/get: list (paginated, filtered), PATCH facts, DELETE (rows and every
stored object, on the local store and on S3 over SeaweedFS), the per-tenant concept quota; uploads
judged file by file (content type, bytes, pixels, count), EXIF orientation applied and metadata
stripped; captions suggested by the model (worker, tiny backbone), edited, accepted, and used."""

from __future__ import annotations

import io
import uuid

import pytest
from flask import Flask
from PIL import Image
from sqlalchemy import func, select

from api.app import create_app
from api.models import Concept, ConceptImage, ConceptVersion, Fact, Job, Render, Tenant, UsageRecord

from .conftest import TenantClient, add_version, make_tenant, png_bytes, snapshot


def new_concept(tc: TenantClient, name: str = "maeve") -> dict:
    response = tc.post("/v1/concepts", json={"name": name, "facts": [{"question": "Where is {c}?", "answer": "home"}]})
    assert response.status_code == 201, response.json
    return response.json


def patch(tc: TenantClient, path: str, body: dict):
    return tc.client.patch(path, json=body, headers={"Authorization": f"Bearer {tc.api_key}"})


def delete(tc: TenantClient, path: str):
    return tc.client.delete(path, headers={"Authorization": f"Bearer {tc.api_key}"})


def upload(tc: TenantClient, concept_id: str, files: list[tuple[bytes, str]]):
    return tc.post(f"/v1/concepts/{concept_id}/images", data={"image": [(io.BytesIO(b), n) for b, n in files]})


def jpeg_with_exif(size: tuple[int, int] = (40, 20), orientation: int = 6) -> bytes:
    """A landscape JPEG whose EXIF says "rotate 90° clockwise to view", with a GPS position."""
    img = Image.new("RGB", size, (250, 0, 0))
    img.paste((0, 0, 250), (0, 0, size[0] // 2, size[1]))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x8825] = {1: "N", 2: (52.0, 22.0, 12.0), 3: "E", 4: (4.0, 53.0, 28.0)}
    out = io.BytesIO()
    img.save(out, format="JPEG", exif=exif.tobytes(), quality=95)
    return out.getvalue()


# -- names -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mаeve", "ｍaeve", "maeve\n", "Maeve", "ma eve", "1maeve", "m" * 33])
def test_confusable_and_malformed_names_are_refused(acme, session_factory, store, name):
    before = snapshot(session_factory, store)
    response = acme.post("/v1/concepts", json={"name": name, "facts": []})
    assert response.status_code == 400 and response.json["error"]["field"] == "name"
    assert snapshot(session_factory, store) == before


def test_fullwidth_reserved_token_in_a_fact_is_refused(acme):
    response = acme.post("/v1/concepts", json={"name": "maeve", "facts": [
        {"question": "What is {c}?", "answer": "＜und_1＞"}]})
    assert response.status_code == 400 and response.json["error"]["field"] == "facts[0].answer"


# -- list ---------------------------------------------------------------------------------------------

def test_list_pages_with_a_cursor_and_filters(acme, globex, session_factory):
    names = [f"c{i:02d}" for i in range(7)]
    ids = [new_concept(acme, n)["id"] for n in names]
    new_concept(globex, "c99")
    add_version(session_factory, acme.tenant_id, ids[3])  # c03 becomes ready
    seen, cursor = [], None
    for expected_size in (3, 3, 1):
        page = acme.get("/v1/concepts", query_string={"limit": 3, **({"cursor": cursor} if cursor else {})}).json
        assert len(page["concepts"]) == expected_size
        seen += [c["name"] for c in page["concepts"]]
        cursor = page["next_cursor"]
    assert seen == names and cursor is None
    ready = acme.get("/v1/concepts?status=ready").json
    assert [c["name"] for c in ready["concepts"]] == ["c03"] and ready["next_cursor"] is None
    assert [c["name"] for c in acme.get("/v1/concepts?name=c0").json["concepts"]] == names
    assert acme.get("/v1/concepts?name=c_").json["concepts"] == []  # "_" is a letter here, not a wildcard
    assert [c["name"] for c in acme.get("/v1/concepts?name=c05").json["concepts"]] == ["c05"]
    for query, field in [("limit=0", "limit"), ("limit=101", "limit"), ("status=sleeping", "status"),
                         ("cursor=bm9wZQ", "cursor"), ("colour=red", "colour")]:
        bad = acme.get(f"/v1/concepts?{query}")
        assert bad.status_code == 400 and bad.json["error"]["field"] == field, (query, bad.json)


# -- update facts ---------------------------------------------------------------------------------

def test_patch_replaces_the_facts(acme, globex, session_factory, store):
    concept = new_concept(acme)
    new_facts = [{"question": "What colour is <maeve>?", "answer": "brown"}]
    response = patch(acme, f"/v1/concepts/{concept['id']}", {"facts": new_facts})
    assert response.status_code == 200, response.json
    assert response.json["facts"] == [{"question": "What colour is {c}?", "answer": "brown"}]
    assert acme.get(f"/v1/concepts/{concept['id']}").json["facts"] == response.json["facts"]
    before = snapshot(session_factory, store)
    for body, field in [({"facts": [{"question": "no name here?", "answer": "x"}]}, "facts[0].question"),
                        ({"facts": [{"question": "What is {c}?", "answer": "<other>"}]}, "facts[0].answer"),
                        ({"facts": [{"question": "What is {c}?"}]}, "facts.0.answer"),
                        ({"facts": [], "name": "renamed"}, "name")]:
        bad = patch(acme, f"/v1/concepts/{concept['id']}", body)
        assert bad.status_code == 400 and bad.json["error"]["field"] == field, bad.json
    assert patch(globex, f"/v1/concepts/{concept['id']}", {"facts": []}).status_code == 404
    assert snapshot(session_factory, store) == before
    assert patch(acme, f"/v1/concepts/{concept['id']}", {"facts": []}).json["facts"] == []


# -- delete -------------------------------------------------------------------------------------------

def _populate(tc: TenantClient, session_factory, store, name: str = "maeve") -> dict:
    """A concept with two photos, a version with its files, a finished render with its output and a
    job checkpoint left behind: everything a concept can own in the store."""
    concept = new_concept(tc, name)
    assert upload(tc, concept["id"], [(png_bytes(), "a.png"), (png_bytes((0, 99, 0)), "b.png")]).status_code == 201
    version_id = add_version(session_factory, tc.tenant_id, concept["id"])
    with session_factory() as session:
        version = session.get(ConceptVersion, version_id)
        job = Job(tenant_id=tc.tenant_id, concept_id=version.concept_id, kind="render", queue="render",
                  state="succeeded", payload={})
        session.add(job)
        session.flush()
        render = Render(tenant_id=tc.tenant_id, concept_id=version.concept_id, version_id=version.id, job_id=job.id,
                        kind="generate", text="<maeve>", output_object_key=f"{tc.tenant_id}/renders/x/output.png")
        session.add(render)
        session.flush()
        store.put_bytes(f"{version.object_prefix}/tokens.safetensors", b"tokens")
        store.put_bytes(f"{version.object_prefix}/concept.json", b"{}")
        store.put_bytes(f"{tc.tenant_id}/renders/{render.id}/output.png", png_bytes())
        store.put_bytes(f"{tc.tenant_id}/jobs/{version.job_id}/checkpoint/latest", b"step-2")
        session.add(UsageRecord(tenant_id=tc.tenant_id, job_id=job.id, kind="renders", quantity=1))
        session.commit()
    return concept


def _check_purge(tc, other, session_factory, store):
    concept = _populate(tc, session_factory, store)
    kept = _populate(tc, session_factory, store, "keeper")
    others = _populate(other, session_factory, store)
    before_other = set(store.list_keys(str(other.tenant_id)))
    mine = [k for k in store.list_keys(str(tc.tenant_id)) if concept["id"] in k or "/jobs/" in k or "/renders/" in k]
    assert len(mine) >= 6
    assert delete(other, f"/v1/concepts/{concept['id']}").status_code == 404
    response = delete(tc, f"/v1/concepts/{concept['id']}")
    assert response.status_code == 200, response.json
    assert response.json["deleted"] is True and response.json["objects_removed"] == 6
    cid = uuid.UUID(concept["id"])
    with session_factory() as session:
        for model in (Concept, ConceptImage, Fact, ConceptVersion, Job, Render):
            column = model.id if model is Concept else model.concept_id
            assert session.scalar(select(func.count()).select_from(model).where(column == cid)) == 0, model
        assert session.scalar(select(func.count()).select_from(UsageRecord).where(
            UsageRecord.tenant_id == tc.tenant_id)) == 2  # the bill stays
    assert store.list_keys(f"{tc.tenant_id}/concepts/{cid}/") == []
    remaining = store.list_keys(str(tc.tenant_id))
    assert remaining and all(concept["id"] not in k for k in remaining)
    assert all(kept["id"] in k or "/jobs/" in k or "/renders/" in k for k in remaining)
    assert len(remaining) == 6  # the other concept's images, version files, render and checkpoint
    assert set(store.list_keys(str(other.tenant_id))) == before_other
    assert tc.get(f"/v1/concepts/{concept['id']}").status_code == 404
    assert delete(tc, f"/v1/concepts/{concept['id']}").status_code == 404
    assert others["id"] in {c["id"] for c in other.get("/v1/concepts").json["concepts"]}


def test_delete_purges_rows_and_objects_on_the_local_store(acme, globex, session_factory, store):
    _check_purge(acme, globex, session_factory, store)


@pytest.mark.integration
def test_delete_purges_rows_and_objects_on_s3(s3_server, settings, session_factory, broker):
    from api.storage import S3Store

    s3 = S3Store(f"del-{uuid.uuid4().hex[:10]}", s3_server.endpoint_url, s3_server.access_key, s3_server.secret_key)
    app: Flask = create_app(settings, session_factory=session_factory, store=s3, publisher=broker.publisher)
    _check_purge(make_tenant(session_factory, app, "acme"), make_tenant(session_factory, app, "globex"),
                 session_factory, s3)


def test_delete_is_refused_while_a_job_is_unfinished(acme, session_factory, store):
    concept = new_concept(acme)
    upload(acme, concept["id"], [(png_bytes(), "a.png")])
    job = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 3}).json
    before = snapshot(session_factory, store)
    response = delete(acme, f"/v1/concepts/{concept['id']}")
    assert response.status_code == 409 and response.json["error"]["field"] == "concept"
    assert snapshot(session_factory, store) == before
    acme.post(f"/v1/jobs/{job['id']}/cancel")
    assert delete(acme, f"/v1/concepts/{concept['id']}").status_code == 200


# -- quota ---------------------------------------------------------------------------------------------

def test_concepts_per_tenant_quota_is_429_until_one_is_deleted(acme, globex, session_factory, store):
    with session_factory() as session:
        session.get(Tenant, acme.tenant_id).max_concepts = 2
        session.commit()
    first = new_concept(acme, "one")
    new_concept(acme, "two")
    before = snapshot(session_factory, store)
    over = acme.post("/v1/concepts", json={"name": "three", "facts": []})
    assert over.status_code == 429 and over.json["error"]["code"] == "quota_exceeded"
    assert snapshot(session_factory, store) == before
    new_concept(globex, "three")  # another tenant has its own quota
    assert delete(acme, f"/v1/concepts/{first['id']}").status_code == 200
    new_concept(acme, "three")


# -- uploads ---------------------------------------------------------------------------------------

def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="GIF")
    return out.getvalue()


def _webp() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 20), (5, 6, 7)).save(out, format="WEBP")
    return out.getvalue()


def test_mixed_upload_keeps_the_good_files_and_reports_the_bad(acme, broker, store):
    concept = new_concept(acme)
    response = upload(acme, concept["id"], [
        (png_bytes(), "ok.png"), (_gif(), "anim.png"), (png_bytes()[:40], "truncated.png"), (_webp(), "photo.bin"),
        (png_bytes(size=300), "huge.png"), (b"", "empty.jpg")])
    assert response.status_code == 201, response.json
    assert [i["filename"] for i in response.json["images"]] == ["ok.png", "photo.bin"]
    rejected = response.json["rejected"]
    assert [(r["index"], r["filename"], r["field"]) for r in rejected] == [
        (1, "anim.png", "image[1]"), (2, "truncated.png", "image[2]"), (4, "huge.png", "image[4]"),
        (5, "empty.jpg", "image[5]")]
    assert "pixels" in rejected[2]["reason"] and rejected[3]["reason"] == "empty file"
    assert len(store.list_keys(f"{acme.tenant_id}/concepts/{concept['id']}/images/")) == 2
    # each new photo is sent to be captioned on the render queue, by image id
    assert sorted(m[1][0] for m in broker.take("render")) == sorted(i["id"] for i in response.json["images"])
    assert all(i["caption_state"] == "pending" and i["caption"] is None for i in response.json["images"])


def test_upload_where_every_file_is_bad_is_400_and_stores_nothing(acme, session_factory, store, broker):
    concept = new_concept(acme)
    before = snapshot(session_factory, store)
    response = upload(acme, concept["id"], [(_gif(), "a.gif"), (b"junk", "b.png")])
    assert response.status_code == 400
    assert response.json["error"]["field"] == "image[0]"
    assert [r["filename"] for r in response.json["rejected"]] == ["a.gif", "b.png"]
    assert snapshot(session_factory, store) == before
    assert broker.take("render") == []


def test_byte_limit_and_count_limit_per_concept(app, acme, store):
    settings = app.extensions["omnipersona"].settings
    app.extensions["omnipersona"].settings = settings.with_overrides(max_image_bytes=2000, max_images_per_concept=2)
    concept = new_concept(acme)
    noisy = io.BytesIO()
    Image.effect_noise((64, 64), 100).convert("RGB").save(noisy, format="PNG")
    response = upload(acme, concept["id"], [(noisy.getvalue(), "noise.png"), (png_bytes((1, 1, 1)), "a.png"),
                                            (png_bytes((1, 1, 1)), "a-again.png"), (png_bytes((2, 2, 2)), "b.png"),
                                            (png_bytes((3, 3, 3)), "c.png")])
    assert response.status_code == 201, response.json
    assert [(i["filename"], i.get("duplicate", False)) for i in response.json["images"]] == [
        ("a.png", False), ("a.png", True), ("b.png", False)]  # a duplicate answers with the stored image
    assert [(r["filename"], r["reason"].split(";")[-1].strip()) for r in response.json["rejected"]] == [
        ("noise.png", "the limit is 2000"), ("c.png", "the concept already holds its maximum of 2 images")]
    assert len(store.list_keys(f"{acme.tenant_id}/concepts/{concept['id']}/images/")) == 2


@pytest.mark.parametrize(("side", "reason"), [(2000, "pixels; the limit is 65536"),
                                              (20000, "decompression bomb")])
def test_decompression_bombs_are_refused_from_the_header(acme, side, reason):
    """A few KB that would decode to 4 MP (over the test's own limit) or 400 MP (over PIL's)."""
    concept = new_concept(acme)
    bomb = io.BytesIO()
    Image.new("1", (side, side)).save(bomb, format="PNG")
    assert len(bomb.getvalue()) < 100_000
    response = upload(acme, concept["id"], [(bomb.getvalue(), "bomb.png")])
    assert response.status_code == 400 and reason in response.json["error"]["message"]


def test_jpeg_with_exif_is_stored_rotated_and_without_metadata(acme, store):
    concept = new_concept(acme)
    response = upload(acme, concept["id"], [(jpeg_with_exif(), "phone.jpg")])
    assert response.status_code == 201, response.json
    image = response.json["images"][0]
    assert (image["width"], image["height"]) == (20, 40)  # rotated upright
    stored = store.get_bytes(f"{acme.tenant_id}/concepts/{concept['id']}/images/{image['sha256']}.png")
    with Image.open(io.BytesIO(stored)) as png:
        assert png.format == "PNG" and png.size == (20, 40)
        assert not png.getexif() and "exif" not in png.info and not png.text
        # orientation 6: the photo's left (blue) half ends up on top
        assert png.getpixel((10, 5))[2] > 200 and png.getpixel((10, 35))[0] > 200
    assert b"Exif" not in stored and b"GPS" not in stored


def test_training_needs_the_minimum_number_of_photos(app, acme, broker):
    settings = app.extensions["omnipersona"].settings
    app.extensions["omnipersona"].settings = settings.with_overrides(min_images_to_train=2)
    concept = new_concept(acme)
    upload(acme, concept["id"], [(png_bytes(), "a.png")])
    refused = acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 3})
    assert refused.status_code == 409 and refused.json["error"]["field"] == "images"
    upload(acme, concept["id"], [(png_bytes((9, 9, 9)), "b.png")])
    assert acme.post(f"/v1/concepts/{concept['id']}/train", json={"steps": 3}).status_code == 202


# -- captions --------------------------------------------------------------------------------------

def test_caption_edit_and_accept(acme, globex, session_factory):
    concept = new_concept(acme)
    image = upload(acme, concept["id"], [(png_bytes(), "a.png")]).json["images"][0]
    url = f"/v1/concepts/{concept['id']}/images/{image['id']}"
    assert acme.get(url).json["caption_state"] == "pending"
    assert globex.get(url).status_code == 404
    refused = patch(acme, url, {"accepted": True})
    assert refused.status_code == 400 and refused.json["error"]["field"] == "accepted"
    with session_factory() as session:  # as the captioning worker leaves it
        row = session.get(ConceptImage, uuid.UUID(image["id"]))
        row.caption, row.caption_state = "a brown dog on the sand", "suggested"
        session.commit()
    assert acme.get(url).json["caption"] == "a brown dog on the sand"
    unnamed = patch(acme, url, {"accepted": True})  # a caption training uses must name the concept
    assert unnamed.status_code == 400 and unnamed.json["error"]["field"] == "caption"
    edited = patch(acme, url, {"caption": "<maeve>, a brown dog on the sand", "accepted": True})
    assert edited.status_code == 200, edited.json
    assert (edited.json["caption"], edited.json["caption_state"]) == ("{c}, a brown dog on the sand", "accepted")
    assert patch(acme, url, {"accepted": False}).json["caption_state"] == "suggested"
    assert patch(globex, url, {"accepted": True}).status_code == 404
    other = new_concept(acme, "other")
    assert acme.get(f"/v1/concepts/{other['id']}/images/{image['id']}").status_code == 404
