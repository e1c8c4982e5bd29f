"""Where does text-to-image lose the attributes a caption names? (docs/benchmark.md)

    python docs/benchmark/probe_generation.py [BACKBONE_DIR]

Four measurements, all judged by the committed recogniser:
1. per attribute, on `evaluate-base`'s 100 held-out captions (seed 4321), under the default
   sampler and under other step counts, CFG scales, CFG intervals and timestep shifts;
2. which marking the model draws for each marking a lone-object caption names (160 captions);
3. restarts from a partly noised render of the very scene the caption describes: x_t = (1 - t) x0
   + t noise, then the usual sampler from t down to 0. At t near 0 the answer is the render itself;
   the t at which an attribute starts to come out wrong is the stage of sampling that loses it;
4. how far one attribute's change moves a scene's latent (what the flow loss sees of it): the
   squared latent distance between a render and the same render with one attribute of its first
   object changed, against the latent's own squared norm (60 scenes, one change per attribute),
   and how often a render's markings read back right after the VAE alone (300 renders).
"""

from __future__ import annotations

import collections
import dataclasses
import sys

import numpy as np
import torch

from omnipersona.backbone import load_backbone
from omnipersona.data import load_image
from omnipersona.flow import inference_timesteps
from omnipersona.pipeline import OmniPipeline
from omnipersona.sampler import SamplerConfig, combine_cfg
from omnipersona.toyworld import RECOGNISER_DIR, tasks
from omnipersona.toyworld.evaluate import draw_captions, generation_scores
from omnipersona.toyworld.recogniser import load_recogniser
from omnipersona.toyworld.world import COLOURS, PATTERNS, SHAPES, SIZES, Scene, random_scene, render


def per_attribute(truths: list[Scene], seen: list[Scene]) -> dict[str, float]:
    scores = generation_scores(truths, seen)
    return {"all": scores["generation_attribute_accuracy"], "count": scores["generation_object_count"],
            **{a: scores[f"generation_{a}"] for a in ("place", "colour", "shape", "pattern", "size")}}


def show(label: str, scores: dict[str, float]) -> None:
    keys = ("all", "place", "colour", "shape", "pattern", "size", "count")
    print(f"{label:<36}" + "  ".join(f"{k} {scores[k]:.2f}" for k in keys), flush=True)


