"""ask / generate / edit on a concept, generate naming several of the tenant's concepts (queued on
the `render` queue), and their results with presigned image URLs."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from ..concepts.service import get_concept
from ..context import json_body, principal, services, session
from ..errors import ApiError, NotFound
from ..idempotency import idempotent
from ..models import Job, Render
from ..spec import documented, parse_body, parse_model
from ..storage import ObjectNotFound
from . import service
from .schemas import (
    RENDER_BODIES,
    AskBody,
    ConceptGenerateBody,
    GenerateBody,
    RenderCreate,
    RenderOut,
    concept_names_in,
    parse_render_create,
    render_dict,
)

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
    # Types and ranges by the documented model (form text "4" reads as 4); the concept's name in the
    # text and the settings' bounds by parse_render_create.
    fields = parse_model(RENDER_BODIES[kind], fields).model_dump(exclude_none=True)
    settings = services().settings
    spec = parse_render_create(kind, fields, image, concept.identifier,
                               default_steps=settings.default_sample_steps, max_steps=settings.max_sample_steps,
                               max_size=settings.max_render_size)
    render, job = service.start_render(session(), services().store, services().publisher, concept, spec,
                                       max_pixels=settings.max_image_pixels)
    return _out(render, job), 202


def _out(render: Render, job: Job) -> Response:
    links = service.image_links(services().store, render, services().settings.presigned_url_seconds)
    return jsonify(render_dict(render, job, links))


RENDER_ERRORS = (400, 401, 404, 409, 413, 422, 429)


@bp.post("/v1/concepts/<concept_id>/ask")
@documented(request=AskBody, response=RenderOut, status=202, errors=RENDER_ERRORS,
            multipart={"question": "string", "image": "file"}, multipart_required=("question",))
@idempotent
def ask(concept_id: str) -> ResponseReturnValue:
    return _start(concept_id, "ask")


@bp.post("/v1/concepts/<concept_id>/generate")
@documented(request=ConceptGenerateBody, response=RenderOut, status=202, errors=RENDER_ERRORS)
@idempotent
def generate(concept_id: str) -> ResponseReturnValue:
    return _start(concept_id, "generate")


@bp.post("/v1/concepts/<concept_id>/edit")
@documented(response=RenderOut, status=202, errors=RENDER_ERRORS,
            multipart={"instruction": "string", "image": "file", "seed": "string", "steps": "string",
                       "guidance": "string", "size": "string"}, multipart_required=("instruction", "image"))
@idempotent
def edit(concept_id: str) -> ResponseReturnValue:
    return _start(concept_id, "edit")


@bp.post("/v1/renders/generate")
@documented(request=GenerateBody, response=RenderOut, status=202, errors=(400, 401, 409, 422, 429))
@idempotent
def generate_many() -> ResponseReturnValue:
    body = parse_body(GenerateBody)
    settings = services().settings
    text, names = concept_names_in(body.prompt, "prompt")
    steps = settings.default_sample_steps if body.steps is None else body.steps
    if steps > settings.max_sample_steps:
        raise ApiError("steps", f"must be an integer from 1 to {settings.max_sample_steps}")
    if body.size is not None and body.size > settings.max_render_size:
        raise ApiError("size", f"must be at most {settings.max_render_size}")
    tenant_id = principal().tenant_id
    concepts = service.resolve_concepts(session(), tenant_id, names, "prompt")
    spec = RenderCreate("generate", text, body.seed, steps, None, body.guidance, body.size, body.num_images)
    render, job = service.start_generate(session(), services().publisher, tenant_id, concepts, spec)
    return _out(render, job), 202


@bp.get("/v1/renders/<render_id>")
@documented(response=RenderOut, errors=(401, 404))
def get(render_id: str) -> ResponseReturnValue:
    render, job = service.get_render(session(), principal().tenant_id, render_id)
    return _out(render, job)


@bp.get("/v1/renders/<render_id>/image")
@documented(media_type="image/png", errors=(404,))
def image(render_id: str) -> ResponseReturnValue:
    render, _ = service.get_render(session(), principal().tenant_id, render_id)
    if render.output_object_key is None:
        raise NotFound("image", "this render has no image (yet)")
    try:
        data = services().store.get_bytes(render.output_object_key)
    except ObjectNotFound as exc:
        raise NotFound("image", "the image is missing from the object store") from exc
    return Response(data, mimetype="image/png")
