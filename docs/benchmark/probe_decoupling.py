"""Why do shared tokens recognise as well as decoupled ones here? (docs/benchmark.md)

    python docs/benchmark/probe_decoupling.py [N_CONCEPTS] [SEED] [STEPS]

The paper's ablation says one set of tokens serving both experts lowers Rec: the understanding
and the generation objectives pull the same rows different ways. This probe trains the first
N_CONCEPTS of the benchmark's 20 for SEED (defaults 5 and 0; the same concepts and test items as
`omnipersona bench --seed SEED`) in five variants and scores recognition on the held-out items:

- decoupled 16+16: OmniPersona (16 understanding tokens, 16 generation tokens on the generation
  expert);
- shared 16+16: the benchmark's ablation: all 33 rows go through the understanding expert, so
  it reads twice as many understanding-expert tokens as the decoupled concept;
- shared 8+8: the same ablation with as many understanding-expert rows (17) as decoupled has;
- shared 16+16 / decoupled 16+16 without the generation losses: understanding rows only.

During the shared and decoupled runs it also measures the conflict itself: every 25 steps, on
a fixed batch, the cosine between the gradient of the understanding loss (next-token CE) and of
the generation losses (text-to-image + editing flow) on the concept's input rows. Negative means the two
objectives pull the rows apart.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from omnipersona.backbone import load_backbone
from omnipersona.bench.cases import build_cases
from omnipersona.bench.run import recognition_rates
from omnipersona.data import build_concept_samples, encode_images, pack_samples
from omnipersona.losses import LossWeights, joint_loss
from omnipersona.pipeline import OmniPipeline
from omnipersona.tokens import ConceptTokens
from omnipersona.trainer import TrainRecipe, train_concept

UNDERSTANDING_ONLY = LossWeights(ce=1.0, gen=0.0, edit=0.0)
VARIANTS = {
    "decoupled 16+16": {"method": "decoupled"},
    "shared 16+16": {"method": "shared"},
    "shared 8+8": {"method": "shared", "n_und": 8, "n_gen": 8},
    "shared 16+16, no generation loss": {"method": "shared", "loss_weights": UNDERSTANDING_ONLY},
    "decoupled 16+16, no generation loss": {"method": "decoupled", "loss_weights": UNDERSTANDING_ONLY},
}
PROBE_EVERY = 25


class GradientConflict:
    """`after_step` hook: cosine between the understanding and the generation gradients on the
    concept's rows, on one fixed batch (its own generator, so training is untouched)."""

    def __init__(self, backbone, data, batch_size: int = 16):
        self.backbone, self.data, self.batch_size = backbone, data, batch_size
        self.cosines: list[float] = []
        self.fixed = None

    def _loss_parts(self, concept: ConceptTokens) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.backbone.model
        if self.fixed is None:
            bank = self.backbone.new_bank()
            bank.add(concept)
            prepared = build_concept_samples(self.data, concept.identifier, self.backbone.config.image_size)
            encoded = encode_images(model, prepared.pixels)
            g = torch.Generator().manual_seed(1234)
            pick = torch.randint(len(prepared.samples), (self.batch_size,), generator=g).tolist()
            self.fixed = (bank, prepared, encoded, pick)
        bank, prepared, encoded, pick = self.fixed
        # the same noise and timesteps at every probe
        seq = pack_samples(model, bank, self.backbone.special_ids, [concept], [prepared.samples[i] for i in pick],
                           encoded, torch.Generator().manual_seed(99), 1.0)
        und, _ = joint_loss(model, seq, bank.embedding_rows(), bank.head_rows(), UNDERSTANDING_ONLY)
        gen, _ = joint_loss(model, seq, bank.embedding_rows(), bank.head_rows(), LossWeights(0.0, 1.0, 1.0))
        return und, gen

    def __call__(self, step: int, concept: ConceptTokens) -> None:
        if step != 1 and step % PROBE_EVERY:
            return
        und, gen = self._loss_parts(concept)
        # the input rows: the generation losses never reach the output-head rows
        g_und, g_gen = (torch.autograd.grad(loss, concept.embeddings)[0].flatten() for loss in (und, gen))
        self.cosines.append(float(torch.nn.functional.cosine_similarity(g_und, g_gen, dim=0)))


def main(n_concepts: int = 5, seed: int = 0, steps: int = 300) -> None:
    torch.set_num_threads(1)  # as the benchmark tables were measured
    backbone = load_backbone("toy")
    rows: dict[str, dict[str, list[float]]] = {v: {"rec": [], "tpr": [], "tnr": [], "ce": [], "gen": [],
                                                   "cos_early": [], "cos_late": []} for v in VARIANTS}
    for case in build_cases(seed, 20, backbone.config.image_size)[:n_concepts]:
        data = case.training_data()
        for variant, overrides in VARIANTS.items():
            recipe = TrainRecipe(steps=steps, seed=seed * 1000 + case.index, **overrides)
            probe = GradientConflict(backbone, data) if "no generation" not in variant else None
            result = train_concept(backbone, data, case.token_name, recipe, after_step=probe)
            pipe = OmniPipeline(backbone)
            pipe.add_concept(result.concept)
            tpr, tnr = recognition_rates(pipe, f"<{case.token_name}>", case)
            r = rows[variant]
            r["rec"].append((tpr + tnr) / 2)
            r["tpr"].append(tpr)
            r["tnr"].append(tnr)
            r["ce"].append(result.metrics["final_ce"])
            r["gen"].append(result.metrics["final_gen"])
            if probe is not None:
                half = len(probe.cosines) // 2
                r["cos_early"].append(float(np.mean(probe.cosines[:half])))
                r["cos_late"].append(float(np.mean(probe.cosines[half:])))
            print(f"concept {case.index + 1} {variant}: rec {(tpr + tnr) / 2:.3f} "
                  f"(yes on positives {tpr:.2f}, no on negatives {tnr:.2f}), final ce {r['ce'][-1]:.3f} "
                  f"gen {r['gen'][-1]:.3f}, {result.seconds:.0f} s"
                  + (f", cos(und, gen) {' '.join(f'{c:+.2f}' for c in probe.cosines)}" if probe else ""),
                  file=sys.stderr, flush=True)

    print(f"| variant ({n_concepts} concepts of seed {seed}, {steps} steps) | Rec | yes on positives | "
          "no on negatives | final CE | final gen loss | cos(und, gen) first half | second half |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant, r in rows.items():
        cos = [f"{np.mean(r[k]):+.2f}" if r[k] else "" for k in ("cos_early", "cos_late")]
        print(f"| {variant} | {np.mean(r['rec']):.3f} | {np.mean(r['tpr']):.2f} | {np.mean(r['tnr']):.2f} | "
              f"{np.mean(r['ce']):.3f} | {np.mean(r['gen']):.3f} | {cos[0]} | {cos[1]} |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
