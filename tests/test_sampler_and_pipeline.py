"""KV-cached sampling == uncached, batched concepts == sequential, text decoding, recaptioning,
concept artifacts and backbone save/load."""

import pytest
import torch

from omnipersona.artifacts import ConceptMismatchError, load_concept, read_concept_meta, save_concept
from omnipersona.backbone import Backbone, BackboneError, load_backbone
from omnipersona.pipeline import GenerateRequest, OmniPipeline
from omnipersona.recaption import RecaptionTrace, intent_context
from omnipersona.sampler import ImageRequest, SamplerConfig, greedy_answers, sample_latents
from omnipersona.tokens import ConceptTokens

from .conftest import random_images


def _concept(tiny, name, seed):
    c = ConceptTokens(name, tiny.config.hidden_size)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        c.embeddings.copy_(torch.randn(c.embeddings.shape, generator=g))
        c.head_rows.copy_(torch.randn(c.head_rows.shape, generator=g))
    return c


@pytest.fixture()
def pipe(tiny):
    p = OmniPipeline(tiny)
    p.add_concept(_concept(tiny, "sks", 1))
    p.add_concept(_concept(tiny, "bo", 2))
    return p


def _requests(pipe, use_cache, edit=False):
    reqs = []
    for i, name in enumerate(["sks", "bo"]):
        sys = pipe._system_blocks(f"<{name}>")
        text = [pipe._text(f"a photo of <{name}>")]
        if edit:
            src = pipe._image_blocks(random_images(1, seed=10 + i)[0], vit=True, latent=True)
            reqs.append(ImageRequest(sys + src + text, sys + src, sys + text, seed=i,
                                     sampler=SamplerConfig.for_editing(num_steps=6, use_cache=use_cache)))
        else:
            reqs.append(ImageRequest(sys + text, [], seed=i, sampler=SamplerConfig(num_steps=6, use_cache=use_cache)))
    return reqs


@pytest.mark.parametrize("edit", [False, True])
def test_kv_cached_sampling_equals_uncached(pipe, edit):
    side = pipe._latent_grid()
    cached = sample_latents(pipe.runner, _requests(pipe, True, edit), side, side)
    uncached = sample_latents(pipe.runner, _requests(pipe, False, edit), side, side)
    assert cached.shape == (2, side * side, pipe.backbone.config.latent_token_dim)
    assert (cached - uncached).abs().max().item() < 1e-5
    assert (cached[0] - cached[1]).abs().max().item() > 1e-3  # different concepts and seeds differ


def test_batch_of_different_concepts_equals_sequential(pipe):
    side = pipe._latent_grid()
    reqs = _requests(pipe, True)
    batched = sample_latents(pipe.runner, reqs, side, side)
    for i, r in enumerate(reqs):
        alone = sample_latents(pipe.runner, [r], side, side)[0]
        assert (alone - batched[i]).abs().max().item() < 1e-5
    # and the public API: same seeds, same images
    gens = [GenerateRequest("a photo of <sks>", 1, SamplerConfig(num_steps=3)),
            GenerateRequest("a photo of <bo>", 2, SamplerConfig(num_steps=3))]
    together = pipe.generate_batch(gens, recaption=False)
    assert [r.image.size for r in together] == [(16, 16)] * 2


def test_per_sample_attention_equals_packed_attention(pipe):
    """A flow step attends per sample over padded caches ([n, P + n] each) instead of over the
    packed batch: same hidden states, for contexts of different lengths and an empty one."""
    side = pipe._latent_grid()
    contexts = [pipe._system_blocks("<sks>") + [pipe._text("a photo of <sks> at the beach today")],
                [], [pipe._text("<bo>")]]
    past, positions = pipe.runner.prefill(contexts)
    per_sample = past.per_sample(len(contexts))
    assert per_sample.valid.sum(1).tolist() == [int((past.sample_id == i).sum()) for i in range(3)]
    assert per_sample.valid.sum(1)[1] == 0
    g = torch.Generator().manual_seed(0)
    D = pipe.backbone.config.latent_token_dim
    b = pipe.runner.builder()
    for i in range(3):
        b.start_sample(positions[i])
        b.add_latent(torch.randn(side * side, D, generator=g), pipe.model.latent_position_ids(side, side),
                     t=0.5, noised=True)
    seq = b.build()
    packed, _ = pipe.runner.run(seq, past)
    grouped, _ = pipe.runner.run(seq, per_sample)
    assert grouped.shape == packed.shape
    assert (grouped - packed).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="same number of queries per sample"):
        pipe.runner.run(seq, past.per_sample(4))


def test_greedy_decoding_with_cache_matches_full_recompute(pipe):
    ctx = pipe._system_blocks("<sks>") + [pipe._text("what is the home of <sks> ?")]
    answer = greedy_answers(pipe.runner, [ctx], max_new_tokens=5)[0]
    # reference: rerun the whole sequence for every token and take the argmax at the end
    ids = [pipe.backbone.special_ids.im_start]
    ref = []
    for _ in range(len(answer)):
        b = pipe.runner.builder()
        b.start_sample()
        from omnipersona.sampler import add_blocks
        add_blocks(b, ctx)
        b.add_continuation(ids)
        seq = b.build()
        hidden, _ = pipe.runner.run(seq)
        tok = int(pipe.model.logits(hidden[-1:], pipe.bank.head_rows()).argmax())
        ref.append(tok)
        ids.append(tok)
    assert answer == ref
    # batched questions answer as they would alone
    other = pipe._system_blocks("<bo>") + [pipe._text("is <bo> here ?")]
    both = greedy_answers(pipe.runner, [ctx, other], max_new_tokens=5)
    assert both[0] == answer and both[1] == greedy_answers(pipe.runner, [other], max_new_tokens=5)[0]


