"""ask / generate / edit on a concept (queued on the `render` queue), and their results."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from ..concepts.service import get_concept
from ..context import json_body, principal, services, session
from ..errors import ApiError, NotFound
from ..idempotency import idempotent
from ..storage import ObjectNotFound
from . import service
from .schemas import parse_render_create, render_dict

bp = Blueprint("renders", __name__)


def _start(concept_id: str, kind: str) -> ResponseReturnValue:
    concept = get_concept(session(), principal().tenant_id, concept_id)
    if request.mimetype == "multipart/form-data":
        fields = request.form.to_dict()
        files = request.files.getlist("image")
        if len(files) > 1:
            raise ApiError("image", "send one image")
        image = files[0].read() if files else None
    else:
        fields = json_body()
        image = None
    settings = services().settings
    spec = parse_render_create(kind, fields, image, concept.identifier,
                               default_steps=settings.default_sample_steps, max_steps=settings.max_sample_steps)
    render, job = service.start_render(session(), services().store, services().publisher, concept, spec,
                                       max_pixels=settings.max_image_pixels)
    return jsonify(render_dict(render, job)), 202


@bp.post("/v1/concepts/<concept_id>/ask")
@idempotent
def ask(concept_id: str) -> ResponseReturnValue:
    return _start(concept_id, "ask")


@bp.post("/v1/concepts/<concept_id>/generate")
@idempotent
def generate(concept_id: str) -> ResponseReturnValue:
    return _start(concept_id, "generate")


@bp.post("/v1/concepts/<concept_id>/edit")
@idempotent
def edit(concept_id: str) -> ResponseReturnValue:
    return _start(concept_id, "edit")


@bp.get("/v1/renders/<render_id>")
def get(render_id: str) -> ResponseReturnValue:
    render, job = service.get_render(session(), principal().tenant_id, render_id)
    return jsonify(render_dict(render, job))


@bp.get("/v1/renders/<render_id>/image")
def image(render_id: str) -> ResponseReturnValue:
    render, _ = service.get_render(session(), principal().tenant_id, render_id)
    if render.output_object_key is None:
        raise NotFound("image", "this render has no image (yet)")
    try:
        data = services().store.get_bytes(render.output_object_key)
    except ObjectNotFound as exc:
        raise NotFound("image", "the image is missing from the object store") from exc
    return Response(data, mimetype="image/png")
