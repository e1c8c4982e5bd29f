"""/v1/concepts/<id>/versions: a concept's trained versions with their metrics, and presigned,
expiring download URLs for a version's checkpoint (`tokens.safetensors`, `concept.json`)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from ..concepts import service as concepts
from ..context import principal, services, session
from ..spec import documented, parse_model
from . import service
from .schemas import DownloadQuery, VersionDownload, VersionList, VersionOut, version_out

bp = Blueprint("versions", __name__, url_prefix="/v1/concepts")


@bp.get("/<concept_id>/versions")
@documented(response=VersionList, errors=(404,))
def list_(concept_id: str) -> ResponseReturnValue:
    concept = concepts.get_concept(session(), principal().tenant_id, concept_id)
    return jsonify({"versions": [version_out(v, concept.current_version_id)
                                 for v in service.list_versions(session(), concept)]})


@bp.get("/<concept_id>/versions/<version_id>")
@documented(response=VersionOut, errors=(404,))
def get(concept_id: str, version_id: str) -> ResponseReturnValue:
    concept = concepts.get_concept(session(), principal().tenant_id, concept_id)
    return jsonify(version_out(service.get_version(session(), concept, version_id), concept.current_version_id))


@bp.get("/<concept_id>/versions/<version_id>/download")
@documented(response=VersionDownload, errors=(400, 404), query=DownloadQuery)
def download(concept_id: str, version_id: str) -> ResponseReturnValue:
    query = parse_model(DownloadQuery, request.args.to_dict(), "query")
    expires_in = service.bounded_expiry(query.expires_in, services().settings)
    concept = concepts.get_concept(session(), principal().tenant_id, concept_id)
    version = service.get_version(session(), concept, version_id)
    files = service.download_urls(services().store, version, expires_in)
    return jsonify({"version_id": str(version.id), "files": files, "expires_in": expires_in,
                    "expires_at": service.presign_expiry(expires_in)})
