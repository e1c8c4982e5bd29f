"""Concept switching in a warm render worker, the backbone's cold load, and artifact sizes
(issue: performance).

    python bench/concept_switch.py [--backbone toy] [--threads N]

- cold load of the backbone (once per worker process);
- a concept's tokens read from disk (first use in a process);
- switching to another concept whose tokens are cached: a fresh pipeline on the loaded backbone
  plus the cached rows, target < 5 ms (median of 50 switches);
- the concept checkpoint's size for this backbone, computed for `bagel-7b-mot`, next to a rank-16
  LoRA on every attention projection (q, k, v, o of both experts) of the same backbone.
Exits 1 if the switching target is missed.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_common import bench_parser, parse, print_table

from omnipersona.artifacts import TOKENS_FILE, load_concept, save_concept
from omnipersona.backbone import load_backbone
from omnipersona.config import OmniConfig, get_config
from omnipersona.pipeline import OmniPipeline
from omnipersona.trainer import TrainRecipe, new_concept

MB = 1e6


def lora_params(config: OmniConfig, rank: int = 16) -> int:
    """Rank-`rank` LoRA (A: in x r, B: r x out) on q, k, v, o of both experts in every layer."""
    llm = config.llm
    h, n_layers = llm["hidden_size"], llm["num_hidden_layers"]
    head_dim = llm.get("head_dim") or h // llm["num_attention_heads"]
    kv = llm["num_key_value_heads"] * head_dim
    per_expert = rank * ((h + h) + (h + kv) + (h + kv) + (h + h))
    return per_expert * 2 * n_layers


def concept_params(config: OmniConfig, recipe: TrainRecipe) -> int:
    """Embedding and output-head rows of the identifier, und and gen tokens."""
    return 2 * (1 + recipe.n_und + recipe.n_gen) * config.llm["hidden_size"]


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--switches", type=int, default=50)
    args = parse(parser)

    t0 = time.perf_counter()
    backbone = load_backbone(args.backbone)
    fingerprint = backbone.fingerprint()  # computed once per process, as a worker does
    cold_backbone = time.perf_counter() - t0

    recipe = TrainRecipe()
    with tempfile.TemporaryDirectory() as tmp:
        folders = [save_concept(new_concept(backbone, f"c{i}", TrainRecipe(seed=i)), Path(tmp) / f"c{i}", fingerprint)
                   for i in range(8)]
        disk = []
        cache = {}
        for folder in folders:
            t0 = time.perf_counter()
            concept = load_concept(folder, fingerprint)
            disk.append(time.perf_counter() - t0)
            cache[concept.name] = concept
        toy_bytes = (folders[0] / TOKENS_FILE).stat().st_size

    names = list(cache)
    switch = []
    for k in range(args.switches):
        t0 = time.perf_counter()
        pipe = OmniPipeline(backbone)
        pipe.add_concept(cache[names[k % len(names)]])
        switch.append(time.perf_counter() - t0)
    switch_ms = statistics.median(switch) * 1000

    bagel = get_config("bagel-7b-mot")
    rows = [
        ("backbone cold load (once per process)", f"{cold_backbone * 1000:.0f} ms", "", True),
        ("concept tokens from disk (first use)", f"{statistics.median(disk) * 1000:.2f} ms", "", True),
        ("switch to a cached concept", f"{switch_ms:.2f} ms", "< 5 ms", switch_ms < 5),
        (f"concept checkpoint, {backbone.config.name} (fp32 file)", f"{toy_bytes / MB:.3f} MB", "", True),
        (f"rank-16 LoRA, {backbone.config.name} (fp32)", f"{lora_params(backbone.config) * 4 / MB:.3f} MB", "", True),
        ("concept rows, bagel-7b-mot (bf16, embed only)", f"{concept_params(bagel, recipe) / MB:.3f} MB", "", True),
        ("concept rows, bagel-7b-mot (bf16, embed + head)",
         f"{concept_params(bagel, recipe) * 2 / MB:.3f} MB", "", True),
        ("rank-16 LoRA, bagel-7b-mot (bf16)", f"{lora_params(bagel) * 2 / MB:.1f} MB", "", True),
    ]
    return print_table(f"backbone {backbone.config.name}, {torch.get_num_threads()} threads", rows)


if __name__ == "__main__":
    sys.exit(main())
