"""Rendering speed on the `toy` backbone (issue: performance).

    python bench/render_speed.py [--backbone toy] [--steps 50] [--threads N]

In one run: a generation with the text context held in a KV cache against recomputing the whole
prompt at every flow step (target >= 2x, same latents within fp32 tolerance); and classifier-free
guidance with both branches in one forward pass per step against the two branches run one after
the other (target: batched faster). Prints a table; exits 1 if a target is missed.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from bench_common import bench_parser, parse, print_table

from omnipersona.backbone import load_backbone
from omnipersona.pipeline import OmniPipeline
from omnipersona.sampler import ImageRequest, SamplerConfig, sample_latents
from omnipersona.trainer import TrainRecipe, new_concept

PROMPT = "a photo of <maeve> and a large blue striped square at the beach"


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


@torch.no_grad()
def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--steps", type=int, default=50, help="flow steps per image")
    parser.add_argument("--repeats", type=int, default=3)
    args = parse(parser)
    backbone = load_backbone(args.backbone)
    pipe = OmniPipeline(backbone, recaption=False)
    pipe.add_concept(new_concept(backbone, "maeve", TrainRecipe()))
    side = pipe._latent_grid()
    cond = pipe._system_blocks(PROMPT) + [pipe._text(PROMPT)]

    def render(use_cache: bool, cfg: float, context=cond, uncond=()) -> torch.Tensor:
        sampler = SamplerConfig(num_steps=args.steps, cfg_text=cfg, use_cache=use_cache)
        return sample_latents(pipe.runner, [ImageRequest(list(context), list(uncond), seed=0, sampler=sampler)],
                              side, side)

    cached_s, cached = timed(lambda: render(True, 4.0), args.repeats)
    full_s, full = timed(lambda: render(False, 4.0), args.repeats)
    diff = (cached - full).abs().max().item()
    # CFG: both branches in one pass vs the conditional and the unconditional branch one after the other
    sequential_s, _ = timed(lambda: (render(True, 1.0), render(True, 1.0, context=[])), args.repeats)

    rows = [
        ("generation, prompt KV-cached", f"{cached_s * 1000:.0f} ms", "", True),
        ("generation, prompt recomputed each step", f"{full_s * 1000:.0f} ms", "", True),
        ("speed-up from the KV cache", f"{full_s / cached_s:.2f}x", ">= 2x", full_s / cached_s >= 2),
        ("max |cached - recomputed| latent", f"{diff:.1e}", "< 1e-4", diff < 1e-4),
        ("CFG branches one after the other", f"{sequential_s * 1000:.0f} ms", "", True),
        ("CFG branches in one pass (above)", f"{cached_s * 1000:.0f} ms", "", True),
        ("speed-up from batching CFG", f"{sequential_s / cached_s:.2f}x", "> 1x", sequential_s > cached_s),
    ]
    return print_table(f"backbone {backbone.config.name}, {args.steps} flow steps, {side * side} latent tokens, "
                       f"{torch.get_num_threads()} threads, median of {args.repeats}", rows)


if __name__ == "__main__":
    sys.exit(main())
