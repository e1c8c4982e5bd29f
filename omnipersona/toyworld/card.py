"""The pretrained toy backbone's model card, written from the files pretraining and evaluation
leave in its folder (`pretrain.json`, `base_scores.json`), so the numbers are never retyped."""

from __future__ import annotations

import json
from pathlib import Path

# Bars the base must pass before personalising it (issue: toy world).
BARS = {"vqa": 0.9, "generation_attribute_accuracy": 0.8, "recaption_text_tasks": 0.9}


def _fmt(x: float) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def model_card(folder: str | Path) -> str:
    folder = Path(folder)
    pre = json.loads((folder / "pretrain.json").read_text())
    scores = json.loads((folder / "base_scores.json").read_text())
    config = json.loads((folder / "omni_config.json").read_text())
    runs = pre.get("runs", [pre])
    first = runs[0]["config"]
    llm = config["llm"]
    vae_down = 2 ** (len(config["vae"]["block_out_channels"]) - 1)
    n_params = scores.get("parameters", "?")
    lines = [
        "# `toy` backbone (pretrained on the toy world)",
        "",
        "The same MoT code as BAGEL-7B-MoT at toy scale, pretrained from scratch on a 2-core CPU on",
        "procedurally rendered scenes (`omnipersona pretrain-toy`). It has never seen a benchmark concept:",
        "pretraining draws random scenes and in-context-named concepts from its own seed, the benchmark",
        "draws its 20 concepts from separate seeds and only ever teaches them through concept tokens.",
        "",
        "## Config",
        f"- LLM: hidden {llm['hidden_size']}, {llm['num_hidden_layers']} layers, {llm['num_attention_heads']} heads "
        f"({llm['num_key_value_heads']} KV), vocabulary {llm['vocab_size']} words; two experts (understanding, "
        "generation) per layer",
        f"- images {config['image_size']}x{config['image_size']}; ViT patch {config['vit']['patch_size']}; VAE "
        f"{vae_down}x down, {config['vae']['latent_channels']} channels, latent patch {config['latent_patch_size']}",
        f"- parameters: {n_params}; fingerprint `{pre['fingerprint'][:16]}`",
        "",
        "## Data mix and schedule",
        f"- stage 1 (VAE): {first['vae_steps']} steps, batch {first['vae_batch']}, lr {first['vae_lr']}, "
        f"KL weight {first['kl_weight']}",
    ]
    if runs[0].get("vit_seconds"):
        vit = ", ".join(f"{k} {_fmt(v)}" for k, v in pre.get("final_vit_scores", {}).items())
        lines.append(f"- stage 1b (ViT reads each patch: object, shape, colour, pattern, size, position, place): "
                     f"{first['vit_steps']} steps, batch {first['vit_batch']}, lr {first['vit_lr']}, "
                     f"{runs[0]['vit_seconds'] / 60:.1f} min; final patch accuracies {vit}")
    for i, run in enumerate(runs):
        c = run["config"]
        how = "from scratch" if not run.get("init") else "continued from the run before, fresh schedule"
        if c.get("generation_only"):
            how += ", generation expert only"
        lines += [
            f"- stage 2 (MoT), run {i + 1} ({how}): {run['backbone_steps']} of {c['steps']} steps, batch "
            f"{c['batch_size']}, lr {c['lr']} (warm-up {c['warmup']}, "
            f"{'then flat' if c.get('constant_lr') else 'cosine to 10%'}), seed {c['seed']}, "
            f"{run['seconds'] / 60:.1f} min, {run['torch_threads']} torch threads",
            "  - tasks per batch, by relative weight: " + ", ".join(f"{k} {v}" for k, v in c["mix"].items() if v),
        ]
    lines += [
        "",
        "## Time and final losses",
        f"- {pre['seconds'] / 60:.1f} min in all (VAE {pre['vae_seconds'] / 60:.1f} min, "
        f"ViT {pre.get('vit_seconds', 0) / 60:.1f} min) on this 2-core machine",
        "- VAE (mean of last 50 steps): " + ", ".join(f"{k} {_fmt(v)}" for k, v in pre["final_vae_losses"].items()),
        "- MoT (mean of last 50 steps): " + ", ".join(f"{k} {_fmt(v)}"
                                                      for k, v in pre["final_backbone_losses"].items()),
        "",
        "## Base capabilities (held-out scenes; `omnipersona evaluate-base`)",
        "",
        "| capability | score | bar |",
        "|---|---|---|",
    ]
    for key, value in scores.items():
        if key in ("items", "parameters", "seconds", "n"):
            continue
        bar = BARS.get(key)
        lines.append(f"| {key} | {_fmt(value)} | {'>= ' + str(bar) if bar else ''} |")
    lines += ["", f"Items per task family: {scores.get('n', '?')}; evaluation took {scores.get('seconds', '?')} s.", ""]
    return "\n".join(lines)
