"""Many concepts at once (issue: performance).

    python bench/batch_concepts.py [--backbone toy] [--concepts 8] [--steps 50] [--threads N]

Eight render requests, each naming a different concept, in one batched call (one forward pass
per flow step for all of them) against the same eight rendered one after another. Target: >= 3x
the throughput, with identical images (same seeds -> same pixels). Exits 1 if a target is missed.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from bench_common import bench_parser, parse, print_table

from omnipersona.backbone import load_backbone
from omnipersona.pipeline import GenerateRequest, OmniPipeline
from omnipersona.sampler import SamplerConfig
from omnipersona.trainer import TrainRecipe, new_concept


@torch.no_grad()
def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--concepts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50, help="flow steps per image")
    args = parse(parser)
    backbone = load_backbone(args.backbone)
    pipe = OmniPipeline(backbone, recaption=False)
    names = [f"c{i}" for i in range(args.concepts)]
    for i, name in enumerate(names):  # distinct tokens per concept (untrained: speed does not depend on it)
        pipe.add_concept(new_concept(backbone, name, TrainRecipe(seed=i)))
    sampler = SamplerConfig(num_steps=args.steps)
    requests = [GenerateRequest(f"a photo of <{n}> at the beach", seed=i, sampler=sampler) for i, n in enumerate(names)]

    pipe.generate_batch(requests[:1])  # warm-up
    t0 = time.perf_counter()
    one_by_one = [pipe.generate_batch([r])[0].image for r in requests]
    sequential_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = [r.image for r in pipe.generate_batch(requests)]
    batched_s = time.perf_counter() - t0
    max_diff = max(int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())
                   for a, b in zip(one_by_one, together, strict=True))
    distinct = len({np.asarray(im).tobytes() for im in together})

    ratio = sequential_s / batched_s
    rows = [
        (f"{args.concepts} renders one after another", f"{sequential_s:.2f} s", "", True),
        (f"{args.concepts} renders in one batch", f"{batched_s:.2f} s", "", True),
        ("throughput ratio", f"{ratio:.2f}x", ">= 3x", ratio >= 3),
        ("max pixel difference batched vs alone", f"{max_diff}", "<= 1", max_diff <= 1),
        ("distinct images (one per concept)", f"{distinct}", f"{args.concepts}", distinct == args.concepts),
    ]
    return print_table(f"backbone {backbone.config.name}, {args.steps} flow steps, CFG on, "
                       f"{torch.get_num_threads()} threads", rows)


if __name__ == "__main__":
    sys.exit(main())
