"""Inference: greedy text decoding and the Euler flow sampler, both over packed, KV-cached contexts.

A *context* is the list of blocks a request conditions on (system prompts, text, ViT tokens,
clean latents). Many contexts — the CFG branches of one request, and the requests of a batch —
are packed into one sequence and run once; their keys and values are kept. Each flow step then
runs only the image tokens of every branch in one forward pass, each attending to its own
context through the mask. `use_cache=False` recomputes the whole sequence every step (the
reference the cache is tested against).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .flow import inference_timesteps
from .layers import LayerCache
from .model import KVCache, OmniModel
from .sequence import SequenceBuilder, SpecialIds
from .tokens import ConceptBank

# A context block: ("text", ids) | ("vit", [n, H]) | ("latent", ([n, D], position ids)).
Block = tuple[str, object]


def add_blocks(builder: SequenceBuilder, blocks: list[Block]) -> None:
    for kind, value in blocks:
        if kind == "text":
            builder.add_text(value)
        elif kind == "vit":
            builder.add_vit(value)
        elif kind == "latent":
            x0, pos = value
            builder.add_latent(x0, pos)
        else:
            raise ValueError(f"unknown block kind {kind!r}")


class KVContext:
    """Cached keys/values of packed contexts plus the sample each cached position belongs to."""

    def __init__(self, cache: KVCache, sample_id: torch.Tensor):
        self.cache = cache
        self.sample_id = sample_id  # [L_past]

    def mask(self, query_sample: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """[L_q, L_past + L_q]: a query sees its own sample's cached context, then `query_mask`."""
        return torch.cat([query_sample[:, None] == self.sample_id[None, :], query_mask], dim=1)

    def per_sample(self, num_samples: int) -> PerSampleContext:
        """The same cache regrouped per sample for flow steps (`PerSampleContext`); a sample may
        have no cached context (an unconditional branch)."""
        counts = torch.bincount(self.sample_id, minlength=num_samples)
        P = int(counts.max())
        # [S, P] position of each sample's j-th cached token (padding points at position 0)
        order = torch.argsort(self.sample_id, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        j = torch.arange(P, device=counts.device)
        valid = j[None, :] < counts[:, None]
        gather = order[torch.where(valid, starts[:, None] + j[None, :], 0)]
        cache = [LayerCache(c.key[0][:, gather].transpose(0, 1), c.value[0][:, gather].transpose(0, 1))
                 for c in self.cache]  # [S, n_kv, P, hd]
        return PerSampleContext(cache, valid)

    def extend(self, new: KVCache, sample_id: torch.Tensor) -> None:
        for old, cur in zip(self.cache, new, strict=True):
            old.key = torch.cat([old.key, cur.key], dim=2)
            old.value = torch.cat([old.value, cur.value], dim=2)
        self.sample_id = torch.cat([self.sample_id, sample_id])


class PerSampleContext:
    """Cached contexts padded per sample, [S, n_kv, P, hd] per layer, for queries that come as S
    equal-length samples in the cache's order (a flow step: one latent block per branch). The
    step's attention then runs per sample instead of over the whole packed batch."""

    def __init__(self, cache: KVCache, valid: torch.Tensor):
        self.cache = cache
        self.valid = valid  # [S, P] bool: real cached positions

    def mask(self, query_sample: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        """[S, n, P + n] from the step's packed [L, L] mask (its per-sample diagonal blocks)."""
        S, L = self.valid.shape[0], query_mask.shape[0]
        n = L // S
        expected = torch.arange(S, device=query_sample.device).repeat_interleave(n)
        if n * S != L or not torch.equal(query_sample, expected):
            raise ValueError("per-sample attention needs the same number of queries per sample, in cache order")
        own = query_mask.view(S, n, S, n).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [S, n, n]
        return torch.cat([self.valid[:, None, :].expand(S, n, -1), own], dim=2)


class Runner:
    """Packs contexts for one backbone + concept bank and runs them."""

    def __init__(self, model: OmniModel, bank: ConceptBank, special: SpecialIds):
        self.model, self.bank, self.special = model, bank, special

    def builder(self) -> SequenceBuilder:
        cfg = self.model.config
        return SequenceBuilder(self.special, cfg.hidden_size, cfg.latent_token_dim, self.bank.gen_token_ids())

    def run(self, seq, past: KVContext | PerSampleContext | None = None):
        rows, mask = self.bank.embedding_rows(), None
        if past is not None:
            mask = past.mask(seq.sample_id, seq.attn_mask)
        return self.model(seq, rows, past=None if past is None else past.cache, attn_mask=mask)

    def prefill(self, contexts: list[list[Block]]) -> tuple[KVContext, list[int]]:
        """Runs every context once; returns the cache and each context's next RoPE position."""
        b = self.builder()
        for blocks in contexts:
            b.start_sample()
            add_blocks(b, blocks)
        seq = b.build()
        _, cache = self.run(seq)
        return KVContext(cache, seq.sample_id), seq.next_position


# -- text ---------------------------------------------------------------------------------------
@torch.no_grad()
def greedy_answers(runner: Runner, contexts: list[list[Block]], max_new_tokens: int = 32) -> list[list[int]]:
    """Answers to each context (which ends with the question block), decoded greedily together:
    one forward pass per new token for the whole batch."""
    past, positions = runner.prefill(contexts)
    n = len(contexts)
    answers: list[list[int]] = [[] for _ in range(n)]
    next_ids = [runner.special.im_start] * n  # open the answer block
    done = [False] * n
    for _ in range(max_new_tokens + 1):
        live = [i for i in range(n) if not done[i]]
        if not live:
            break
        b = runner.builder()
        for i in range(n):  # every sample keeps its id; finished ones get no tokens
            b.start_sample(positions[i])
            if not done[i]:
                b.add_continuation([next_ids[i]])
        seq = b.build()
        hidden, cache = runner.run(seq, past)
        past.extend(cache, seq.sample_id)
        logits = runner.model.logits(hidden, runner.bank.head_rows())  # one row per live sample
        chosen = logits.argmax(-1).tolist()
        for row, i in enumerate(live):
            positions[i] += 1
            tok = chosen[row]
            if tok == runner.special.im_end or len(answers[i]) >= max_new_tokens:
                done[i] = True
            else:
                answers[i].append(tok)
                next_ids[i] = tok
    return answers


# -- images -------------------------------------------------------------------------------------
@dataclass
class SamplerConfig:
    num_steps: int = 50
    shift: float = 3.0
    cfg_text: float = 4.0
    cfg_img: float = 1.0
    cfg_interval: tuple[float, float] = (0.4, 1.0)
    renorm_min: float = 0.0
    renorm_per_token: bool = False
    use_cache: bool = True

    @classmethod
    def for_editing(cls, **kw) -> SamplerConfig:
        base = dict(cfg_text=4.0, cfg_img=2.0, cfg_interval=(0.0, 1.0), renorm_per_token=True)
        return cls(**(base | kw))


@dataclass
class ImageRequest:
    """One image to sample: the conditional context and the CFG contexts it needs."""

    cond: list[Block]
    text_uncond: list[Block] | None = None  # used when cfg_text != 1
    image_uncond: list[Block] | None = None  # used when cfg_img != 1 (editing)
    seed: int = 0
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


def combine_cfg(v_c: torch.Tensor, v_txt: torch.Tensor | None, v_img: torch.Tensor | None,
                cfg: SamplerConfig, t: float) -> torch.Tensor:
    """v = v_img + s_img * ((v_txt + s_txt * (v_c - v_txt)) - v_img) inside the CFG interval,
    then renormalised to at most the conditional norm."""
    lo, hi = cfg.cfg_interval
    if not (lo < t <= hi) or (v_txt is None and v_img is None):
        return v_c
    v = v_c if v_txt is None else v_txt + cfg.cfg_text * (v_c - v_txt)
    if v_img is not None:
        v = v_img + cfg.cfg_img * (v - v_img)
    if cfg.renorm_per_token:
        scale = v_c.norm(dim=-1, keepdim=True) / (v.norm(dim=-1, keepdim=True) + 1e-8)
    else:
        scale = v_c.norm() / (v.norm() + 1e-8)
    return v * scale.clamp(min=cfg.renorm_min, max=1.0)


@torch.no_grad()
def sample_latents(runner: Runner, requests: list[ImageRequest], rows: int, cols: int) -> torch.Tensor:
    """Euler sampling of every request at once -> latent tokens [R, rows*cols, D].

    All requests share the step count and shift (a batch is grouped by them); CFG scales may
    differ per request. Every branch of every request runs in the same forward pass per step.
    """
    model = runner.model
    steps = {(r.sampler.num_steps, r.sampler.shift, r.sampler.use_cache) for r in requests}
    if len(steps) != 1:
        raise ValueError("requests in one batch must share num_steps, shift and use_cache")
    num_steps, shift, use_cache = steps.pop()
    D = model.config.latent_token_dim
    pos = model.latent_position_ids(rows, cols)

    # Branches: (request index, role) with role 0 = cond, 1 = text-uncond, 2 = image-uncond.
    branches: list[tuple[int, int]] = []
    contexts: list[list[Block]] = []
    for r, req in enumerate(requests):
        for role, ctx in enumerate((req.cond, req.text_uncond, req.image_uncond)):
            wanted = role == 0 or (role == 1 and req.sampler.cfg_text != 1) or (role == 2 and req.sampler.cfg_img != 1)
            if wanted and ctx is not None:
                branches.append((r, role))
                contexts.append(ctx)

    # Noise from a CPU generator per request: the same seed gives the same image alone or batched.
    x = torch.stack([
        torch.randn(rows * cols, D, generator=torch.Generator().manual_seed(req.seed)) for req in requests
    ]).to(model.llm2vae.weight.device)
    past, positions = runner.prefill(contexts) if use_cache else (None, None)
    per_sample = past.per_sample(len(contexts)) if past is not None else None  # each step: B small attentions
    ts = inference_timesteps(num_steps, shift)
    for i in range(num_steps):
        t, t_next = float(ts[i]), float(ts[i + 1])
        b = runner.builder()
        lat_index = []
        for k, (r, _) in enumerate(branches):
            if use_cache:
                b.start_sample(positions[k])
            else:
                b.start_sample()
                add_blocks(b, contexts[k])
            lat_index.append(b.add_latent(x[r], pos, t=t, noised=True))
        seq = b.build()
        hidden, _ = runner.run(seq, per_sample)
        index = torch.tensor(lat_index, device=hidden.device).reshape(-1)
        v_all = model.velocity(hidden[index]).reshape(len(branches), -1, D)
        per_req: dict[int, dict[int, torch.Tensor]] = {}
        for k, (r, role) in enumerate(branches):
            per_req.setdefault(r, {})[role] = v_all[k]
        for r, req in enumerate(requests):
            vs = per_req[r]
            v = combine_cfg(vs[0], vs.get(1), vs.get(2), req.sampler, t)
            x[r] = x[r] - v * (t - t_next)
    return x
