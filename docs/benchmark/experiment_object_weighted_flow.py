"""Experiment (docs/benchmark.md, not adopted): continue the committed backbone with each
text-to-image latent token's flow error weighted 1 + LAMBDA x the share of its pixels an object
covers, scoring generation every EVERY steps on 160 captions no card or benchmark uses (seed 999).

    python docs/benchmark/experiment_object_weighted_flow.py [LAMBDA] [STEPS] [EVERY]   # 4 3000 350

LAMBDA 0 is the unweighted control. The recipe is `continuation.py`'s.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from continuation import Continuation  # docs/benchmark/continuation.py

from omnipersona.losses import ce_loss
from omnipersona.sequence import LossKind
from omnipersona.toyworld import tasks
from omnipersona.toyworld.pretrain import Segment, WorldSample, make_sample, pack_world_batch
from omnipersona.toyworld.world import Scene, random_scene, render


def object_share(scene: Scene, seed: int, size: int, grid: int) -> np.ndarray:
    """[grid*grid] share of each latent token's pixels (row-major) where an object is drawn: the
    pixels that differ from the same render without objects."""
    drawn = np.asarray(render(scene, size, seed=seed), np.float32)
    empty = np.asarray(render(Scene(scene.place, ()), size, seed=seed), np.float32)
    mask = (np.abs(drawn - empty).sum(-1) > 30).astype(np.float32)
    cell = size // grid
    return mask.reshape(grid, cell, grid, cell).mean((1, 3)).reshape(-1)


def main(lam: float = 4.0, steps: int = 3000, every: int = 350) -> None:
    run = Continuation(steps)
    model, size = run.model, run.size
    grid = run.grid
    print("start", run.score(), flush=True)
    start = time.monotonic()
    rng = run.rng
    for step in range(steps):
        samples, weights = [], []  # weights: one [grid*grid] row per image target, in packing order
        for name in run.tasks(step):
            if name == "t2i":
                seed, scene = int(rng.integers(1 << 30)), random_scene(rng)
                samples.append(WorldSample([Segment("text", tasks.caption(scene)), Segment("target", image=0)],
                                           [render(scene, size, seed=seed)], "t2i"))
                weights.append(1 + lam * object_share(scene, seed, size, grid))
            else:
                samples.append(make_sample(name, rng, size))
                if any(s.kind == "target" for s in samples[-1].segments):
                    weights.append(np.ones(grid * grid))
        seq = pack_world_batch(run.backbone, samples, run.generator, run.cfg.timestep_shift, size)
        hidden, _ = model(seq, None)
        ce = ce_loss(model.logits(hidden[seq.ce_index], None), seq.ce_labels)
        err = (model.velocity(hidden[seq.mse_index]).float() - seq.mse_target.float()).pow(2).mean(-1)  # [tokens]
        w = torch.tensor(np.concatenate(weights), dtype=torch.float32) if weights else torch.zeros(0)
        assert w.numel() == err.numel(), (w.numel(), err.numel())
        is_gen = seq.mse_kind == LossKind.GENERATION
        gen = (err[is_gen] * w[is_gen]).sum() / w[is_gen].sum() if is_gen.any() else err.sum() * 0
        edit = err[~is_gen].mean() if (~is_gen).any() else err.sum() * 0
        loss = ce + gen + edit
        run.update(loss)
        if (step + 1) % every == 0:
            print(step + 1, f"{time.monotonic() - start:.0f}s", run.score(),
                  f"ce {ce.item():.3f} gen {gen.item():.3f}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(float(args[0]) if args else 4.0, *(int(a) for a in args[1:3]))
