"""Experiment (docs/benchmark.md): continue the committed backbone with a text-to-image flow loss
that also counts, GAIN times over, the error along each latent token's *marking direction*: the
difference between the latent of the render and of the same render with every object's marking
swapped for another one. A marking moves the latent by 0.07 of its squared norm (colour 0.17), so
the plain flow loss hardly sees whether a caption's marking was drawn; this term makes a wrong
marking cost as much as a wrong colour or more. Scores generation every EVERY steps on the 160
captions of the object-weighted experiment (seed 999, no card or benchmark uses them).

    python docs/benchmark/experiment_marking_direction_flow.py [GAIN] [STEPS] [EVERY] [OUT]   # 3 2100 350
    python docs/benchmark/experiment_marking_direction_flow.py --scaled [GAIN] [STEPS] [EVERY] [OUT]
    python docs/benchmark/experiment_marking_direction_flow.py [--scaled] --measure-weight

The recipe is `continuation.py`'s; with OUT the weights are saved there (the committed backbone's
layout) after every score. The marking term averages over marked tokens, the flow loss over all
generation tokens, so the marking direction counts 1 + GAIN x (generation / marked tokens) times
what the flow loss alone gives it; `--measure-weight` measures that ratio on 40 batches (0.73 of
generation tokens pass the 5 % threshold: most background tokens move a little too). `--scaled`
weights each token by how far the swap moved it instead (see `main`). GAIN 0
is not the plain continuation step for step: the swaps draw from the same rng as the batches.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from continuation import Continuation  # docs/benchmark/continuation.py
from probe_marking_words import changed  # docs/benchmark/probe_marking_words.py

from omnipersona.backbone import Backbone
from omnipersona.data import load_image
from omnipersona.losses import ce_loss
from omnipersona.model import OmniModel
from omnipersona.sequence import LossKind
from omnipersona.toyworld import TOY_BACKBONE_DIR, tasks
from omnipersona.toyworld.pretrain import Segment, WorldSample, make_sample, pack_world_batch
from omnipersona.toyworld.world import Scene, random_scene, render


@torch.no_grad()
def marking_changes(model: OmniModel, pairs: list[tuple[Scene, Scene, int]], size: int) -> torch.Tensor:
    """[P, tokens, D]: latent of the swapped render minus latent of the render, per pair."""
    pixels = torch.stack([load_image(render(s, size, seed=seed), size) for a, b, seed in pairs for s in (a, b)])
    lat = model.patchify(model.encode_latents(pixels)).float()  # [2P, tokens, D]
    return lat[1::2] - lat[0::2]


@torch.no_grad()
def marking_directions(model: OmniModel, pairs: list[tuple[Scene, Scene, int]],
                       size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each (scene, swapped, seed): the unit marking direction per latent token [tokens, D]
    and which tokens count as having one [tokens] (moved by at least 5 % of the image's most-moved
    token: 0.73 of them, background included, see `measure_weight`), concatenated over the pairs.
    One VAE call for the whole batch."""
    delta = marking_changes(model, pairs, size)
    norm = delta.norm(dim=-1)  # [P, tokens]
    has = (norm > 0.05 * norm.amax(dim=1, keepdim=True).clamp(min=1e-6))
    has &= torch.tensor([bool(a.objects) for a, _, _ in pairs])[:, None]
    return (delta / norm.clamp(min=1e-6)[..., None]).flatten(0, 1), has.flatten()


def main(gain: float = 3.0, steps: int = 2100, every: int = 350, out: str | None = None,
         scaled: bool = False) -> None:
    run = Continuation(steps)
    model, grid = run.model, run.grid
    D = model.config.latent_token_dim
    print("start", run.score(), flush=True)
    start = time.monotonic()
    tokens = grid * grid
    shares: list[float] = []  # per step: marked tokens / generation tokens
    for step in range(steps):
        seq, has_direction, direction = marked_batch(run, step, tokens, scaled)
        hidden, _ = model(seq, None)
        ce = ce_loss(model.logits(hidden[seq.ce_index], None), seq.ce_labels)
        velocity_error = model.velocity(hidden[seq.mse_index]).float() - seq.mse_target.float()  # [tokens, D]
        assert direction.shape == velocity_error.shape, (direction.shape, velocity_error.shape)
        err = velocity_error.pow(2).mean(-1)
        is_gen = seq.mse_kind == LossKind.GENERATION
        gen = err[is_gen].mean() if is_gen.any() else err.sum() * 0
        # A token's squared error along a unit direction is D times what its mean squared error
        # holds of it. Unit directions averaged over marked tokens: the marking direction weighs
        # 1 + GAIN x (generation tokens / marked tokens) as much as in the flow loss (printed).
        # Scaled: token i's direction weighs 1 + GAIN x |change_i|^2 / mean |change|^2, so tokens
        # the swap hardly moved (most background ones) keep the plain loss.
        along = (velocity_error * direction).sum(-1).pow(2)
        if scaled:
            marking = along[is_gen].mean() * gain / D if is_gen.any() else err.sum() * 0
        else:
            marking = along[has_direction].mean() * gain / D if has_direction.any() else err.sum() * 0
        edit = err[~is_gen].mean() if (~is_gen).any() else err.sum() * 0
        run.update(ce + gen + marking + edit)
        shares.append(float(has_direction.sum()) / max(1, int(is_gen.sum())))
        if (step + 1) % every == 0:
            weight = "" if scaled else f" weight along markings {1 + gain / max(np.mean(shares), 1e-6):.1f}"
            print(step + 1, f"{time.monotonic() - start:.0f}s", run.score(),
                  f"ce {ce.item():.3f} gen {gen.item():.3f} marking {marking.item():.3f}{weight}", flush=True)
            if out:
                save(run.backbone, Path(out))


