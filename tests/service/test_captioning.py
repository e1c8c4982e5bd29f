"""The captioning task in-process (SQLite made by the migrations, local store, `tiny` backbone):
an uploaded photo gets a suggested caption from the model, once; a tenant's edit is never
overwritten; a photo that cannot be read is marked failed; training takes accepted captions only."""

from __future__ import annotations

import uuid

import pytest

from api.admin import create_tenant, migrate
from api.celery_config import CAPTION_TASK
from api.concepts import service as concepts
from api.concepts.schemas import ConceptCreate
from api.db import make_engine, make_session_factory
from api.models import Concept, ConceptImage
from api.settings import Settings
from api.storage import LocalStore
from workers.captioning import accepted_captions, caption_image
from workers.runtime import WorkerRuntime

from .conftest import MemoryBroker, png_bytes


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> WorkerRuntime:
    data = tmp_path_factory.mktemp("captions")
    settings = Settings.from_env({"OMNI_DATA_DIR": str(data), "BROKER_URL": "memory://", "OMNI_BACKBONE": "tiny"})
    migrate(settings)
    return WorkerRuntime(settings, make_session_factory(make_engine(settings.database_url)),
                         LocalStore(settings.local_store_dir))


def _concept_with_photos(rt: WorkerRuntime, broker: MemoryBroker, n: int = 3) -> tuple[uuid.UUID, list[uuid.UUID]]:
    with rt.session_factory() as session:
        tenant, _ = create_tenant(session, f"t{uuid.uuid4().hex[:8]}")
        session.commit()
        concept = concepts.create_concept(session, tenant.id, ConceptCreate("maeve", []))
        uploads = [concepts.Upload(f"{i}.png", png_bytes((60 * i, 90, 200 - 50 * i))) for i in range(n)]
        result = concepts.add_images(session, rt.store, concept, uploads, max_pixels=10**6, max_images=10,
                                     publisher=broker.publisher)
        return concept.id, [image.id for image, _ in result.added]


def _image(rt: WorkerRuntime, image_id: uuid.UUID) -> ConceptImage:
    with rt.session_factory() as session:
        return session.get(ConceptImage, image_id)


def test_uploaded_photos_get_one_model_caption_each(rt):
    broker = MemoryBroker()
    _, image_ids = _concept_with_photos(rt, broker, n=2)
    assert broker.take("render") == [(CAPTION_TASK, [str(i)]) for i in image_ids]
    assert caption_image(rt, image_ids[0]) == "suggested"
    first = _image(rt, image_ids[0])
    assert first.caption_state == "suggested"
    assert first.caption is None or ("<" not in first.caption and 0 < len(first.caption) <= 500)
    assert caption_image(rt, image_ids[0]) == "skipped"  # a second delivery changes nothing
    assert caption_image(rt, uuid.uuid4()) == "skipped"  # an image deleted meanwhile


def test_a_tenants_edit_is_not_overwritten_and_unreadable_photos_fail(rt):
    _, (edited_id, broken_id) = _concept_with_photos(rt, MemoryBroker(), n=2)
    with rt.session_factory() as session:
        edited = session.get(ConceptImage, edited_id)
        edited.caption, edited.caption_state = "{c} on the beach", "accepted"
        rt.store.delete(session.get(ConceptImage, broken_id).object_key)
        session.commit()
    assert caption_image(rt, edited_id) == "skipped"
    assert (_image(rt, edited_id).caption, _image(rt, edited_id).caption_state) == ("{c} on the beach", "accepted")
    assert caption_image(rt, broken_id) == "failed"
    assert _image(rt, broken_id).caption_state == "failed"


def test_training_data_takes_accepted_captions_in_image_order(rt):
    concept_id, image_ids = _concept_with_photos(rt, MemoryBroker(), n=3)
    with rt.session_factory() as session:
        assert accepted_captions(session.get(Concept, concept_id)) is None
        states = [("{c} asleep", "accepted"), ("a suggestion", "suggested"), ("{c} running", "accepted")]
        for image_id, (caption, state) in zip(image_ids, states, strict=True):
            image = session.get(ConceptImage, image_id)
            image.caption, image.caption_state = caption, state
        session.commit()
        session.expire_all()
        assert accepted_captions(session.get(Concept, concept_id)) == ["{c} asleep", None, "{c} running"]
