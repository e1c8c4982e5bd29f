"""Concept-training step and 512x512 generation on a BAGEL-7B-MoT-sized OmniModel (random bf16 weights).

    python bench/gpu_step.py            # one H200: well under 5 minutes
    python bench/gpu_step.py --dry-run  # the same code path on the `tiny` config, on the CPU

What it measures (after one warm-up each):
- a concept-training step on one packed batch: `--gen-samples` generation samples (system prompt +
  "a photo of <sks>" + a noised latent block of (image/16)^2 tokens, 1024 at 512 px) and
  `--und-samples` recognition samples (system prompt + ViT block of `--vit-grid`^2 random tokens +
  question + answer). Timed separately: packing on the CPU (the library builds the sequence and
  its [L, L] mask there), the host-to-device copy, and forward + backward into the ConceptTokens
  rows only + AdamW step (per-layer activation checkpointing unless --no-checkpointing); peak
  memory of the step;
- one generation via `omnipersona.sampler.sample_latents`: `--gen-steps` Euler steps with text
  CFG (conditional + text-unconditional branch, contexts KV-cached), then the VAE decode;
- the FLOP floor of both: the FLOPs of one more (untimed) training step and one more sampling
  run, counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls and attention), divided
  by the bf16 matmul rate measured on this device (a `--matmul-size`^3 matmul, median of 5),
  next to the measured time: `time_over_floor` = measured / floor, 1.0 being a step that runs
  every FLOP at matmul speed with no other cost. With activation checkpointing the counted
  FLOPs include the forward recompute of every MoT layer (the GPU executes it);
  `flops_no_recompute` leaves it out (the layers' forward FLOPs, counted in the same pass).
  Attention is counted dense over the packed [L, L] sequence, as the kernels compute it under an
  arbitrary mask, so the floor is the work the GPU does, not the smaller useful work.

Library gaps worked around here (reported, not patched): `ConceptTokens.init_from` adds CPU
noise to rows of the (CUDA) tables and nothing moves a concept to the model's device, so the
concept is initialised on the CPU and moved here. Packed sequences are built on the CPU; the
model moves them itself, and `to_device` does it explicitly for the training step so that the
host-to-device copy is timed on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from bench_common import count_flops
from torch.utils.checkpoint import checkpoint

from omnipersona.config import OmniConfig, bagel_7b_mot_config, tiny_config
from omnipersona.data import EncodedImages, Sample, pack_samples
from omnipersona.losses import LossWeights, joint_loss
from omnipersona.model import OmniModel, freeze
from omnipersona.sampler import ImageRequest, Runner, SamplerConfig, sample_latents
from omnipersona.sequence import IM_END, IM_START, VISION_END, VISION_START, PackedSequence, SpecialIds
from omnipersona.tokenizer import build_word_tokenizer
from omnipersona.tokens import ConceptBank, ConceptTokens
from omnipersona.trainer import INIT_WORDS, TorchStep, TrainRecipe

GIB = 2**30


# -- device helpers -------------------------------------------------------------------------------
def to_device(seq: PackedSequence, device: torch.device) -> PackedSequence:
    """Every tensor field of a PackedSequence moved to `device` (the library builds them on the CPU)."""
    moved = {f.name: getattr(seq, f.name).to(device) for f in dataclasses.fields(seq)
             if isinstance(getattr(seq, f.name), torch.Tensor)}
    return dataclasses.replace(seq, **moved)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(config: OmniConfig, device: torch.device, dtype: torch.dtype) -> OmniModel:
    """Random weights created directly on `device` in `dtype` (no CPU copy, no fp32 copy), frozen.
    RoPE frequencies stay fp32; the 2-D sin-cos tables are made from numpy on the CPU (layers.py
    `PositionEmbedding2D`), hence the final `.to(device)`, which moves only those."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = OmniModel(config)
    finally:
        torch.set_default_dtype(previous)
    return freeze(model.to(device))


