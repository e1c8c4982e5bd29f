"""/v1/concepts: create (with facts), list, get, upload images, start training."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from ..context import json_body, principal, services, session
from ..idempotency import idempotent
from ..jobs.schemas import JobOut, TrainRequest, job_dict, training_recipe
from ..spec import documented, parse_body
from . import service
from .schemas import concept_dict, image_dict, parse_concept_create

bp = Blueprint("concepts", __name__, url_prefix="/v1/concepts")


@bp.post("")
@idempotent
def create() -> ResponseReturnValue:
    spec = parse_concept_create(json_body(), services().settings.max_facts)
    concept = service.create_concept(session(), principal().tenant_id, spec)
    return jsonify(concept_dict(concept)), 201


@bp.get("")
def list_() -> ResponseReturnValue:
    return jsonify({"concepts": [concept_dict(c) for c in service.list_concepts(session(), principal().tenant_id)]})


@bp.get("/<concept_id>")
def get(concept_id: str) -> ResponseReturnValue:
    return jsonify(concept_dict(service.get_concept(session(), principal().tenant_id, concept_id)))


@bp.post("/<concept_id>/images")
@idempotent
def upload_images(concept_id: str) -> ResponseReturnValue:
    concept = service.get_concept(session(), principal().tenant_id, concept_id)
    uploads = [service.Upload(f.filename, f.read()) for f in request.files.getlist("image")]
    settings = services().settings
    added = service.add_images(session(), services().store, concept, uploads, max_pixels=settings.max_image_pixels,
                               max_images=settings.max_images_per_concept)
    return jsonify({"images": [image_dict(img, duplicate) for img, duplicate in added]}), 201


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
