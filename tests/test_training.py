"""train_concept: frozen backbone, falling loss, cached encoders, progress, cancel, exact resume."""

import torch

from omnipersona.trainer import TrainRecipe, latest_step, train_concept


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_backbone_is_frozen_and_bit_identical_after_training(tiny, concept_data):
    before = _state(tiny.model)
    train_concept(tiny, concept_data, "sks", TrainRecipe(steps=5, batch_size=4))
    after = tiny.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad and p.grad is None for p in tiny.model.parameters())


def test_loss_falls_on_a_fixed_concept(tiny, concept_data):
    result = train_concept(tiny, concept_data, "sks", TrainRecipe(steps=80, batch_size=8, lr=2e-2, seed=3))
    first = sum(h["ce"] for h in result.history[:10]) / 10
    last = sum(h["ce"] for h in result.history[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    assert result.concept.embeddings.grad is not None  # only the concept rows got gradients
    assert result.metrics["steps"] == 80


def test_frozen_encoders_run_once_per_image(tiny, concept_data, monkeypatch):
    calls = {"vit": 0, "vae": 0}
    vit, vae = tiny.model.vit_tokens, tiny.model.encode_latents

    def count_vit(x):
        calls["vit"] += x.shape[0]
        return vit(x)

    def count_vae(x):
        calls["vae"] += x.shape[0]
        return vae(x)

    monkeypatch.setattr(tiny.model, "vit_tokens", count_vit)
    monkeypatch.setattr(tiny.model, "encode_latents", count_vae)
    train_concept(tiny, concept_data, "sks", TrainRecipe(steps=12, batch_size=8))
    n_images = len(concept_data.images) + len(concept_data.negatives) + 2 * len(concept_data.edits)
    assert calls == {"vit": n_images, "vae": n_images}


def test_progress_and_cooperative_cancel(tiny, concept_data, tmp_path):
    seen = []
    result = train_concept(
        tiny, concept_data, "sks", TrainRecipe(steps=20, batch_size=2),
        progress=lambda step, total, parts: seen.append((step, total, set(parts))),
        should_stop=lambda: len(seen) >= 7, checkpoint_dir=tmp_path,
    )
    assert result.stopped and result.steps_done == 7
    assert [s for s, _, _ in seen] == list(range(1, 8)) and {t for _, t, _ in seen} == {20}
    assert seen[0][2] == {"ce", "gen", "edit", "total"}
    assert latest_step(tmp_path) == 7  # cancellation keeps the work done so far


def test_resume_equals_uninterrupted_run(tiny, concept_data, tmp_path):
    recipe = TrainRecipe(steps=12, batch_size=4, seed=5, checkpoint_every=4)
    full = train_concept(tiny, concept_data, "sks", recipe)

    steps = []
    first = train_concept(tiny, concept_data, "sks", recipe, checkpoint_dir=tmp_path,
                          progress=lambda s, t, p: steps.append(s), should_stop=lambda: len(steps) >= 6)
    assert first.stopped and latest_step(tmp_path) == 6
    resumed = train_concept(tiny, concept_data, "sks", recipe, checkpoint_dir=tmp_path)
    assert resumed.resumed_from == 6 and resumed.steps_done == 12
    assert torch.equal(resumed.concept.embeddings, full.concept.embeddings)
    assert torch.equal(resumed.concept.head_rows, full.concept.head_rows)
    assert [h["total"] for h in resumed.history] == [h["total"] for h in full.history]


def test_same_seed_same_tokens_and_warm_start(tiny, concept_data):
    a = train_concept(tiny, concept_data, "sks", TrainRecipe(steps=4, batch_size=4, seed=9))
    b = train_concept(tiny, concept_data, "sks", TrainRecipe(steps=4, batch_size=4, seed=9))
    assert torch.equal(a.concept.embeddings, b.concept.embeddings)
    warm = train_concept(tiny, concept_data, "sks", TrainRecipe(steps=0), init=a.concept)
    assert torch.equal(warm.concept.embeddings, a.concept.embeddings)
