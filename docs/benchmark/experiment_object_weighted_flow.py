"""Experiment (docs/benchmark.md, not adopted): continue the committed backbone with each
text-to-image latent token's flow error weighted 1 + LAMBDA x the share of its pixels an object
covers, scoring generation every EVERY steps on 160 captions no card or benchmark uses (seed 999).

    python docs/benchmark/experiment_object_weighted_flow.py [LAMBDA] [STEPS] [EVERY]   # 4 3000 350

LAMBDA 0 is the unweighted control. Batch 32, lr 3e-4 (cosine), text-to-image weighted 6.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from omnipersona.backbone import Backbone
from omnipersona.losses import ce_loss
from omnipersona.sequence import LossKind
from omnipersona.toyworld import RECOGNISER_DIR, TOY_BACKBONE_DIR, tasks
from omnipersona.toyworld.evaluate import evaluate_generation
from omnipersona.toyworld.pretrain import (
    PretrainConfig,
    Segment,
    WorldSample,
    _lr,
    make_sample,
    pack_world_batch,
    trainable_parameters,
)
from omnipersona.toyworld.recogniser import load_recogniser
from omnipersona.toyworld.world import Scene, random_scene, render

MIX = {"caption": 0.5, "vqa": 6, "t2i": 6, "edit": 0.5, "recaption": 0.3, "naming": 2.5}


def object_share(scene: Scene, seed: int, size: int, grid: int) -> np.ndarray:
    """[grid*grid] share of each latent token's pixels (row-major) where an object is drawn: the
    pixels that differ from the same render without objects."""
    drawn = np.asarray(render(scene, size, seed=seed), np.float32)
    empty = np.asarray(render(Scene(scene.place, ()), size, seed=seed), np.float32)
    mask = (np.abs(drawn - empty).sum(-1) > 30).astype(np.float32)
    cell = size // grid
    return mask.reshape(grid, cell, grid, cell).mean((1, 3)).reshape(-1)


def main(lam: float = 4.0, steps: int = 3000, every: int = 350) -> None:
    torch.set_num_threads(2)
    backbone = Backbone.load(TOY_BACKBONE_DIR)
    recogniser, _ = load_recogniser(RECOGNISER_DIR)
    model, size = backbone.model, backbone.config.image_size
    grid = size // (model.config.vae_downsample * model.config.latent_patch_size)
    cfg = PretrainConfig(seed=29, batch_size=32, lr=3e-4, steps=steps, mix=MIX)
    params = trainable_parameters(model, train_vit=False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed + 1)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    names = list(MIX)
    p_task = np.array([MIX[n] for n in names], dtype=np.float64)
    p_task /= p_task.sum()

    def score() -> dict[str, float]:
        model.eval()
        out = evaluate_generation(backbone, recogniser, n=160, seed=999)
        model.train()
        return {k: round(v, 3) for k, v in out.items()}

    print("start", score(), flush=True)
    start = time.monotonic()
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg, cfg.lr, cfg.steps)
        samples, weights = [], []  # weights: one [grid*grid] row per image target, in packing order
        for i in rng.choice(len(names), size=cfg.batch_size, p=p_task):
            if names[i] == "t2i":
                seed, scene = int(rng.integers(1 << 30)), random_scene(rng)
                samples.append(WorldSample([Segment("text", tasks.caption(scene)), Segment("target", image=0)],
                                           [render(scene, size, seed=seed)], "t2i"))
                weights.append(1 + lam * object_share(scene, seed, size, grid))
            else:
                samples.append(make_sample(names[i], rng, size))
                if any(s.kind == "target" for s in samples[-1].segments):
                    weights.append(np.ones(grid * grid))
        seq = pack_world_batch(backbone, samples, g, cfg.timestep_shift, size)
        hidden, _ = model(seq, None)
        ce = ce_loss(model.logits(hidden[seq.ce_index], None), seq.ce_labels)
        err = (model.velocity(hidden[seq.mse_index]).float() - seq.mse_target.float()).pow(2).mean(-1)  # [tokens]
        w = torch.tensor(np.concatenate(weights), dtype=torch.float32) if weights else torch.zeros(0)
        assert w.numel() == err.numel(), (w.numel(), err.numel())
        is_gen = seq.mse_kind == LossKind.GENERATION
        gen = (err[is_gen] * w[is_gen]).sum() / w[is_gen].sum() if is_gen.any() else err.sum() * 0
        edit = err[~is_gen].mean() if (~is_gen).any() else err.sum() * 0
        loss = ce + gen + edit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if (step + 1) % every == 0:
            print(step + 1, f"{time.monotonic() - start:.0f}s", score(), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(float(args[0]) if args else 4.0, *(int(a) for a in args[1:3]))
