"""`train_concept`: learn one concept's tokens on a frozen backbone.

Two backends share every line except the optimiser step: plain PyTorch (AdamW) and DeepSpeed
(`deepspeed.initialize` with a JSON config and the same client AdamW). Frozen encoders run once
per image before the loop. Checkpoints hold the token rows, the optimiser state and the RNG state
(all in safetensors + JSON, no pickle), written to a temporary folder and then published by a
`latest` marker, so a resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .backbone import Backbone
from .data import ConceptData, build_concept_samples, encode_images, pack_samples
from .losses import LossWeights, joint_loss
from .tokens import ConceptTokens

ProgressFn = Callable[[int, int, dict[str, float]], None]

# Words whose mean embedding starts the concept rows.
INIT_WORDS = ("a", "photo", "of", "the")


@dataclass
class TrainRecipe:
    steps: int = 200
    batch_size: int = 8
    # AdamW moves each row entry by up to ~lr per step: 5e-2 is ~6 % of the toy embeddings' std
    # (0.88). At 5e-3 the tokens underfit in 300 steps (docs/benchmark.md). A backbone with
    # smaller embeddings wants a proportionally smaller lr.
    lr: float = 5e-2
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    loss_weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    checkpoint_every: int = 0  # 0: only at cancellation and at the end
    n_und: int = 16
    n_gen: int = 16
    method: str = "decoupled"  # or "shared" (the no-decoupling ablation)
    timestep_shift: float = 1.0
    backend: str = "torch"  # or "deepspeed"
    deepspeed_config: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainRecipe:
        d = dict(d)
        if "loss_weights" in d and isinstance(d["loss_weights"], dict):
            d["loss_weights"] = LossWeights(**d["loss_weights"])
        return cls(**d)


@dataclass
class TrainResult:
    concept: ConceptTokens
    history: list[dict[str, float]]  # loss parts per step
    steps_done: int
    resumed_from: int  # 0 for a fresh run
    stopped: bool  # True when `should_stop` ended the run early
    seconds: float

    @property
    def metrics(self) -> dict[str, float]:
        tail = self.history[-10:] or [{}]
        keys = tail[0].keys()
        return {f"final_{k}": sum(h[k] for h in tail) / len(tail) for k in keys} | {"steps": self.steps_done}


# -- checkpoints --------------------------------------------------------------------------------
LATEST = "latest"


def save_checkpoint(folder: Path, step: int, concept: ConceptTokens, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, history: list[dict[str, float]], recipe: TrainRecipe) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tag = f"step_{step:07d}"
    tmp = folder / f".{tag}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {"embeddings": concept.embeddings.detach(), "head_rows": concept.head_rows.detach(),
               "rng": generator.get_state()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / "state.safetensors")
    meta = {"step": step, "history": history, "recipe": recipe.to_dict(), "param_groups": opt["param_groups"]}
    (tmp / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(folder / tag, ignore_errors=True)
    tmp.rename(folder / tag)
    (folder / f".{LATEST}.tmp").write_text(tag)
    os.replace(folder / f".{LATEST}.tmp", folder / LATEST)  # the completion marker


def load_checkpoint(folder: Path, concept: ConceptTokens, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator) -> tuple[int, list[dict[str, float]]]:
    tag = (folder / LATEST).read_text().strip()
    tensors = load_file(folder / tag / "state.safetensors")
    meta = json.loads((folder / tag / "meta.json").read_text())
    with torch.no_grad():
        concept.embeddings.copy_(tensors["embeddings"])
        concept.head_rows.copy_(tensors["head_rows"])
    generator.set_state(tensors["rng"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta["step"], meta["history"]


def latest_step(folder: str | Path | None) -> int:
    """The step of the published checkpoint in `folder`, 0 if there is none."""
    marker = Path(folder) / LATEST if folder is not None else None
    if marker is None or not marker.is_file():
        return 0
    meta = json.loads((marker.parent / marker.read_text().strip() / "meta.json").read_text())
    return meta["step"]


# -- backends -----------------------------------------------------------------------------------
class TorchStep:
    def __init__(self, concept: ConceptTokens, optimizer: torch.optim.Optimizer, recipe: TrainRecipe):
        self.concept, self.optimizer, self.recipe = concept, optimizer, recipe

    def __call__(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.concept.parameters(), self.recipe.grad_clip)
        self.optimizer.step()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_config(recipe: TrainRecipe) -> dict[str, Any]:
    cfg = {
        "train_micro_batch_size_per_gpu": recipe.batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": recipe.grad_clip,
        "zero_optimization": {"stage": 0},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    cfg.update(recipe.deepspeed_config or {})
    return cfg


class DeepSpeedStep:
    """The DeepSpeed engine wraps only the concept tokens: the backbone is never handed to it, so
    it allocates nothing for the backbone (no fp32 master copy, no optimiser state)."""

    def __init__(self, concept: ConceptTokens, optimizer: torch.optim.Optimizer, recipe: TrainRecipe):
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # Single process without a launcher: give torch.distributed what it needs (else DeepSpeed
        # tries MPI discovery).
        for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
            os.environ.setdefault(k, v)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        import deepspeed

        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=concept, optimizer=optimizer, config=deepspeed_config(recipe)
        )

    def __call__(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()


# -- the loop -----------------------------------------------------------------------------------
def new_concept(backbone: Backbone, name: str, recipe: TrainRecipe) -> ConceptTokens:
    concept = ConceptTokens(name, backbone.config.hidden_size, recipe.n_und, recipe.n_gen, recipe.method)
    lm = backbone.model.language_model
    ids = [i for i in backbone.tokenizer.convert_tokens_to_ids(list(INIT_WORDS)) if i is not None]
    concept.init_from(lm.model.embed_tokens.weight, lm.lm_head.weight, ids, seed=recipe.seed)
    return concept


def train_concept(
    backbone: Backbone,
    data: ConceptData,
    name: str,
    recipe: TrainRecipe | None = None,
    *,
    init: ConceptTokens | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | Path | None = None,
    after_step: Callable[[int, ConceptTokens], None] | None = None,
) -> TrainResult:
    """Train the tokens of concept `name` on `data`; the backbone stays bit-identical.

    `init` warm-starts from existing tokens (a new version after more photos or facts). With
    `checkpoint_dir`, a run resumes from its `latest` checkpoint there. `after_step(step, tokens)`
    sees the live tokens after each step (and its checkpoint), e.g. to render a preview or save
    them on request; it must not modify them.
    """
    recipe = recipe or TrainRecipe()
    if recipe.backend not in ("torch", "deepspeed"):
        raise ValueError(f"backend must be 'torch' or 'deepspeed', got {recipe.backend!r}")
    start_time = time.monotonic()
    model = backbone.model
    concept = new_concept(backbone, name, recipe)
    if init is not None:
        concept.load_state_dict(init.state_dict())
    concept.to(next(model.parameters()).device)
    bank = backbone.new_bank()
    bank.add(concept)
    special = backbone.special_ids

    prepared = build_concept_samples(data, concept.identifier, backbone.config.image_size)
    encoded = encode_images(model, prepared.pixels)  # frozen encoders: once per image

    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(concept.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    step, history = 0, []
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt is not None and (ckpt / LATEST).is_file():
        step, history = load_checkpoint(ckpt, concept, optimizer, generator)
    resumed_from = step
    apply_step = (DeepSpeedStep if recipe.backend == "deepspeed" else TorchStep)(concept, optimizer, recipe)

    stopped = False
    n = len(prepared.samples)
    while step < recipe.steps:
        if should_stop is not None and should_stop():
            stopped = True
            break
        pick = torch.randint(n, (recipe.batch_size,), generator=generator).tolist()
        seq = pack_samples(model, bank, special, [concept], [prepared.samples[i] for i in pick],
                           encoded, generator, recipe.timestep_shift)
        loss, parts = joint_loss(model, seq, bank.embedding_rows(), bank.head_rows(), recipe.loss_weights)
        apply_step(loss)
        step += 1
        history.append(parts)
        if progress is not None:
            progress(step, recipe.steps, parts)
        if ckpt is not None and recipe.checkpoint_every and step % recipe.checkpoint_every == 0:
            save_checkpoint(ckpt, step, concept, optimizer, generator, history, recipe)
        if after_step is not None:
            after_step(step, concept)
    if ckpt is not None and (stopped or not recipe.checkpoint_every or step % recipe.checkpoint_every):
        save_checkpoint(ckpt, step, concept, optimizer, generator, history, recipe)
    return TrainResult(concept, history, step, resumed_from, stopped, time.monotonic() - start_time)
