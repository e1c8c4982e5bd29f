"""Experiment (docs/benchmark.md): which part of the recipe's mix undoes what one-object
text-to-image batches teach? `experiment_marking_words.py alternate` learned the marking word at a
tenth of `lone`'s pace with as many one-object batches. Two readings: the mix's batches *undo* the
word (a task whose gradient pulls the other way), or they *block* it (the optimizer's state, shared
with them, shrinks the one-object steps). This tells them apart and names the task.

It continues the committed backbone (docs/benchmark/continuation.py) with LONE one-object batches
(the word response rises), saves weights and optimizer state, and then, from that same state, runs
STEPS batches of one task family alone, reading the word response every EVERY steps: a family that
undoes the word brings it down; `lone` (more of the same) and `mix` (the recipe's mix) are the
controls. Every family phase draws the same seeds and runs at the same point of the cosine.

MODE 'where' asks instead where the one-object batches teach the word: LONE of them, once with
only the generation side (its expert, the latent in/out layers, the time embedder) trained, once with everything else
(the understanding expert, embeddings and the LM head, which carry the caption's words), from the
same start, seeds and schedule.

MODE 'curriculum' tries what the answers suggest for a recipe: LONE one-object batches, then STEPS
of the recipe's mix to give back what they cost multi-object scenes, with the judge's scores on
the continuation experiments' 160 captions after each phase.

MODE 'lone-markings' asks how far the word, and the markings drawn, go with one-object batches
alone at a constant learning rate: LONE of them, with the judge's markings on 120 one-object
captions (seed 998) and on the 160 captions by object count, at the start, halfway and the end.

MODE 'lone-then-mix' continues that: LONE one-object batches at lr 3e-4, then, from that same
state twice, STEPS batches at lr 1e-4 of the recipe's mix, and of the mix with one-object
text-to-image added at weight 6 (27 % of a batch); the judge as above plus the card's VQA and
in-context recognition (n=100, seed 1234) every EVERY steps of the second phase.

    python docs/benchmark/experiment_mix_interference.py families [LONE] [STEPS] [EVERY]   # 1000 300 100
    python docs/benchmark/experiment_mix_interference.py where [LONE] [EVERY]               # 1000 250
    python docs/benchmark/experiment_mix_interference.py curriculum [LONE] [STEPS] [EVERY]  # 2000 600 200
    python docs/benchmark/experiment_mix_interference.py lone-markings [LONE] [EVERY]       # 6000 1000
    python docs/benchmark/experiment_mix_interference.py lone-then-mix [LONE] [STEPS] [EVERY]  # 6000 1500 500
"""

from __future__ import annotations

import copy
import sys
import time

import numpy as np
import torch
from continuation import MIX, Continuation  # docs/benchmark/continuation.py
from probe_marking_words import show, word_response  # docs/benchmark/probe_marking_words.py

from omnipersona.losses import joint_loss
from omnipersona.pipeline import OmniPipeline
from omnipersona.sampler import SamplerConfig
from omnipersona.toyworld.evaluate import draw_captions, evaluate_base, generation_scores
from omnipersona.toyworld.pretrain import make_sample, pack_world_batch, trainable_parameters
from omnipersona.toyworld.world import random_scene

# Each family's share of a batch, in the mix's own proportions.
FAMILIES = {
    "lone": {"t2i_single": 1.0},
    "mix": MIX,
    "t2i": {"t2i": 1.0},
    "edit": {"edit": 1.0},
    "naming": {"naming": 1.0},
    "understanding": {k: MIX[k] for k in ("caption", "vqa", "recaption")},
}


def train(run: Continuation, family: dict[str, float], first: int, steps: int, every: int, label: str) -> None:
    names = list(family)
    p = np.array([family[n] for n in names], dtype=np.float64)
    p /= p.sum()
    start = time.monotonic()
    for step in range(first, first + steps):
        run.tasks(step)  # sets the learning rate; its draw is discarded
        picked = run.rng.choice(len(names), size=run.cfg.batch_size, p=p)
        samples = [make_sample(names[i], run.rng, run.size) for i in picked]
        seq = pack_world_batch(run.backbone, samples, run.generator, run.cfg.timestep_shift, run.size)
        loss, parts = joint_loss(run.model, seq, None, None, run.cfg.loss_weights)
        run.update(loss)
        if (step + 1 - first) % every == 0:
            print(show(f"{label} {step + 1 - first}", word_response(run.backbone), noise_levels=(0.3, 0.5, 0.7, 0.9)),
                  f"{time.monotonic() - start:.0f}s", " ".join(f"{k} {v:.3f}" for k, v in parts.items()), flush=True)


def restore(run: Continuation, saved: tuple[dict, dict]) -> None:
    """Back to the saved weights and optimizer state, drawing from seed 100: each phase that starts
    here sees the same samples and noise."""
    run.model.load_state_dict(saved[0])
    run.opt.load_state_dict(copy.deepcopy(saved[1]))
    run.rng = np.random.default_rng(100)
    run.generator.manual_seed(100)


