"""Could a fixed linear map of the latent give markings more of it? (docs/benchmark.md)

    python docs/benchmark/probe_latent_subspace.py

For 400 random scenes (seed 0) and, per scene, the same render with every object's marking,
colour or shape changed: the generalised eigenvectors of (marking-change second moment, latent
covariance), per latent pixel (8 channels) and per latent token (2 x 2 pixels, 32 values). Scaling
the top directions up would make a marking survive more noise only if those directions carried
the marking and not the colour or the shape; the printout says how much of each change they hold.
"""

from __future__ import annotations

import numpy as np
import torch
from probe_marking_words import POOLS, changed  # docs/benchmark/probe_marking_words.py

from omnipersona.backbone import Backbone
from omnipersona.data import load_image
from omnipersona.toyworld import TOY_BACKBONE_DIR
from omnipersona.toyworld.world import random_scene, render


@torch.no_grad()
def main(n: int = 400) -> None:
    torch.set_num_threads(2)
    backbone = Backbone.load(TOY_BACKBONE_DIR)
    model, size = backbone.model, backbone.config.image_size
    rng = np.random.default_rng(0)
    base, diffs = [], {k: [] for k in POOLS}
    for _ in range(0, n, 50):
        scenes = [random_scene(rng) for _ in range(50)]
        seeds = [int(rng.integers(1 << 30)) for _ in scenes]

        def encode(batch, seeds=seeds):
            return model.encode_latents(torch.stack([load_image(render(s, size, seed=d), size)
                                                     for s, d in zip(batch, seeds, strict=True)])).float()
        z = encode(scenes)
        base.append(z)
        for field in POOLS:
            diffs[field].append(encode([changed(s, field, rng) for s in scenes]) - z)
    z = torch.cat(base)  # [N, C, h, w]
    views = {"per latent pixel": lambda t: t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]),
             "per latent token": lambda t: model.patchify(t).flatten(0, 1)}
    for name, view in views.items():
        x = view(z)
        x = x - x.mean(0)
        cov = x.T @ x / len(x)
        moment = {f: (lambda d: d.T @ d / len(d))(view(torch.cat(v))) for f, v in diffs.items()}
        ev, u = torch.linalg.eigh(cov)
        whiten = u @ torch.diag(ev.clamp_min(1e-8) ** -0.5) @ u.T
        lam, v = torch.linalg.eigh(whiten @ moment["pattern"] @ whiten)
        dirs = (whiten @ v).flip(1)  # d^T cov d = 1, most marking per unit of latent variance first
        print(f"{name} ({x.shape[1]} values)")
        for j in range(4):
            d = dirs[:, j:j + 1]
            print(f"  direction {j}: second moment of a change along it: "
                  + ", ".join(f"{f} {(d.T @ m @ d).item():.3f}" for f, m in moment.items()) + " (latent variance 1)")
        for k in (1, 2, 4, 8):
            proj = dirs[:, :k] @ dirs[:, :k].T @ cov  # projection onto the top k, along the rest
            held = {f: (torch.trace(proj @ m @ proj.T) / torch.trace(m)).item() for f, m in moment.items()}
            latent = (torch.trace(proj @ cov @ proj.T) / torch.trace(cov)).item()
            print(f"  top {k}: hold " + ", ".join(f"{f} {v:.2f}" for f, v in held.items())
                  + f" of each change and {latent:.2f} of the latent")


if __name__ == "__main__":
    main()
