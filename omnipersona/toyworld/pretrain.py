"""Pretraining the `toy` backbone on the toy world, on a CPU.

Stage 1 trains the small VAE (reconstruction + a light KL) on rendered scenes and sets the latent
shift/scale so that latents are about unit variance. Stage 1b pretrains the ViT (and connector)
to read every patch densely: which object covers it and that object's shape, colour, pattern,
size and position, and the place. BAGEL starts from a pretrained SigLIP; trained only through the
LLM's answers our ViT never learned shape or marking (VQA on a lone object stayed at chance for
14,500 steps), while this dense signal teaches it in minutes. Stage 2 freezes the VAE and trains every other
weight of the MoT on a mix of world tasks, drawn fresh every step:

- caption / vqa: ViT(image) + question -> answer (understanding expert, CE);
- t2i: caption -> noised latents of the image (generation expert, flow MSE);
- t2i_single: the same on scenes of one object, whose caption names all its attributes (off in
  the default mix; batches of it teach the generator what a marking word asks for, which the
  usual mix barely does: docs/benchmark.md);
- edit: clean VAE + ViT of the source + instruction -> noised target (flow MSE);
- recaption: the three text tasks of explicit knowledge recaptioning (CE);
- naming: in-context definitions ("n5 is a large red dotted star ; its home is the beach .")
  then a recognition / fact / attribute question, or "a photo of n5" -> image: the slot that
  learned concept tokens later imitate.

Everything is seeded; the loop reports (stage, step, total, loss parts) through `progress`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..backbone import Backbone
from ..config import get_config
from ..data import EncodedImages, Segment, load_image, pack_segments
from ..losses import LossWeights, joint_loss
from ..model import OmniModel
from ..sequence import LossKind
from . import tasks
from .language import build_toy_tokenizer
from .world import (
    COLOURS,
    PATTERNS,
    PLACES,
    POSITION_CENTRE,
    POSITIONS,
    SHAPES,
    SIZE_FRACTION,
    SIZES,
    Scene,
    random_scene,
    render,
)

ProgressFn = Callable[[str, int, int, dict[str, float]], None]


@dataclass
class PretrainConfig:
    seed: int = 0
    image_size: int = 32
    vae_steps: int = 3000  # 1500 left markings blurred (patterns read 0.93 at 3000, 0.70 at 1500)
    vae_batch: int = 32
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    vit_steps: int = 2500
    vit_batch: int = 32
    vit_lr: float = 2e-3
    steps: int = 17000
    batch_size: int = 16
    lr: float = 1e-3
    # Stage 2 keeps its peak rate after the warm-up instead of decaying it on a cosine, for runs
    # in phases (one-object text-to-image, then the mix; docs/benchmark.md): one-object batches
    # taught the marking word faster at a flat rate (0.184 against 0.142 after 3,000 of them).
    constant_lr: bool = False
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    timestep_shift: float = 1.0
    # Keep the ViT and connector as stage 1b left them: trained on in stage 2, the LLM's loss
    # washed their shape reading out (a fresh linear readout per patch fell from 0.95 to 0.40).
    freeze_vit: bool = True
    # Train only the generation expert and the latent in/out layers: the base's understanding (VQA,
    # naming, recaptioning, captions) then stays exactly as the run before left it, since text and
    # ViT tokens with no latent or generation concept token before them never pass through a
    # generation weight. (Contexts that hold a clean latent or a concept's <gen_i> tokens do.)
    generation_only: bool = False
    # Relative frequency of each task in a batch; naming is weighted up (DESIGN: recognition of
    # concept tokens hooks into it).
    mix: dict[str, float] = field(default_factory=lambda: {
        "caption": 1.5, "vqa": 4.5, "t2i": 3.0, "edit": 2.0, "recaption": 1.0, "naming": 3.5,
        "t2i_single": 0.0})
    loss_weights: LossWeights = field(default_factory=LossWeights)


def new_toy_backbone(seed: int = 0) -> Backbone:
    """Random `toy` weights with the world's tokenizer."""
    tokenizer = build_toy_tokenizer()
    config = get_config("toy", vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    return Backbone(config, OmniModel(config), tokenizer)


def _pixels(images: list, size: int) -> torch.Tensor:
    return torch.stack([load_image(im, size) for im in images])


def _lr(step: int, cfg: PretrainConfig, base: float, total: int, constant: bool = False) -> float:
    """Linear warm-up, then cosine decay to 10% (or, with `constant`, `base` from then on)."""
    if step < cfg.warmup:
        return base * (step + 1) / cfg.warmup
    if constant:
        return base
    progress = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# -- stage 1: the VAE -----------------------------------------------------------------------------
def pretrain_vae(backbone: Backbone, cfg: PretrainConfig, progress: ProgressFn | None = None) -> list[dict]:
    vae = backbone.model.vae
    vae.requires_grad_(True).train()
    rng = np.random.default_rng(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    history = []
    for step in range(cfg.vae_steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg, cfg.vae_lr, cfg.vae_steps)
        x = _pixels([render(random_scene(rng), cfg.image_size, seed=int(rng.integers(1 << 30)))
                     for _ in range(cfg.vae_batch)], cfg.image_size)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        kl = posterior.kl().mean()
        loss = mse + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        parts = {"mse": mse.item(), "kl": kl.item()}
        history.append(parts)
        if progress:
            progress("vae", step + 1, cfg.vae_steps, parts)
    vae.requires_grad_(False).eval()
    # Latent statistics -> shift and scale so the flow sees unit-variance latents.
    with torch.no_grad():
        x = _pixels([render(random_scene(rng), cfg.image_size, seed=i) for i in range(256)], cfg.image_size)
        z = vae.encode(x).latent_dist.mode()
    backbone.config.vae["shift_factor"] = float(z.mean())
    backbone.config.vae["scaling_factor"] = float(1.0 / z.std())
    backbone._fingerprint = None
    return history


# -- stage 1b: the ViT reads every patch --------------------------------------------------------
# `position` (the covering object's position class) is a target too: the LLM reads attributes off
# the object's patches, and without it position VQA stayed at chance in every stage-2 variant.
VIT_TARGETS = {"shape": SHAPES, "colour": tuple(COLOURS), "pattern": PATTERNS, "size": SIZES,
               "position": POSITIONS}


def patch_labels(scenes: list[Scene], side: int) -> dict[str, torch.Tensor]:
    """Per-patch targets [B, side*side] (row-major): `object` (0/1: the patch centre lies in an
    object's box), the covering object's attributes (-100 where none), and the place."""
    centres = (np.arange(side) + 0.5) / side
    B, n = len(scenes), side * side
    labels = {k: torch.full((B, n), -100, dtype=torch.long) for k in VIT_TARGETS}
    labels["object"] = torch.zeros(B, n, dtype=torch.long)
    labels["place"] = torch.tensor([[PLACES.index(s.place)] * n for s in scenes], dtype=torch.long)
    for b, scene in enumerate(scenes):
        for obj in scene.objects:
            cx, cy = POSITION_CENTRE[obj.position]
            half = SIZE_FRACTION[obj.size] / 2
            inside = (np.abs(centres[:, None] - cy) < half) & (np.abs(centres[None, :] - cx) < half)  # [rows, cols]
            idx = torch.from_numpy(np.flatnonzero(inside))
            labels["object"][b, idx] = 1
            for k, values in VIT_TARGETS.items():
                labels[k][b, idx] = values.index(getattr(obj, k))
    return labels


def pretrain_vit(backbone: Backbone, cfg: PretrainConfig, progress: ProgressFn | None = None) -> list[dict]:
    """Stage 1b: ViT + connector with linear per-patch heads (dropped afterwards) on the targets
    of `patch_labels`. Returns per-step losses and patch accuracies."""
    model = backbone.model
    H = model.config.hidden_size
    side = cfg.image_size // model.config.vit_patch_size
    torch.manual_seed(cfg.seed + 2)
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(H, len(v)) for k, v in VIT_TARGETS.items()})
    heads["object"] = torch.nn.Linear(H, 2)
    heads["place"] = torch.nn.Linear(H, len(PLACES))
    params = [*model.vit_model.parameters(), *model.connector.parameters(), *heads.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.vit_lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed + 3)
    history = []
    for step in range(cfg.vit_steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg, cfg.vit_lr, cfg.vit_steps)
        scenes = [random_scene(rng) for _ in range(cfg.vit_batch)]
        x = _pixels([render(s, cfg.image_size, seed=int(rng.integers(1 << 30))) for s in scenes], cfg.image_size)
        labels = patch_labels(scenes, side)
        tokens = model.vit_tokens(x)  # [B, side*side, H]
        parts, loss = {}, 0.0
        for k, head in heads.items():
            logits = head(tokens)
            part = F.cross_entropy(logits.flatten(0, 1), labels[k].flatten(), ignore_index=-100)
            loss = loss + part
            known = labels[k] >= 0
            parts[k] = float((logits.argmax(-1)[known] == labels[k][known]).float().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        parts["loss"] = loss.item()
        history.append(parts)
        if progress:
            progress("vit", step + 1, cfg.vit_steps, parts)
    for p in params:
        p.requires_grad_(False)
        p.grad = None
    return history


# -- stage 2: the MoT -----------------------------------------------------------------------------
@dataclass
class WorldSample:
    segments: list[Segment]
    images: list  # PIL images the segments index (local indices)
    task: str


def _text_task(t: tasks.TextTask) -> list[Segment]:
    return [Segment("text", c) for c in t.context] + [Segment("answer", t.target)]


def make_sample(task: str, rng: np.random.Generator, size: int) -> WorldSample:
    seed = int(rng.integers(1 << 30))
    if task in ("caption", "vqa", "t2i", "t2i_single"):
        scene = random_scene(rng, n_objects=1 if task == "t2i_single" else None)
        img = render(scene, size, seed=seed)
        if task == "caption":
            segs = [Segment("vit", image=0), Segment("text", tasks.CAPTION_QUESTION),
                    Segment("answer", tasks.caption(scene))]
        elif task == "vqa":
            ex = tasks.vqa(scene, rng)
            segs = [Segment("vit", image=0), Segment("text", ex.question), Segment("answer", ex.answer)]
        else:
            segs = [Segment("text", tasks.caption(scene)), Segment("target", image=0)]
        return WorldSample(segs, [img], task)
    if task == "edit":
        ex = tasks.edit(random_scene(rng), rng)
        src, tgt = render(ex.source, size, seed=seed), render(ex.target, size, seed=seed)
        segs = [Segment("latent", image=0), Segment("vit", image=0), Segment("text", ex.instruction),
                Segment("target", image=1, loss=LossKind.EDITING)]
        return WorldSample(segs, [src, tgt], task)
    if task == "recaption":
        ex = tasks.recaption_example(tasks.random_concept(rng), rng, name=tasks.NAMES[int(rng.integers(10))])
        stage = ex.stages()[int(rng.integers(3))]
        return WorldSample(_text_task(stage), [], task)
    if task == "naming":
        if rng.random() < 0.25:  # "a photo of n5" with n5 defined in context -> its image
            concept = tasks.random_concept(rng)
            name = tasks.NAMES[int(rng.integers(10))]
            scene = tasks.concept_scene(concept, rng)
            segs = [Segment("text", tasks.definition(concept, name)),
                    Segment("text", tasks.GENERATION_PROMPT.format(c=name)), Segment("target", image=0)]
            return WorldSample(segs, [render(scene, size, seed=seed)], task)
        ex = tasks.naming_example(rng, n_defs=int(rng.integers(1, 3)))
        segs = [Segment("text", d) for d in ex.definitions]
        images = []
        if ex.scene is not None:
            segs.append(Segment("vit", image=0))
            images.append(render(ex.scene, size, seed=seed))
        segs += [Segment("text", ex.question), Segment("answer", ex.answer)]
        return WorldSample(segs, images, task)
    raise ValueError(f"unknown task {task!r}")


def pack_world_batch(backbone: Backbone, samples: list[WorldSample], generator: torch.Generator,
                     timestep_shift: float, image_size: int):
    """Renders -> frozen VAE latents and (differentiable) ViT tokens -> one packed sequence."""
    model = backbone.model
    images, offsets = [], []
    for s in samples:
        offsets.append(len(images))
        images += s.images
    segments = [[Segment(g.kind, g.text, g.image + off if g.image >= 0 else -1, g.loss) for g in s.segments]
                for s, off in zip(samples, offsets, strict=True)]
    if images:
        pixels = _pixels(images, image_size)
        vit = model.vit_tokens(pixels)
        with torch.no_grad():
            lat = model.patchify(model.encode_latents(pixels))
        f = model.config.vae_downsample * model.config.latent_patch_size
        encoded = EncodedImages(vit, lat, model.latent_position_ids(image_size // f, image_size // f))
    else:
        encoded = EncodedImages(torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    bank = backbone.new_bank()
    return pack_segments(model, bank, backbone.special_ids, segments, encoded, generator, timestep_shift)


GENERATION_LAYERS = ("vae2llm.", "llm2vae.", "time_embedder.")


def trainable_parameters(model: OmniModel, train_vit: bool = True,
                         generation_only: bool = False) -> list[torch.nn.Parameter]:
    """Everything but the VAE and the fixed sin-cos tables (and the ViT + connector unless
    `train_vit`); with `generation_only`, only the generation expert's weights (`*_moe_gen`) and
    the layers into and out of the latent space."""
    if generation_only:
        return [p for n, p in model.named_parameters() if "_moe_gen" in n or n.startswith(GENERATION_LAYERS)]
    frozen = ("vae.",) if train_vit else ("vae.", "vit_model.", "connector.")
    return [p for n, p in model.named_parameters() if not n.startswith(frozen) and "pos_embed.pos_embed" not in n]


def pretrain_backbone(backbone: Backbone, cfg: PretrainConfig, progress: ProgressFn | None = None,
                      deadline: float | None = None) -> list[dict]:
    """Stage 2. Stops early (keeping what it learned) at `deadline` (time.monotonic())."""
    model = backbone.model
    params = trainable_parameters(model, train_vit=not cfg.freeze_vit, generation_only=cfg.generation_only)
    for p in params:
        p.requires_grad_(True)
    model.train()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed + 1)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    names = list(cfg.mix)
    weights = np.array([cfg.mix[n] for n in names], dtype=np.float64)
    weights /= weights.sum()
    history = []
    for step in range(cfg.steps):
        if deadline is not None and time.monotonic() > deadline:
            break
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg, cfg.lr, cfg.steps, constant=cfg.constant_lr)
        picked = rng.choice(len(names), size=cfg.batch_size, p=weights)
        samples = [make_sample(names[i], rng, cfg.image_size) for i in picked]
        seq = pack_world_batch(backbone, samples, g, cfg.timestep_shift, cfg.image_size)
        loss, parts = joint_loss(model, seq, None, None, cfg.loss_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        history.append(parts)
        if progress:
            progress("backbone", step + 1, cfg.steps, parts)
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    model.eval()
    backbone._fingerprint = None
    return history


def pretrain_toy(out: str | Path, cfg: PretrainConfig | None = None, minutes: float = 90.0,
                 progress: ProgressFn | None = None, init: str | Path | None = None) -> dict:
    """Both stages within `minutes` (stage 2 stops early at the deadline); saves the backbone,
    `losses.jsonl` and `pretrain.json` (config, time, final losses) under `out`.

    With `init` (a folder a previous run saved), stage 1 is skipped and stage 2 continues from
    those weights with a fresh schedule (use another seed, so it draws new samples); the report
    lists every run so the total time stays on record."""
    cfg = cfg or PretrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    previous: list[dict] = []
    if init is not None:
        backbone = Backbone.load(init)
        before = json.loads((Path(init) / "pretrain.json").read_text())
        previous = before.get("runs", [before])
        vae_hist: list[dict] = []
        vit_hist: list[dict] = []
    else:
        backbone = new_toy_backbone(cfg.seed)
        vae_hist = pretrain_vae(backbone, cfg, progress)
    vae_seconds = time.monotonic() - start
    if init is None:
        vit_hist = pretrain_vit(backbone, cfg, progress)
    vit_seconds = time.monotonic() - start - vae_seconds
    mot_hist = pretrain_backbone(backbone, cfg, progress, deadline=start + minutes * 60)
    seconds = time.monotonic() - start
    backbone.save(out)
    first_step = sum(r["backbone_steps"] for r in previous)
    mode = "a" if init is not None and Path(init).resolve() == out.resolve() else "w"
    if init is not None and mode == "w" and (Path(init) / "losses.jsonl").is_file():
        (out / "losses.jsonl").write_text((Path(init) / "losses.jsonl").read_text())
        mode = "a"
    with open(out / "losses.jsonl", mode) as f:
        for i, h in enumerate(vae_hist):
            f.write(json.dumps({"stage": "vae", "step": i + 1, **h}) + "\n")
        for i, h in enumerate(vit_hist):
            f.write(json.dumps({"stage": "vit", "step": i + 1, **h}) + "\n")
        for i, h in enumerate(mot_hist):
            f.write(json.dumps({"stage": "backbone", "step": first_step + i + 1, **h}) + "\n")

    def tail(hist: list[dict]) -> dict:
        last = hist[-50:]
        return {k: sum(h[k] for h in last) / len(last) for k in last[0]} if last else {}

    run = {
        "config": asdict(cfg),
        "init": str(init) if init is not None else None,
        "vae_seconds": round(vae_seconds, 1),
        "vit_seconds": round(vit_seconds, 1),
        "seconds": round(seconds, 1),
        "backbone_steps": len(mot_hist),
        "final_vae_losses": tail(vae_hist),
        "final_vit_scores": tail(vit_hist),
        "final_backbone_losses": tail(mot_hist),
        "torch_threads": torch.get_num_threads(),
    }
    runs = [{k: v for k, v in r.items() if k != "fingerprint"} for r in previous] + [run]
    report = {
        **run,
        "final_vae_losses": next((r["final_vae_losses"] for r in runs if r["final_vae_losses"]), {}),
        "final_vit_scores": next((r["final_vit_scores"] for r in runs if r.get("final_vit_scores")), {}),
        "vae_seconds": sum(r["vae_seconds"] for r in runs),
        "vit_seconds": sum(r.get("vit_seconds", 0.0) for r in runs),
        "seconds": round(sum(r["seconds"] for r in runs), 1),
        "backbone_steps": sum(r["backbone_steps"] for r in runs),
        "fingerprint": backbone.fingerprint(),
        "runs": runs,
    }
    (out / "pretrain.json").write_text(json.dumps(report, indent=2))
    return report
