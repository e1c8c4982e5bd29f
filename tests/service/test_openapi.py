"""GET /v1/openapi.json: generated from the routes, every /v1 route documented, and real answers of
the API validate against what the document says they are."""

from __future__ import annotations

import io
from typing import Any

import jsonschema_rs
from flask import Flask
from openapi_spec_validator import validate as validate_openapi
from werkzeug.test import TestResponse

from api.openapi import build_document, openapi_path, undocumented_routes
from api.spec import documented

from .conftest import TenantClient, add_version, create_concept, png_bytes


def fetch_document(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/v1/openapi.json")  # no API key: the document is public
    assert response.status_code == 200, response.json
    assert response.mimetype == "application/json"
    return response.json


def assert_conforms(document: dict[str, Any], path: str, method: str, response: TestResponse) -> None:
    """The response's status is documented for the operation and its JSON body matches the schema."""
    responses = document["paths"][path][method]["responses"]
    assert str(response.status_code) in responses, (path, method, response.status_code, response.json)
    content = responses[str(response.status_code)].get("content", {})
    if "application/json" not in content:
        return
    assert response.mimetype == "application/json"
    schema = content["application/json"]["schema"] | {"components": document["components"]}
    jsonschema_rs.Draft202012Validator(schema).validate(response.json)


def test_every_v1_route_is_documented_with_its_methods(app: Flask) -> None:
    assert undocumented_routes(app) == []
    document = fetch_document(app)
    expected = {(openapi_path(rule), method.lower()) for rule in app.url_map.iter_rules()
                if rule.rule.startswith("/v1/") for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented_ops = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented_ops == expected
    assert document["openapi"] == "3.1.0"
    validate_openapi(document)  # a valid OpenAPI 3.1 document, by the specification's own schema
    assert ("/v1/concepts/{concept_id}/images/{image_id}", "patch") in documented_ops
    assert not any(path.startswith(("/admin", "/metrics", "/healthz")) for path, _ in documented_ops)


def test_an_undocumented_route_is_listed(app: Flask) -> None:
    @app.get("/v1/forgotten")
    def forgotten() -> str:
        return "x"

    @app.get("/v1/remembered")
    @documented(errors=(404,))
    def remembered() -> str:
        return "x"

    assert undocumented_routes(app) == ["GET /v1/forgotten"]


def test_operations_carry_bodies_queries_security_and_shared_errors(app: Flask) -> None:
    document = fetch_document(app)
    paths = document["paths"]
    schemas = document["components"]["schemas"]
    assert schemas["ErrorResponse"]["properties"]["error"] == {"$ref": "#/components/schemas/ErrorDetail"}
    assert set(schemas["ErrorDetail"]["required"]) == {"code", "field", "message"}
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKeyHeader"}

    create = paths["/v1/concepts"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ConceptCreateIn"}
    assert set(create["responses"]) == {"201", "400", "401", "409", "413", "422", "429"}
    assert "security" not in create  # the document-wide API key applies
    assert create["responses"]["429"]["headers"]["Retry-After"]["schema"]["type"] == "integer"
    assert [p["name"] for p in create["parameters"]] == ["Idempotency-Key"]

    listing = paths["/v1/concepts"]["get"]
    query = {p["name"]: p for p in listing["parameters"] if p["in"] == "query"}
    assert set(query) == {"status", "name", "limit", "cursor"}
    assert query["limit"]["schema"] == {"default": 50, "maximum": 100, "minimum": 1, "title": "Limit",
                                        "type": "integer"}
    assert query["status"]["schema"]["enum"] == ["draft", "training", "ready", "failed"]

    upload = paths["/v1/concepts/{concept_id}/images"]["post"]
    assert upload["parameters"][0] == {"name": "concept_id", "in": "path", "required": True,
                                       "schema": {"type": "string", "minLength": 1}}
    form = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["image"] == {"type": "array", "items": {"type": "string", "format": "binary"}}

    edit = paths["/v1/concepts/{concept_id}/edit"]["post"]["requestBody"]
    assert edit["required"] is True
    assert edit["content"]["multipart/form-data"]["schema"]["required"] == ["instruction", "image"]

    image = paths["/v1/renders/{render_id}/image"]["get"]["responses"]["200"]
    assert set(image["content"]) == {"image/png"}
    assert paths["/v1/openapi.json"]["get"]["security"] == []
    assert paths["/v1/objects/{key}"]["get"]["security"] == []
    assert "401" not in paths["/v1/objects/{key}"]["get"]["responses"]
    assert set(paths["/v1/webhooks/{webhook_id}"]["delete"]["responses"]) == {"204", "400", "401", "404", "429"}
    # Two models named VersionOut (a concept's current version, a version listed on its own) stay apart.
    assert {"api__concepts__schemas__VersionOut", "api__versions__schemas__VersionOut"} <= set(schemas)


def test_every_reference_resolves(app: Flask) -> None:
    document = fetch_document(app)
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    names = {ref.removeprefix("#/components/schemas/") for ref in refs}
    assert len(refs) > 50
    assert all(ref.startswith("#/components/schemas/") for ref in refs)
    assert names <= set(document["components"]["schemas"])


def test_the_document_is_the_one_generated_from_the_app(app: Flask) -> None:
    assert fetch_document(app) == build_document(app, app.config["OMNI_PUBLIC_ENDPOINTS"])


def test_real_answers_validate_against_the_document(app: Flask, acme: TenantClient, session_factory) -> None:
    """A walk through the main routes, success and error answers alike, each checked against the
    schema the document gives for its status."""
    document = fetch_document(app)
    concept = create_concept(acme)
    concept_id = concept["id"]
    checks: list[tuple[str, str, TestResponse]] = [
        ("/v1/concepts", "get", acme.get("/v1/concepts?limit=5")),
        ("/v1/concepts/{concept_id}", "get", acme.get(f"/v1/concepts/{concept_id}")),
        ("/v1/concepts/{concept_id}", "get", acme.get("/v1/concepts/not-an-id")),
        ("/v1/concepts", "post", acme.post("/v1/concepts", json={"name": "Bad Name"})),
        ("/v1/concepts", "post", acme.post("/v1/concepts", json={"name": "maeve"})),
        ("/v1/concepts", "get", acme.get("/v1/concepts?limit=0")),
        ("/v1/concepts", "get", app.test_client().get("/v1/concepts")),
        ("/v1/me", "get", acme.get("/v1/me")),
        ("/v1/usage", "get", acme.get("/v1/usage")),
    ]
    upload = acme.post(f"/v1/concepts/{concept_id}/images",
                       data={"image": [(io.BytesIO(png_bytes()), "a.png"), (io.BytesIO(b"nope"), "b.png")]},
                       content_type="multipart/form-data")
    assert upload.status_code == 201 and len(upload.json["rejected"]) == 1
    checks.append(("/v1/concepts/{concept_id}/images", "post", upload))
    checks.append(("/v1/concepts/{concept_id}", "get", acme.get(f"/v1/concepts/{concept_id}")))
    train = acme.post(f"/v1/concepts/{concept_id}/train", json={"recipe": "mock"})
    checks.append(("/v1/concepts/{concept_id}/train", "post", train))
    checks.append(("/v1/jobs/{job_id}", "get", acme.get(f"/v1/jobs/{train.json['id']}")))
    checks.append(("/v1/jobs", "get", acme.get("/v1/jobs")))
    checks.append(("/v1/jobs/{job_id}/cancel", "post", acme.post(f"/v1/jobs/{train.json['id']}/cancel")))

    other = acme.post("/v1/concepts", json={"name": "rex"}).json
    add_version(session_factory, acme.tenant_id, other["id"])
    generate = acme.post(f"/v1/concepts/{other['id']}/generate", json={"prompt": "<rex> at home", "size": 32})
    assert generate.status_code == 202, generate.json
    checks.append(("/v1/concepts/{concept_id}/generate", "post", generate))
    checks.append(("/v1/renders/{render_id}", "get", acme.get(f"/v1/renders/{generate.json['id']}")))
    checks.append(("/v1/renders/{render_id}/image", "get", acme.get(f"/v1/renders/{generate.json['id']}/image")))
    checks.append(("/v1/concepts/{concept_id}/versions", "get", acme.get(f"/v1/concepts/{other['id']}/versions")))
    ask = acme.post(f"/v1/concepts/{other['id']}/ask", data={"question": "What is <rex>?"},
                    content_type="multipart/form-data")
    assert ask.status_code == 202, ask.json
    checks.append(("/v1/concepts/{concept_id}/ask", "post", ask))
    bad_seed = acme.post(f"/v1/concepts/{other['id']}/edit",
                         data={"instruction": "make <rex> blue", "seed": "many",
                               "image": (io.BytesIO(png_bytes()), "src.png")}, content_type="multipart/form-data")
    assert bad_seed.status_code == 400 and bad_seed.json["error"]["field"] == "seed"
    checks.append(("/v1/concepts/{concept_id}/edit", "post", bad_seed))
    checks.append(("/v1/batches", "get", acme.get("/v1/batches")))
    checks.append(("/v1/webhooks", "get", acme.get("/v1/webhooks")))
    delete = acme.client.delete(f"/v1/concepts/{concept_id}", headers={"Authorization": f"Bearer {acme.api_key}"})
    assert delete.status_code == 200, delete.json
    checks.append(("/v1/concepts/{concept_id}", "delete", delete))
    statuses = [response.status_code for _, _, response in checks]
    assert statuses.count(200) >= 12 and 400 in statuses and 401 in statuses and 404 in statuses
    for path, method, response in checks:
        assert_conforms(document, path, method, response)
