"""Experiment (docs/benchmark.md, not adopted): the toy MoT from scratch with latent patch 1
(64 latent tokens of 8 values) instead of 2 (16 of 32), for the 55 min of MoT time run 1 had.

    python docs/benchmark/experiment_latent_patch1.py OUT_DIR

Keeps the committed backbone's VAE and ViT (stages 1 and 1b, which do not depend on the patch
size) and run 1's recipe (seed 0, batch 16, lr 1e-3, default mix); the schedule is shortened to
the steps 55 min buy at patch 1 on this machine (about 3.2 steps/s). Prints generation and VQA
scores of the result on `evaluate-base`'s seeds (n=100).
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from omnipersona.backbone import Backbone
from omnipersona.model import OmniModel
from omnipersona.toyworld import RECOGNISER_DIR, TOY_BACKBONE_DIR
from omnipersona.toyworld.evaluate import evaluate_base, evaluate_generation
from omnipersona.toyworld.pretrain import PretrainConfig, pretrain_backbone
from omnipersona.toyworld.recogniser import load_recogniser

FROZEN_STAGES = ("vae.", "vit_model.", "connector.", "vit_pos_embed.")


def main(out: str, minutes: float = 55.0, steps: int = 10_500) -> None:
    torch.set_num_threads(2)
    committed = Backbone.load(TOY_BACKBONE_DIR)
    config = dataclasses.replace(committed.config, latent_patch_size=1)
    torch.manual_seed(0)
    model = OmniModel(config)
    model.load_state_dict({k: v for k, v in committed.model.state_dict().items() if k.startswith(FROZEN_STAGES)},
                          strict=False)
    backbone = Backbone(config, model, committed.tokenizer)
    start = time.monotonic()
    history = pretrain_backbone(backbone, PretrainConfig(seed=0, steps=steps), deadline=start + minutes * 60)
    print(f"{len(history)} steps in {(time.monotonic() - start) / 60:.1f} min", flush=True)
    backbone.save(out)
    recogniser, _ = load_recogniser(RECOGNISER_DIR)
    print({k: round(v, 3) for k, v in evaluate_generation(backbone, recogniser, n=100).items()})
    scores = evaluate_base(backbone, n=100)
    print({k: round(v, 3) for k, v in scores.items() if k.startswith("vqa")})


if __name__ == "__main__":
    main(sys.argv[1])