def test_recaptioning_trace_and_switch(pipe):
    assert sum(b.startswith("question :") for b in intent_context("draw <x>")) == 6
    res = pipe.generate("draw <sks> at its home", seed=0, sampler=SamplerConfig(num_steps=2))
    assert isinstance(res.trace, RecaptionTrace) and res.trace.request == "draw <sks> at its home"
    assert "<sks>" in res.trace.prompt and res.prompt == res.trace.prompt
    off = OmniPipeline(pipe.backbone, recaption=False)
    off.add_concept(_concept(pipe.backbone, "sks", 1))
    res2 = off.generate("draw <sks> at its home", seed=0, sampler=SamplerConfig(num_steps=2))
    assert res2.trace is None and res2.prompt == "draw <sks> at its home"


def test_unknown_concept_in_prompt_is_refused(pipe, monkeypatch):
    with pytest.raises(ValueError, match="unknown concept <zed>"):
        pipe.ask("is <zed> here?")
    # a name the user got wrong is refused even where recaptioning would have rewritten it away
    written = iter(["question : what is the home of <x> ?", "prompt : draw <x> at the beach"])
    monkeypatch.setattr(pipe, "_complete", lambda blocks, max_new_tokens=24: next(written))
    monkeypatch.setattr(pipe, "ask", lambda q, image=None, max_new_tokens=32: "answer : the beach")
    with pytest.raises(ValueError, match="unknown concept <zed>"):
        pipe.generate("draw <sks> with <zed>", sampler=SamplerConfig(num_steps=2))


@pytest.mark.parametrize(("rewrite", "prompt"), [
    ("prompt : draw <x> at the friend of <zed>", "draw <sks> at the friend of"),
    ("prompt : a dog of <zed>", "draw <sks> at its home the friend of"),  # names no concept: request + answer
])
def test_recaptioning_drops_names_the_model_was_never_given(pipe, monkeypatch, rewrite, prompt):
    # An undertrained concept can make the model write the stages' placeholder or a concept that is
    # not loaded (seen in test_bench_run on run 7's weights: "... the friend of <x>"); the request must still render.
    written = iter(["question : what is the home of <x> ?", rewrite])
    monkeypatch.setattr(pipe, "_complete", lambda blocks, max_new_tokens=24: next(written))
    asked = []

    def ask(question, image=None, max_new_tokens=32):
        asked.append(question)
        return "answer : the friend of <x>"

    monkeypatch.setattr(pipe, "ask", ask)
    res = pipe.generate("draw <sks> at its home", seed=0, sampler=SamplerConfig(num_steps=2))
    assert asked == ["what is the home of <sks> ?"]
    assert res.trace.answer == "the friend of"
    assert res.trace.prompt == res.prompt == prompt
    assert res.image.size == (pipe.backbone.config.image_size,) * 2


def test_system_prompt_and_tokens(tiny):
    c = ConceptTokens("sks", tiny.config.hidden_size)
    assert c.system_prompt().startswith("<sks> is <und_1:sks><und_2:sks>")
    assert c.system_prompt().endswith("<gen_16:sks>.") and len(c.token_strings) == 33
    bank = tiny.new_bank()
    bank.add(c)
    ids = bank.encode(c.system_prompt())
    V = tiny.config.llm["vocab_size"]
    assert sorted(i - V for i in ids if i >= V) == list(range(33))
    assert len(bank.gen_token_ids()) == 16
    assert "<sks>" not in tiny.tokenizer.get_vocab()  # the backbone's tokenizer is left alone


def test_concept_artifact_round_trip_and_mismatch(tiny, tmp_path):
    c = _concept(tiny, "sks", 3)
    save_concept(c, tmp_path / "sks", tiny.fingerprint(), metrics={"final_ce": 0.5})
    meta = read_concept_meta(tmp_path / "sks")
    assert meta["tokens"][0] == "<sks>" and meta["method"] == "decoupled" and meta["metrics"]["final_ce"] == 0.5
    loaded = load_concept(tmp_path / "sks", tiny.fingerprint())
    assert torch.equal(loaded.embeddings, c.embeddings) and torch.equal(loaded.head_rows, c.head_rows)
    other = Backbone.from_preset("tiny", seed=1)
    assert other.fingerprint() != tiny.fingerprint()
    with pytest.raises(ConceptMismatchError, match="trained on backbone"):
        OmniPipeline(other).load_concept(tmp_path / "sks")


def test_backbone_save_load_round_trip(tiny, tmp_path):
    tiny.save(tmp_path / "bb")
    loaded = load_backbone(tmp_path / "bb")
    assert loaded.fingerprint() == tiny.fingerprint()
    assert loaded.tokenizer.get_vocab() == tiny.tokenizer.get_vocab()
    with pytest.raises(BackboneError):
        load_backbone("nope")
    with pytest.raises(BackboneError):
        load_backbone(tmp_path)  # a folder that is not a backbone
