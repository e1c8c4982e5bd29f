"""Auto-captions: after an upload, each new photo is captioned by the model itself (the
understanding path of the base backbone, asked the training data's caption question). The result
is stored on the image as an editable suggestion (`caption_state` pending -> suggested, or failed);
training uses a caption only once the tenant has accepted it (`PATCH .../images/<id>`).

The message carries the image id and the image row is the truth, so a second delivery, or one
arriving after the tenant already edited the caption, changes nothing."""

from __future__ import annotations

import io
import logging
import uuid

from celery import Celery
from sqlalchemy import update

from api.celery_config import CAPTION_TASK
from api.models import Concept, ConceptImage

from .runtime import WorkerRuntime, runtime

log = logging.getLogger(__name__)

MAX_CAPTION_CHARS = 500


def _set_caption(rt: WorkerRuntime, image_id: uuid.UUID, **values: object) -> bool:
    """Only a caption still `pending` is written: a tenant's own edit is never overwritten."""
    with rt.session_factory() as session:
        result = session.execute(update(ConceptImage).where(
            ConceptImage.id == image_id, ConceptImage.caption_state == "pending").values(**values))
        session.commit()
        return result.rowcount == 1  # type: ignore[attr-defined]


def caption_image(rt: WorkerRuntime, image_id: uuid.UUID) -> str:
    from PIL import Image

    from omnipersona.data import CAPTION_QUESTION
    from omnipersona.pipeline import OmniPipeline

    with rt.session_factory() as session:
        image = session.get(ConceptImage, image_id)
        if image is None or image.caption_state != "pending":  # deleted, or already captioned / edited
            return "skipped"
        object_key = image.object_key
    try:
        photo = Image.open(io.BytesIO(rt.store.get_bytes(object_key)), formats=["PNG"]).convert("RGB")
        text = OmniPipeline(rt.backbone()).ask(CAPTION_QUESTION, photo).strip()[:MAX_CAPTION_CHARS]
    except Exception:
        log.exception("captioning image %s failed", image_id)
        _set_caption(rt, image_id, caption_state="failed")
        return "failed"
    # "<", ">" would make the text unusable as a caption (only the concept's identifier may appear).
    text = text.replace("<", "").replace(">", "").strip()
    return "suggested" if _set_caption(rt, image_id, caption=text or None, caption_state="suggested") else "skipped"


def accepted_captions(concept: Concept) -> list[str | None] | None:
    """One entry per image of the concept, in the order training loads them: the accepted caption
    (with `{c}` for the concept) or None; None overall when no caption was accepted."""
    captions = [image.caption if image.caption_state == "accepted" else None for image in concept.images]
    return captions if any(captions) else None


def register_caption_task(app: Celery) -> None:
    @app.task(name=CAPTION_TASK)
    def caption(image_id: str) -> str:
        try:
            parsed = uuid.UUID(image_id)
        except (ValueError, TypeError):
            log.error("dropping a caption message with a malformed image id")
            return "skipped"
        return caption_image(runtime(), parsed)