@contextlib.contextmanager
def activation_checkpointing(model: OmniModel, enabled: bool):
    """torch.utils.checkpoint around every MoT layer (non-reentrant: non-tensor arguments are fine)."""
    layers = model.language_model.model.layers
    if enabled:
        for layer in layers:
            layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)
    try:
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


# -- FLOPs ----------------------------------------------------------------------------------------
def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, n: int, samples: int = 5,
                       per_sample: int = 10) -> float:
    """Measured FLOP/s of an n x n x n matmul in `dtype`: the median of `samples` timings of
    `per_sample` back-to-back matmuls, after a warm-up. The floor divides by this rate, not by the
    datasheet peak (H200: 989 dense bf16 TFLOP/s), which no kernel reaches; the median, not the best,
    so that one lucky sample does not set it."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    c = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=c)
    times = []
    for _ in range(samples):
        sync(device)
        start = time.perf_counter()
        for _ in range(per_sample):
            torch.matmul(a, b, out=c)
        sync(device)
        times.append((time.perf_counter() - start) / per_sample)
    return 2 * n**3 / statistics.median(times)


def sig(x: float, digits: int = 4) -> float:
    """`x` to `digits` significant digits: floors of the tiny config are microseconds."""
    return float(f"{x:.{digits}g}")


def floor_fields(flops: int, measured_s: float, rate: float) -> dict[str, float]:
    """The time `flops` take at `rate` FLOP/s, and how many times that the measured time is."""
    floor_s = flops / rate
    return {"matmul_tflops": sig(rate / 1e12), "floor_s": sig(floor_s), "time_over_floor": sig(measured_s / floor_s)}


# -- setup ----------------------------------------------------------------------------------------
def new_concept(model: OmniModel, bank: ConceptBank, device: torch.device) -> ConceptTokens:
    concept = ConceptTokens("sks", model.config.hidden_size)
    lm = model.language_model
    ids = [i for i in bank.tokenizer.convert_tokens_to_ids(list(INIT_WORDS)) if i is not None]
    # init_from on the CPU: it adds CPU noise to the rows it is given (tokens.py init_from).
    embed_rows = lm.model.embed_tokens.weight[ids].float().cpu()
    head_rows = lm.lm_head.weight[ids].float().cpu()
    concept.init_from(embed_rows, head_rows, list(range(len(ids))))
    concept.to(device)
    bank.add(concept)
    return concept


def random_encoded(config: OmniConfig, n_images: int, vit_grid: int, latent_side: int, dtype: torch.dtype,
                   generator: torch.Generator, device: torch.device) -> EncodedImages:
    """Frozen-encoder outputs as random tensors of the right widths (SigLIP and the VAE skipped), on
    the device as `encode_images` leaves them; positions on the CPU as `latent_position_ids` gives them."""
    H, D = config.hidden_size, config.latent_token_dim
    vit = torch.randn(n_images, vit_grid * vit_grid, H, generator=generator).to(device, dtype)
    latents = torch.randn(n_images, latent_side * latent_side, D, generator=generator).to(device, dtype)
    pos = torch.arange(latent_side)[:, None] * config.max_latent_size + torch.arange(latent_side)[None, :]
    return EncodedImages(vit, latents, pos.reshape(-1))


def training_samples(n_gen: int, n_und: int, identifier: str) -> list[Sample]:
    gen = [Sample("generation", f"a photo of {identifier}", image=i) for i in range(n_gen)]
    und = [Sample("recognition", f"is {identifier} in this image ?", "yes", image=n_gen + i) for i in range(n_und)]
    return gen + und


# -- measurements ---------------------------------------------------------------------------------
def probe_sdpa(device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int,
               length: int) -> dict[str, Any]:
    """Which SDPA backends accept the model's call (bool mask + enable_gqa), forward + backward, and
    how long each takes, next to the default dispatch — says which kernel the model really uses."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, heads, length, head_dim, device=device, dtype=dtype, generator=g, requires_grad=True)
    k = torch.randn(1, kv_heads, length, head_dim, device=device, dtype=dtype, generator=g)
    v = torch.randn(1, kv_heads, length, head_dim, device=device, dtype=dtype, generator=g)
    mask = torch.ones(length, length, dtype=torch.bool, device=device).tril()

    def once() -> float:
        sync(device)
        start = time.perf_counter()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None], enable_gqa=True)
        out.float().sum().backward()
        sync(device)
        q.grad = None
        return time.perf_counter() - start

    result: dict[str, Any] = {"length": length}
    for name in ("default", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "FLASH_ATTENTION", "MATH"):
        ctx = contextlib.nullcontext() if name == "default" else sdpa_kernel([getattr(SDPBackend, name)])
        try:
            with ctx:
                once()
                result[name] = round(min(once() for _ in range(3)) * 1e3, 3)  # ms, fwd + bwd
        except Exception as e:  # any refusal (RuntimeError, NotImplementedError, ...) is a result here
            result[name] = "unsupported: " + str(e).strip().splitlines()[0][:120]
    return result