@torch.no_grad()
def restart_from(pipe: OmniPipeline, scenes: list[Scene], start: float, sampler: SamplerConfig) -> torch.Tensor:
    """Images [N, 3, H, W] sampled from `start` (a point of the sampler's own schedule) down to 0,
    beginning at the noised latent of each scene's render, text CFG as in `generate_batch`."""
    model, runner = pipe.backbone.model, pipe.runner
    size = pipe.backbone.config.image_size
    pixels = torch.stack([load_image(render(s, size, seed=i), size) for i, s in enumerate(scenes)])
    latents = model.encode_latents(pixels)
    patch = model.config.latent_patch_size
    rows, cols = latents.shape[-2] // patch, latents.shape[-1] // patch
    x0 = model.patchify(latents)  # [N, rows*cols, D]
    contexts = []
    for s in scenes:
        prompt = tasks.caption(s)
        contexts += [pipe._system_blocks(prompt) + [pipe._text(prompt)], []]  # cond, text-uncond
    past, positions = runner.prefill(contexts)
    per_sample = past.per_sample(len(contexts))
    ts = inference_timesteps(sampler.num_steps, sampler.shift)
    ts = ts[ts <= start + 1e-6]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x = (1 - ts[0]) * x0 + ts[0] * noise
    pos = model.latent_position_ids(rows, cols)
    for i in range(len(ts) - 1):
        t, t_next = float(ts[i]), float(ts[i + 1])
        b = runner.builder()
        index = []
        for k in range(len(contexts)):
            b.start_sample(positions[k])
            index.append(b.add_latent(x[k // 2], pos, t=t, noised=True))
        hidden, _ = runner.run(b.build(), per_sample)
        v = model.velocity(hidden[torch.tensor(index).reshape(-1)]).reshape(len(contexts), -1, x.shape[-1])
        for r in range(len(scenes)):
            x[r] = x[r] - combine_cfg(v[2 * r], v[2 * r + 1], None, sampler, t) * (t - t_next)
    return model.decode_latents(model.unpatchify(x, rows, cols))


def main(spec: str = "toy") -> None:
    torch.manual_seed(0)
    backbone = load_backbone(spec)
    recogniser, _ = load_recogniser(RECOGNISER_DIR)
    pipe = OmniPipeline(backbone, recaption=False)
    base = SamplerConfig(num_steps=25)

    print("1. per attribute, evaluate-base's 100 captions (seed 4321)")
    rng = np.random.default_rng(4321)
    scenes = [random_scene(rng) for _ in range(100)]
    variants = {"default (25 steps, cfg 4, shift 3)": {}, "50 steps": {"num_steps": 50},
                "cfg 2": {"cfg_text": 2.0}, "cfg 6": {"cfg_text": 6.0}, "cfg 8": {"cfg_text": 8.0},
                "cfg over all t": {"cfg_interval": (0.0, 1.0)}, "shift 1": {"shift": 1.0}}
    for label, kw in variants.items():
        sampler = SamplerConfig(**({"num_steps": 25} | kw))
        show(label, per_attribute(scenes, draw_captions(pipe, recogniser, scenes, sampler)))

    print("\n2. marking drawn (rows) for the marking named (lone objects, 160 captions)")
    rng = np.random.default_rng(7)
    lone = [random_scene(rng, n_objects=1) for _ in range(160)]
    seen = draw_captions(pipe, recogniser, lone, base)
    drawn = collections.Counter((t.objects[0].pattern, s.objects[0].pattern if s.objects else "none")
                                for t, s in zip(lone, seen, strict=True))
    print(f"{'named':<10}" + "".join(f"{p:>9}" for p in (*PATTERNS, "none")))
    for named in PATTERNS:
        print(f"{named:<10}" + "".join(f"{drawn[(named, p)]:>9}" for p in (*PATTERNS, "none")))

    print("\n3. restart from the caption's own render noised to t (first 96 of the 100 captions)")
    ts = inference_timesteps(base.num_steps, base.shift)
    for start in (0.2, 0.4, 0.6, 0.8, 0.9, 1.0):
        t0 = float(ts[ts <= start + 1e-6][0])
        images = restart_from(pipe, scenes[:96], start, base)
        show(f"t = {t0:.2f}", per_attribute(scenes[:96], recogniser.read(images)))

    print("\n4. squared latent distance of a one-attribute change, as a share of the latent's squared norm")
    model, size = backbone.model, backbone.config.image_size
    rng = np.random.default_rng(3)
    pools = {"colour": tuple(COLOURS), "shape": SHAPES, "pattern": PATTERNS, "size": SIZES}
    moved: dict[str, list[float]] = collections.defaultdict(list)
    for i in range(60):
        scene = random_scene(rng)
        first = scene.objects[0]
        z = model.encode_latents(load_image(render(scene, size, seed=i), size)[None])
        for attr, pool in pools.items():
            others = [v for v in pool if v != getattr(first, attr)]
            changed = dataclasses.replace(first, **{attr: others[i % len(others)]})
            scene2 = dataclasses.replace(scene, objects=(changed, *scene.objects[1:]))
            z2 = model.encode_latents(load_image(render(scene2, size, seed=i), size)[None])
            moved[attr].append(float((z2 - z).pow(2).sum() / z.pow(2).sum()))
    print("  ".join(f"{a} {np.mean(v):.3f}" for a, v in moved.items()))
    rng = np.random.default_rng(5)
    scenes = [random_scene(rng) for _ in range(300)]
    pixels = torch.stack([load_image(render(s, size, seed=i), size) for i, s in enumerate(scenes)])
    back = recogniser.read(model.decode_latents(model.encode_latents(pixels)))
    right = [o.pattern == m.pattern for t, s in zip(scenes, back, strict=True) for o in t.objects
             for m in s.objects if m.position == o.position]
    asked = sum(len(t.objects) for t in scenes)
    print(f"VAE round trip: markings read back right {sum(right) / asked:.3f} of {asked} objects")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:2])