def marked_batch(run: Continuation, step: int, tokens: int, scaled: bool = False):
    """The step's packed batch, which of its flow-target tokens carry a marking direction [N],
    and those directions [N, D] (zero elsewhere: edit and naming targets, empty scenes). Scaled:
    each token's latent change itself, divided by the root mean square over generation tokens."""
    rng, size = run.rng, run.size
    samples, pairs, pair_of_target = [], [], []  # per image target in packing order: its pair or None
    for name in run.tasks(step):
        if name == "t2i":
            seed, scene = int(rng.integers(1 << 30)), random_scene(rng)
            samples.append(WorldSample([Segment("text", tasks.caption(scene)), Segment("target", image=0)],
                                       [render(scene, size, seed=seed)], "t2i"))
            pair_of_target.append(len(pairs))
            pairs.append((scene, changed(scene, "pattern", rng), seed))
        else:
            samples.append(make_sample(name, rng, size))
            if any(s.kind == "target" for s in samples[-1].segments):
                pair_of_target.append(None)
    seq = pack_world_batch(run.backbone, samples, run.generator, run.cfg.timestep_shift, size)
    D = run.model.config.latent_token_dim
    direction = torch.zeros(len(pair_of_target) * tokens, D)
    has_direction = torch.zeros(len(pair_of_target) * tokens, dtype=torch.bool)
    if pairs:
        if scaled:
            pair_directions = marking_changes(run.model, pairs, size).flatten(0, 1)
            pair_has = pair_directions.norm(dim=-1) > 0
        else:
            pair_directions, pair_has = marking_directions(run.model, pairs, size)
        for target, pair in enumerate(pair_of_target):
            if pair is not None:
                rows, src = slice(target * tokens, (target + 1) * tokens), slice(pair * tokens, (pair + 1) * tokens)
                direction[rows], has_direction[rows] = pair_directions[src], pair_has[src]
        if scaled:
            is_gen = seq.mse_kind == LossKind.GENERATION
            direction /= direction[is_gen].pow(2).sum(-1).mean().sqrt().clamp(min=1e-6)
    return seq, has_direction, direction


def measure_weight(scaled: bool = False, batches: int = 40) -> None:
    """What the marking term weighs, over `batches` of the recipe's batches (no training): unit
    directions, the share of generation tokens that carry one; scaled, how the weight
    1 + GAIN x |change|^2 / mean |change|^2 spreads over generation tokens."""
    run = Continuation(batches)
    grid = run.grid
    marked, ratios = 0, []
    with torch.no_grad():
        for step in range(batches):
            seq, has_direction, direction = marked_batch(run, step, grid * grid, scaled)
            is_gen = seq.mse_kind == LossKind.GENERATION
            marked += int(has_direction[is_gen].sum())
            ratios.append(direction[is_gen].pow(2).sum(-1))
    ratio = torch.cat(ratios)
    if scaled:
        q = {p: float(ratio.quantile(p / 100)) for p in (50, 90, 97, 99)}
        print(f"|change|^2 / mean over {ratio.numel()} generation tokens: "
              + ", ".join(f"{p}th percentile {v:.2f}" for p, v in q.items()) + f", max {float(ratio.max()):.1f}")
        return
    share = marked / ratio.numel()
    print(f"{marked} marked of {ratio.numel()} generation tokens ({share:.3f}): the marking direction's weight is "
          f"1 + GAIN x {1 / share:.1f} (GAIN 3: {1 + 3 / share:.0f}, GAIN 20: {1 + 20 / share:.0f})")


def save(backbone: Backbone, out: Path) -> None:
    """The weights in the committed backbone's layout (its other files copied as they are)."""
    if not out.exists():
        shutil.copytree(TOY_BACKBONE_DIR, out)
    backbone.save(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    scaled = "--scaled" in args
    args = [a for a in args if a != "--scaled"]
    if args[:1] == ["--measure-weight"]:
        measure_weight(scaled)
        sys.exit()
    main(float(args[0]) if args else 3.0, *(int(a) for a in args[1:3]), *(args[3:4] or [None]), scaled=scaled)