def measure_training(model: OmniModel, bank: ConceptBank, special: SpecialIds, concept: ConceptTokens,
                     args: argparse.Namespace, latent_side: int, device: torch.device,
                     dtype: torch.dtype, matmul_rate: float) -> dict[str, Any]:
    """Timed concept-training steps, then one untimed step under the FLOP counter."""
    generator = torch.Generator().manual_seed(0)
    samples = training_samples(args.gen_samples, args.und_samples, concept.identifier)
    encoded = random_encoded(model.config, len(samples), args.vit_grid, latent_side, dtype, generator,
                             device)
    recipe = TrainRecipe(batch_size=len(samples))
    optimizer = torch.optim.AdamW(concept.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    apply_step = TorchStep(concept, optimizer, recipe)

    def step() -> dict[str, Any]:
        t0 = time.perf_counter()
        seq = pack_samples(model, bank, special, [concept], samples, encoded, generator, recipe.timestep_shift)
        t1 = time.perf_counter()
        seq = to_device(seq, device)
        sync(device)
        t2 = time.perf_counter()
        loss, parts = joint_loss(model, seq, bank.embedding_rows(), bank.head_rows(), LossWeights())
        apply_step(loss)
        sync(device)
        t3 = time.perf_counter()
        return {"pack_s": t1 - t0, "h2d_s": t2 - t1, "compute_s": t3 - t2, "tokens": seq.length, "loss": parts}

    def counted_step() -> None:  # the timed compute of `step`, on a sequence packed beforehand
        loss, _ = joint_loss(model, counted_seq, bank.embedding_rows(), bank.head_rows(), LossWeights())
        apply_step(loss)

    before = [p.detach().clone() for p in concept.parameters()]
    with activation_checkpointing(model, args.checkpointing):
        step()  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        runs = [step() for _ in range(args.timed_steps)]
        # After the timed steps, so that the counter's dispatch overhead and any memory it keeps
        # never reach the timings or the peak-memory figure.
        counted_seq = to_device(pack_samples(model, bank, special, [concept], samples, encoded, generator,
                                             recipe.timestep_shift), device)
        counted = count_flops(counted_step, model.language_model.model.layers)
    changed = any(not torch.equal(a, b) for a, b in zip(before, concept.parameters(), strict=True))
    frozen = all(p.grad is None for p in model.parameters())
    mean = {k: sum(r[k] for r in runs) / len(runs) for k in ("pack_s", "h2d_s", "compute_s")}
    flops = counted["flops"]
    out: dict[str, Any] = {
        "samples": {"generation": args.gen_samples, "understanding": args.und_samples},
        "tokens": runs[-1]["tokens"],
        "activation_checkpointing": args.checkpointing,
        "step_s": sig(sum(mean.values())),
        **{k: sig(v) for k, v in mean.items()},
        "last_loss": runs[-1]["loss"],
        "concept_rows_changed": changed,
        "backbone_grads_none": frozen,
        "counted_tokens": counted_seq.length,
        "flops": flops,
        "flops_no_recompute": flops - counted["layer_forward_flops"] if args.checkpointing else flops,
        "flops_by_op": counted["by_op"],
        **floor_fields(flops, mean["compute_s"], matmul_rate),
    }
    if device.type == "cuda":
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
        out["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / GIB, 2)
    return out


def measure_generation(model: OmniModel, bank: ConceptBank, special: SpecialIds, concept: ConceptTokens,
                       args: argparse.Namespace, latent_side: int, device: torch.device,
                       matmul_rate: float) -> dict[str, Any]:
    """One timed render (sampling, then VAE decode), then the sampling once more under the FLOP counter."""
    runner = Runner(model, bank, special)
    prompt = f"a photo of {concept.identifier}"
    cond = [("text", bank.encode(concept.system_prompt())), ("text", bank.encode(prompt))]

    def request(steps: int) -> ImageRequest:
        return ImageRequest(cond=cond, text_uncond=[], seed=0, sampler=SamplerConfig(num_steps=steps))

    def render(steps: int) -> tuple[float, float, torch.Tensor]:
        sync(device)
        t0 = time.perf_counter()
        latents = sample_latents(runner, [request(steps)], latent_side, latent_side)
        sync(device)
        t1 = time.perf_counter()
        with torch.no_grad():
            pixels = model.decode_latents(model.unpatchify(latents, latent_side, latent_side))
        sync(device)
        return t1 - t0, time.perf_counter() - t1, pixels

    render(2)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sample_s, decode_s, pixels = render(args.gen_steps)
    counted = count_flops(lambda: sample_latents(runner, [request(args.gen_steps)], latent_side, latent_side),
                          model.language_model.model.layers)
    out: dict[str, Any] = {
        "image_px": latent_side * model.config.vae_downsample * model.config.latent_patch_size,
        "latent_tokens": latent_side * latent_side,
        "steps": args.gen_steps,
        "cfg_text": SamplerConfig().cfg_text,
        "sample_s": sig(sample_s),
        "per_step_ms": sig(sample_s / args.gen_steps * 1e3),
        "vae_decode_s": sig(decode_s),
        "pixels_shape": list(pixels.shape),
        # the whole sampling loop: context prefill + every Euler step (the steps all cost the same)
        "flops": counted["flops"],
        "flops_by_op": counted["by_op"],
        **floor_fields(counted["flops"], sample_s, matmul_rate),
    }
    if device.type == "cuda":
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
    return out


# -- main -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny config on the CPU, 2 timed steps, 2 sampling steps")
    p.add_argument("--gen-samples", type=int, default=8, help="generation samples in the packed batch")
    p.add_argument("--und-samples", type=int, default=8, help="understanding (ViT) samples in the packed batch")
    p.add_argument("--image-size", type=int, default=512, help="pixels; latent grid = size / 16")
    p.add_argument("--vit-grid", type=int, default=36, help="ViT tokens per side (504 px / 14 = 36)")
    p.add_argument("--timed-steps", type=int, default=3)
    p.add_argument("--gen-steps", type=int, default=50)
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    p.add_argument("--probe-length", type=int, default=4096, help="sequence length of the SDPA backend probe")
    p.add_argument("--matmul-size", type=int, default=8192, help="n of the n^3 bf16 matmul that sets the FLOP rate")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-generate", action="store_true")
    p.add_argument("--json-out", help="also write the results here")
    args = p.parse_args(argv)
    if args.dry_run:
        args.image_size, args.vit_grid, args.probe_length, args.matmul_size = 16, 4, 64, 256
        args.timed_steps, args.gen_steps = 2, 2
    return args


def floor_line(what: str, r: dict[str, Any], time_key: str, checkpointing: bool | None) -> str:
    """One readable line of a result's FLOP floor (the JSON holds the same numbers)."""
    flops = f"{r['flops'] / 1e12:.4g} TFLOP"
    if checkpointing is not None:
        flops += (f" executed (activation checkpointing on; {r['flops_no_recompute'] / 1e12:.4g} TFLOP without the"
                  " recompute)" if checkpointing else " (activation checkpointing off)")
    return (f"FLOP floor, {what}: {flops} / {r['matmul_tflops']} TFLOP/s = {r['floor_s'] * 1e3:.4g} ms; "
            f"measured {r[time_key] * 1e3:.4g} ms = {r['time_over_floor']}x the floor")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.bfloat16
    elif not torch.cuda.is_available():
        print("gpu_step.py: CUDA is not available on this machine; run it on a GPU host, "
              "or pass --dry-run to check the code path on the tiny config on the CPU", file=sys.stderr)
        return 1
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16

    tokenizer = build_word_tokenizer()
    config = tiny_config(vocab_size=len(tokenizer)) if args.dry_run else bagel_7b_mot_config()
    results: dict[str, Any] = {"config": config.name, "device": str(device), "dtype": str(dtype),
                               "torch": torch.__version__}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    f = config.vae_downsample * config.latent_patch_size
    if args.image_size % f or args.image_size // f > config.max_latent_size:
        print(f"gpu_step.py: --image-size must be a multiple of {f} and at most {f * config.max_latent_size}",
              file=sys.stderr)
        return 2
    latent_side = args.image_size // f

    t0 = time.perf_counter()
    model = build_model(config, device, dtype)
    sync(device)
    results["build_s"] = round(time.perf_counter() - t0, 2)
    results["parameters_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
    if device.type == "cuda":
        results["weights_gib"] = round(torch.cuda.memory_allocated(device) / GIB, 2)
    print(f"built {config.name}: {results['parameters_b']} B parameters in {results['build_s']} s", flush=True)

    llm = config.llm_config()
    results["sdpa_probe_ms"] = probe_sdpa(device, dtype, llm.num_attention_heads, llm.num_key_value_heads,
                                          llm.hidden_size // llm.num_attention_heads, args.probe_length)
    print("sdpa probe (fwd+bwd ms):", json.dumps(results["sdpa_probe_ms"]), flush=True)
    rate = matmul_flops_per_s(device, dtype, args.matmul_size)
    results["matmul"] = {"n": args.matmul_size, "tflops": sig(rate / 1e12)}
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the probe's three n x n matrices
    print(f"bf16 matmul {args.matmul_size}^3: {rate / 1e12:.4g} TFLOP/s", flush=True)

    bank = ConceptBank(tokenizer, config.llm["vocab_size"])
    special = SpecialIds(*tokenizer.convert_tokens_to_ids([IM_START, IM_END, VISION_START, VISION_END]))
    concept = new_concept(model, bank, device)

    if not args.skip_train:
        try:
            results["train"] = measure_training(model, bank, special, concept, args, latent_side, device, dtype,
                                                rate)
        except torch.OutOfMemoryError as e:
            results["train"] = {"error": "out of memory: " + str(e).splitlines()[0]}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print("train step:", json.dumps(results["train"]), flush=True)
        if "error" not in results["train"]:
            print(floor_line("train step", results["train"], "compute_s", args.checkpointing), flush=True)
    if not args.skip_generate:
        results["generate"] = measure_generation(model, bank, special, concept, args, latent_side, device, rate)
        print("generation:", json.dumps(results["generate"]), flush=True)
        print(floor_line(f"sampling ({args.gen_steps} steps)", results["generate"], "sample_s", None), flush=True)

    results["total_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(results, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