def where(lone: int = 1000, every: int = 250) -> None:
    for trained in ("generation", "understanding"):
        run = Continuation(3 * lone)
        generation = {id(p) for p in trainable_parameters(run.model, generation_only=True)}
        for p in run.params:
            if (id(p) in generation) != (trained == "generation"):
                p.requires_grad_(False)
        run.params = [p for p in run.params if p.requires_grad]
        run.opt = torch.optim.AdamW(run.params, lr=run.cfg.lr, weight_decay=run.cfg.weight_decay)
        print(f"# only the {trained} side trained: {sum(p.numel() for p in run.params):,} weights", flush=True)
        train(run, FAMILIES["lone"], 0, lone, every, trained)


def curriculum(lone: int = 2000, steps: int = 600, every: int = 200) -> None:
    run = Continuation(lone + steps)
    train(run, FAMILIES["lone"], 0, lone, lone // 4, "lone")
    print("judge", run.score(), flush=True)
    train(run, FAMILIES["mix"], lone, steps, every, "mix")
    print("judge", run.score(), flush=True)


def markings_by_count(run: Continuation) -> str:
    """The judge's marking accuracy on 120 one-object captions, and on the 160 captions of
    `Continuation.score` split by their object count (the share asked in brackets)."""
    run.model.eval()
    pipe = OmniPipeline(run.backbone, recaption=False)
    lone_rng, rng = np.random.default_rng(998), np.random.default_rng(999)
    sets = {"one-object captions": [random_scene(lone_rng, n_objects=1) for _ in range(120)]}
    scenes = [random_scene(rng) for _ in range(160)]
    sets["160 set"] = scenes
    for count in (1, 2, 3):
        sets[f"160 set, {count} objects"] = [s for s in scenes if len(s.objects) == count]
    parts = []
    for label, batch in sets.items():
        seen = draw_captions(pipe, run.recogniser, batch, SamplerConfig(num_steps=25))
        scores = generation_scores(batch, seen)
        markings = scores.get("generation_pattern")  # captions of three objects name no marking
        parts.append(f"{label}: markings {'-' if markings is None else f'{markings:.3f}'} overall "
                     f"{scores['generation_attribute_accuracy']:.3f} (n={len(batch)})")
    run.model.train()
    return "; ".join(parts)


def lone_markings(lone: int = 6000, every: int = 1000) -> None:
    run = Continuation(10**9)  # a cosine that long is flat: lr 3e-4 after the warm-up
    print("judge start", markings_by_count(run), flush=True)
    for half in range(2):
        train(run, FAMILIES["lone"], half * lone // 2, lone // 2, every, "lone")
        print(f"judge {(half + 1) * lone // 2}", markings_by_count(run), flush=True)


def understanding(run: Continuation) -> str:
    """The card's VQA and in-context recognition (n=100, seed 1234)."""
    run.model.eval()
    scores = evaluate_base(run.backbone, n=100)
    run.model.train()
    return f"vqa {scores['vqa']:.3f} recognition {scores['naming_recognition_balanced']:.3f}"


def lone_then_mix(lone: int = 6000, steps: int = 1500, every: int = 500) -> None:
    run = Continuation(10**9)  # flat lr after the warm-up, as in lone-markings
    print("judge start", understanding(run), flush=True)
    for half in range(2):
        train(run, FAMILIES["lone"], half * lone // 2, lone // 2, 1000, "lone")
        print(f"judge lone {(half + 1) * lone // 2}", markings_by_count(run), flush=True)
    print("judge", understanding(run), flush=True)
    saved = copy.deepcopy((run.model.state_dict(), run.opt.state_dict()))
    run.cfg.lr = 1e-4
    for label, family in (("mix", MIX), ("mix+lone", MIX | {"t2i_single": 6.0})):
        restore(run, saved)
        for k in range(steps // every):
            train(run, family, lone + k * every, every, every, label)
            print(f"judge {label} {(k + 1) * every}", markings_by_count(run), understanding(run), flush=True)


def families(lone: int = 1000, steps: int = 300, every: int = 100) -> None:
    run = Continuation(3 * lone)
    print(show("start", word_response(run.backbone)), flush=True)
    train(run, FAMILIES["lone"], 0, lone, lone // 2, "lone")
    saved = copy.deepcopy((run.model.state_dict(), run.opt.state_dict()))
    for label, family in FAMILIES.items():
        restore(run, saved)
        train(run, family, lone, steps, every, label)


if __name__ == "__main__":
    modes = {"families": families, "where": where, "curriculum": curriculum, "lone-markings": lone_markings,
             "lone-then-mix": lone_then_mix}
    if len(sys.argv) < 2 or sys.argv[1] not in modes:
        raise SystemExit(f"MODE is one of {', '.join(modes)}")
    modes[sys.argv[1]](*(int(a) for a in sys.argv[2:5]))
