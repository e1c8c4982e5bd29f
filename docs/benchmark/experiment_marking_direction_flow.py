"""Experiment (docs/benchmark.md): continue the committed backbone with a text-to-image flow loss
that also counts, GAIN times over, the error along each latent token's *marking direction*: the
difference between the latent of the render and of the same render with every object's marking
swapped for another one. A marking moves the latent by 0.07 of its squared norm (colour 0.17), so
the plain flow loss hardly sees whether a caption's marking was drawn; this term makes a wrong
marking cost as much as a wrong colour or more. Scores generation every EVERY steps on the 160
captions of the object-weighted experiment (seed 999, no card or benchmark uses them).

    python docs/benchmark/experiment_marking_direction_flow.py [GAIN] [STEPS] [EVERY] [OUT]   # 3 2100 350

GAIN 0 is the plain control; the recipe is `continuation.py`'s. With OUT the weights are saved
there (the committed backbone's layout) after every score.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from continuation import Continuation  # docs/benchmark/continuation.py

from omnipersona.backbone import Backbone
from omnipersona.data import load_image
from omnipersona.losses import ce_loss
from omnipersona.sequence import LossKind
from omnipersona.toyworld import TOY_BACKBONE_DIR, tasks
from omnipersona.toyworld.pretrain import Segment, WorldSample, make_sample, pack_world_batch
from omnipersona.toyworld.world import PATTERNS, Scene, random_scene, render


def swap_markings(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with each object's marking replaced by a different one, drawn at random."""
    swapped = []
    for o in scene.objects:
        others = [p for p in PATTERNS if p != o.pattern]
        swapped.append(dataclasses.replace(o, pattern=others[int(rng.integers(len(others)))]))
    return dataclasses.replace(scene, objects=tuple(swapped))


@torch.no_grad()
def marking_directions(model, pairs: list[tuple[Scene, Scene, int]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each (scene, swapped, seed): the unit marking direction per latent token [tokens, D]
    and which tokens have one [tokens] (a change of at least 5 % of the image's largest; elsewhere
    the swap moved nothing), concatenated over the pairs. One VAE call for the whole batch."""
    pixels = torch.stack([load_image(render(s, size, seed=seed), size) for a, b, seed in pairs for s in (a, b)])
    lat = model.patchify(model.encode_latents(pixels)).float()  # [2P, tokens, D]
    delta = lat[1::2] - lat[0::2]
    norm = delta.norm(dim=-1)  # [P, tokens]
    has = (norm > 0.05 * norm.amax(dim=1, keepdim=True).clamp(min=1e-6))
    has &= torch.tensor([bool(a.objects) for a, _, _ in pairs])[:, None]
    return (delta / norm.clamp(min=1e-6)[..., None]).flatten(0, 1), has.flatten()


def main(gain: float = 3.0, steps: int = 2100, every: int = 350, out: str | None = None) -> None:
    run = Continuation(steps)
    model, size = run.model, run.size
    grid = size // (model.config.vae_downsample * model.config.latent_patch_size)
    D = model.config.latent_token_dim
    print("start", run.score(), flush=True)
    start = time.monotonic()
    rng = run.rng
    for step in range(steps):
        samples, pairs, targets = [], [], []  # targets: per image target in packing order, its pair or None
        for name in run.tasks(step):
            if name == "t2i":
                seed, scene = int(rng.integers(1 << 30)), random_scene(rng)
                samples.append(WorldSample([Segment("text", tasks.caption(scene)), Segment("target", image=0)],
                                           [render(scene, size, seed=seed)], "t2i"))
                targets.append(len(pairs))
                pairs.append((scene, swap_markings(scene, rng), seed))
            else:
                samples.append(make_sample(name, rng, size))
                if any(s.kind == "target" for s in samples[-1].segments):
                    targets.append(None)
        seq = pack_world_batch(run.backbone, samples, run.generator, run.cfg.timestep_shift, size)
        hidden, _ = model(seq, None)
        ce = ce_loss(model.logits(hidden[seq.ce_index], None), seq.ce_labels)
        e = model.velocity(hidden[seq.mse_index]).float() - seq.mse_target.float()  # [tokens, D]
        err = e.pow(2).mean(-1)
        found = marking_directions(model, pairs, size) if pairs else None
        direction = torch.zeros(len(targets) * grid * grid, D)
        marked = torch.zeros(len(targets) * grid * grid, dtype=torch.bool)
        for k, j in enumerate(targets):
            if j is not None:
                rows, src = slice(k * grid * grid, (k + 1) * grid * grid), slice(j * grid * grid, (j + 1) * grid * grid)
                direction[rows], marked[rows] = found[0][src], found[1][src]
        assert direction.shape == e.shape, (direction.shape, e.shape)
        is_gen = seq.mse_kind == LossKind.GENERATION
        gen = err[is_gen].mean() if is_gen.any() else err.sum() * 0
        # (e . d)^2 is what a token's mean squared error already holds of that direction, times D.
        along = (e * direction).sum(-1).pow(2)
        marking = along[marked].mean() * gain / D if marked.any() else err.sum() * 0
        edit = err[~is_gen].mean() if (~is_gen).any() else err.sum() * 0
        loss = ce + gen + marking + edit
        run.update(loss)
        if (step + 1) % every == 0:
            print(step + 1, f"{time.monotonic() - start:.0f}s", run.score(),
                  f"ce {ce.item():.3f} gen {gen.item():.3f} marking {marking.item():.3f}", flush=True)
            if out:
                save(run.backbone, Path(out))


def save(backbone: Backbone, out: Path) -> None:
    """The weights in the committed backbone's layout (its other files copied as they are)."""
    if not out.exists():
        shutil.copytree(TOY_BACKBONE_DIR, out)
    backbone.save(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(float(args[0]) if args else 3.0, *(int(a) for a in args[1:3]), *(args[3:4]))
