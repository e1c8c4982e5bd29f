"""/v1/concepts: create (with facts), list (paginated, filtered), get, update facts, delete (rows and
stored objects), upload images (partial acceptance), image captions, start training."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from ..context import json_body, principal, services, session
from ..idempotency import idempotent
from ..jobs.schemas import JobOut, TrainRequest, job_dict, training_recipe
from ..spec import documented, parse_body, parse_model
from . import service
from .schemas import (
    ConceptCreateIn,
    ConceptDeleted,
    ConceptListQuery,
    ConceptOut,
    ConceptPage,
    ConceptPatch,
    ImageOut,
    ImagePatch,
    UploadOut,
    concept_dict,
    image_dict,
    parse_concept_create,
    parse_facts,
)

bp = Blueprint("concepts", __name__, url_prefix="/v1/concepts")


@bp.post("")
@documented(request=ConceptCreateIn, response=ConceptOut, status=201, errors=(400, 401, 409, 422, 429))
@idempotent
def create() -> ResponseReturnValue:
    spec = parse_concept_create(json_body(), services().settings.max_facts)
    concept = service.create_concept(session(), principal().tenant_id, spec)
    return jsonify(concept_dict(concept)), 201


@bp.get("")
@documented(response=ConceptPage, query=ConceptListQuery, errors=(400, 401, 429))
def list_() -> ResponseReturnValue:
    query = parse_model(ConceptListQuery, request.args.to_dict(), root="query")
    page, next_cursor = service.list_concepts_page(session(), principal().tenant_id, status=query.status,
                                                   name_prefix=query.name, limit=query.limit, cursor=query.cursor)
    return jsonify({"concepts": [concept_dict(c) for c in page], "next_cursor": next_cursor})


@bp.get("/<concept_id>")
@documented(response=ConceptOut, errors=(401, 404, 429))
def get(concept_id: str) -> ResponseReturnValue:
    return jsonify(concept_dict(service.get_concept(session(), principal().tenant_id, concept_id)))


@bp.patch("/<concept_id>")
@documented(request=ConceptPatch, response=ConceptOut, errors=(400, 401, 404, 429))
def update(concept_id: str) -> ResponseReturnValue:
    body = parse_body(ConceptPatch)
    concept = service.get_concept(session(), principal().tenant_id, concept_id)
    facts = parse_facts(body.facts, concept.identifier, services().settings.max_facts)
    return jsonify(concept_dict(service.replace_facts(session(), concept, facts)))


@bp.delete("/<concept_id>")
@documented(response=ConceptDeleted, errors=(401, 404, 409, 429))
def delete(concept_id: str) -> ResponseReturnValue:
    concept = service.get_concept(session(), principal().tenant_id, concept_id)
    removed = service.delete_concept(session(), services().store, concept)
    return jsonify({"id": concept_id, "deleted": True, "objects_removed": removed})


@bp.post("/<concept_id>/images")
@documented(response=UploadOut, status=201, multipart={"image": "files"}, multipart_required=("image",),
            errors=(400, 401, 404, 409, 413, 422, 429))
@idempotent
def upload_images(concept_id: str) -> ResponseReturnValue:
    concept = service.get_concept(session(), principal().tenant_id, concept_id)
    uploads = [service.Upload(f.filename, f.read()) for f in request.files.getlist("image")]
    settings = services().settings
    result = service.add_images(session(), services().store, concept, uploads, max_pixels=settings.max_image_pixels,
                                max_images=settings.max_images_per_concept, max_bytes=settings.max_image_bytes,
                                publisher=services().publisher)
    return jsonify({"images": [image_dict(img, duplicate) for img, duplicate in result.added],
                    "rejected": [r.as_dict() for r in result.rejected]}), 201


@bp.get("/<concept_id>/images/<image_id>")
@documented(response=ImageOut, errors=(401, 404, 429))
def get_image(concept_id: str, image_id: str) -> ResponseReturnValue:
    concept = service.get_concept(session(), principal().tenant_id, concept_id)
    return jsonify(image_dict(service.get_image(session(), concept, image_id)))


@bp.patch("/<concept_id>/images/<image_id>")
@documented(request=ImagePatch, response=ImageOut, errors=(400, 401, 404, 429))
def update_image(concept_id: str, image_id: str) -> ResponseReturnValue:
    body = parse_body(ImagePatch)
    concept = service.get_concept(session(), principal().tenant_id, concept_id)
    image = service.get_image(session(), concept, image_id)
    return jsonify(image_dict(service.update_caption(session(), concept, image, body.caption, body.accepted)))


@bp.post("/<concept_id>/train")
@documented(request=TrainRequest, response=JobOut, status=202, errors=(400, 404, 409, 422, 429))
@idempotent
def train(concept_id: str) -> ResponseReturnValue:
    settings = services().settings
    recipe = training_recipe(parse_body(TrainRequest), settings)  # recipe overrides within bounds
    concept = service.get_concept(session(), principal().tenant_id, concept_id)
    job = service.start_training(session(), services().publisher, concept, recipe["steps"], settings.backbone,
                                 recipe)
    return jsonify(job_dict(job)), 202
