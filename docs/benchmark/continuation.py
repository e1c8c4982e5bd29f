"""What the continuation experiments share (docs/benchmark.md): the committed backbone trained
on with a fixed mix (batch 32, lr 3e-4 on a cosine, text-to-image weighted 6; the ViT and VAE
frozen), scored on 160 captions that no card or benchmark uses (seed 999)."""

from __future__ import annotations

import numpy as np
import torch

from omnipersona.backbone import Backbone
from omnipersona.toyworld import RECOGNISER_DIR, TOY_BACKBONE_DIR
from omnipersona.toyworld.evaluate import evaluate_generation
from omnipersona.toyworld.pretrain import PretrainConfig, _lr, trainable_parameters
from omnipersona.toyworld.recogniser import load_recogniser

MIX = {"caption": 0.5, "vqa": 6, "t2i": 6, "edit": 0.5, "recaption": 0.3, "naming": 2.5}


class Continuation:
    def __init__(self, steps: int):
        torch.set_num_threads(2)
        self.backbone = Backbone.load(TOY_BACKBONE_DIR)
        self.recogniser, _ = load_recogniser(RECOGNISER_DIR)
        self.model, self.size = self.backbone.model, self.backbone.config.image_size
        # latent tokens a side
        self.grid = self.size // (self.model.config.vae_downsample * self.model.config.latent_patch_size)
        self.cfg = PretrainConfig(seed=29, batch_size=32, lr=3e-4, steps=steps, mix=MIX)
        self.params = trainable_parameters(self.model, train_vit=False)
        for p in self.params:
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.rng = np.random.default_rng(self.cfg.seed + 1)
        self.generator = torch.Generator().manual_seed(self.cfg.seed + 1)
        self.names = list(MIX)
        self.p_task = np.array([MIX[n] for n in self.names], dtype=np.float64)
        self.p_task /= self.p_task.sum()
        self.model.train()

    def score(self) -> dict[str, float]:
        self.model.eval()
        result = evaluate_generation(self.backbone, self.recogniser, n=160, seed=999)
        self.model.train()
        return {k: round(v, 3) for k, v in result.items()}

    def tasks(self, step: int) -> list[str]:
        """Sets the step's learning rate and draws its batch's task names."""
        for group in self.opt.param_groups:
            group["lr"] = _lr(step, self.cfg, self.cfg.lr, self.cfg.steps)
        return [self.names[i] for i in self.rng.choice(len(self.names), size=self.cfg.batch_size, p=self.p_task)]

    def update(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
