"""Concept-training speed on the `toy` backbone (issue: performance).

    python bench/train_speed.py [--backbone toy] [--threads N]

Measures, in one run on this machine:
- wall time of one concept (the bundled example) at the default recipe, target <= 60 s;
- the time of a training step with the frozen encoders run once per image (what `train_concept`
  does) against re-encoding the batch's images every step (ViT + VAE), target >= 3x;
- that the backward pass leaves every backbone weight without a gradient, and the FLOPs of the
  step (forward + backward into the concept rows) against a full fine-tune's (backward into
  every backbone weight too), counted by `torch.utils.flop_counter` (attention included: see
  `bench_common.count_flops`).
Prints a table; exits 1 if a target is missed.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from bench_common import bench_parser, count_flops, parse, print_table

from omnipersona.backbone import load_backbone
from omnipersona.cli import load_image_folder, read_facts
from omnipersona.data import ConceptData, EncodedImages, build_concept_samples, encode_images, pack_samples
from omnipersona.demo import EXAMPLE
from omnipersona.losses import joint_loss
from omnipersona.trainer import TorchStep, TrainRecipe, new_concept, train_concept


def prepare(backbone, data: ConceptData, recipe: TrainRecipe):
    """What `train_concept` sets up before its loop: fresh tokens, their bank, the samples and the
    frozen encoders' outputs (once per image)."""
    concept = new_concept(backbone, "maeve", recipe)
    bank = backbone.new_bank()
    bank.add(concept)
    prepared = build_concept_samples(data, concept.identifier, backbone.config.image_size)
    return concept, bank, prepared, encode_images(backbone.model, prepared.pixels), torch.Generator().manual_seed(0)


def step_seconds(backbone, data: ConceptData, recipe: TrainRecipe, steps: int, reencode: bool) -> list[float]:
    """Per-step times of the training loop; `reencode` runs the frozen encoders on the batch's
    images inside every step instead of once up front."""
    model = backbone.model
    concept, bank, prepared, cached, g = prepare(backbone, data, recipe)
    opt = torch.optim.AdamW(concept.parameters(), lr=recipe.lr)
    apply_step = TorchStep(concept, opt, recipe)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = [prepared.samples[i] for i in torch.randint(len(prepared.samples), (recipe.batch_size,), generator=g)]
        encoded = cached
        if reencode:
            used = sorted({i for s in batch for i in (s.image, s.source, s.target) if i is not None})
            fresh = encode_images(model, prepared.pixels[used])
            vit, lat = cached.vit.clone(), cached.latents.clone()
            vit[used], lat[used] = fresh.vit, fresh.latents
            encoded = EncodedImages(vit, lat, cached.latent_pos)
        seq = pack_samples(model, bank, backbone.special_ids, [concept], batch, encoded, g, recipe.timestep_shift)
        loss, _ = joint_loss(model, seq, bank.embedding_rows(), bank.head_rows(), recipe.loss_weights)
        apply_step(loss)
        times.append(time.perf_counter() - t0)
    return times[2:]  # the first steps warm up allocators


def step_flops(backbone, data: ConceptData, recipe: TrainRecipe, full_finetune: bool) -> tuple[int, bool]:
    """FLOPs of one step's forward + backward, and whether any backbone weight got a gradient."""
    model = backbone.model
    concept, bank, prepared, encoded, g = prepare(backbone, data, recipe)
    batch = [prepared.samples[i] for i in torch.randint(len(prepared.samples), (recipe.batch_size,), generator=g)]
    seq = pack_samples(model, bank, backbone.special_ids, [concept], batch, encoded, g, recipe.timestep_shift)
    weights = [p for n, p in model.named_parameters() if not n.startswith("vae.") and "pos_embed.pos_embed" not in n]
    for p in weights:
        p.requires_grad_(full_finetune)
        p.grad = None
    try:
        def forward_backward() -> None:
            loss, _ = joint_loss(model, seq, bank.embedding_rows(), bank.head_rows(), recipe.loss_weights)
            loss.backward()

        flops = count_flops(forward_backward)["flops"]
        touched = any(p.grad is not None for p in weights)
    finally:
        for p in weights:
            p.requires_grad_(False)
            p.grad = None
    return flops, touched


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    args = parse(parser)
    backbone = load_backbone(args.backbone)
    data = ConceptData(load_image_folder(EXAMPLE / "photos"), read_facts(EXAMPLE / "facts.json"))
    recipe = TrainRecipe()

    t0 = time.perf_counter()
    result = train_concept(backbone, data, "maeve", recipe)
    wall = time.perf_counter() - t0
    cached = statistics.median(step_seconds(backbone, data, recipe, args.steps, reencode=False))
    reencoded = statistics.median(step_seconds(backbone, data, recipe, args.steps, reencode=True))
    frozen_flops, frozen_grads = step_flops(backbone, data, recipe, full_finetune=False)
    full_flops, _ = step_flops(backbone, data, recipe, full_finetune=True)

    rows = [
        (f"one concept, default recipe ({recipe.steps} x {recipe.batch_size})", f"{wall:.1f} s", "<= 60 s", wall <= 60),
        ("step, encoders once per image", f"{cached * 1000:.1f} ms", "", True),
        ("step, re-encoding every step", f"{reencoded * 1000:.1f} ms", "", True),
        ("speed-up from encoding once", f"{reencoded / cached:.2f}x", ">= 3x", reencoded / cached >= 3),
        ("backbone weights with a .grad", "yes" if frozen_grads else "none", "none", not frozen_grads),
        ("step FLOPs, concept rows only", f"{frozen_flops / 1e9:.3f} GFLOP", "", True),
        ("step FLOPs, full fine-tune", f"{full_flops / 1e9:.3f} GFLOP", "", True),
        ("FLOPs saved by freezing", f"{full_flops / frozen_flops:.2f}x", "", True),
    ]
    return print_table(f"backbone {backbone.config.name}, {torch.get_num_threads()} threads, final loss "
                       f"{result.metrics.get('final_total', float('nan')):.3f}", rows)


if __name__ == "__main__":
    sys.exit(main())
