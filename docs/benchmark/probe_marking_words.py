"""Does the generator listen to the marking word? (docs/benchmark.md)

    python docs/benchmark/probe_marking_words.py [BACKBONE_DIR] [--sheet PNG]

For 96 lone-object scenes (seed 5), each with a twin that differs in the marking only (and one
that differs in the colour only), the model's clean-image estimate x0_hat = x_t - t v(x_t, caption)
is computed at noise level t from the same x_t (the scene's own render, noised) under the scene's
caption and under its twin's. The *word response* is how far changing the word moves the estimate
toward the twin's render, along the line between the two renders' latents:

    <x0_hat(twin caption) - x0_hat(own caption), z_twin - z_own> / |z_twin - z_own|^2

1 means the estimate follows the word all the way, 0 that the word changes nothing. It needs no
sampling and no judge, so it is a quick and low-noise reading (one standard error about 0.003)
of whether the text reaches the image, where the judge's marking accuracy on 160 captions has a
standard error near 0.04. The velocity is the conditional one, without CFG (the sampler applies
CFG only for t above 0.4, and renormalises it).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
from PIL import Image

from omnipersona.backbone import Backbone, load_backbone
from omnipersona.data import load_image
from omnipersona.pipeline import OmniPipeline
from omnipersona.toyworld import tasks
from omnipersona.toyworld.world import COLOURS, PATTERNS, SHAPES, Scene, random_scene, render

NOISE_LEVELS = (0.3, 0.5, 0.7, 0.9)


POOLS = {"pattern": PATTERNS, "colour": tuple(COLOURS), "shape": SHAPES}


def changed(scene: Scene, field: str, rng: np.random.Generator) -> Scene:
    """The scene with every object's `field` replaced by another value, drawn at random (one draw
    per object); the other docs/benchmark scripts that need such twins use this one."""
    objects = []
    for o in scene.objects:
        others = [v for v in POOLS[field] if v != getattr(o, field)]
        objects.append(dataclasses.replace(o, **{field: others[int(rng.integers(len(others)))]}))
    return dataclasses.replace(scene, objects=tuple(objects))


def twins(n: int = 96, seed: int = 5) -> tuple[list[Scene], dict[str, list[Scene]]]:
    """Lone-object scenes and, per attribute, the same scene with that attribute changed."""
    rng = np.random.default_rng(seed)
    scenes, twin = [], {"pattern": [], "colour": []}
    for _ in range(n):
        scene = random_scene(rng, n_objects=1)
        scenes.append(scene)
        for field in twin:
            twin[field].append(changed(scene, field, rng))
    return scenes, twin


@torch.no_grad()
def clean_estimates(pipe: OmniPipeline, batch: list[Scene], x_t: torch.Tensor, t: float) -> torch.Tensor:
    """[N, tokens, D]: x0_hat = x_t - t v(x_t, caption of scene i) for each scene of `batch`."""
    model, runner = pipe.backbone.model, pipe.runner
    side = int(round(x_t.shape[1] ** 0.5))
    pos = model.latent_position_ids(side, side)
    contexts = [pipe._system_blocks(tasks.caption(s)) + [pipe._text(tasks.caption(s))] for s in batch]
    past, positions = runner.prefill(contexts)
    b = runner.builder()
    index = []
    for k in range(len(contexts)):
        b.start_sample(positions[k])
        index.append(b.add_latent(x_t[k], pos, t=t, noised=True))
    hidden, _ = runner.run(b.build(), past.per_sample(len(contexts)))
    v = model.velocity(hidden[torch.tensor(index).reshape(-1)]).reshape(x_t.shape)
    return x_t - t * v


def render_latents(backbone: Backbone, batch: list[Scene]) -> torch.Tensor:
    """[N, tokens, D]: patchified latents of the renders (render i from seed i)."""
    size = backbone.config.image_size
    pixels = torch.stack([load_image(render(s, size, seed=i), size) for i, s in enumerate(batch)])
    return backbone.model.patchify(backbone.model.encode_latents(pixels))


@torch.no_grad()
def word_response(backbone: Backbone, noise_levels: tuple[float, ...] = NOISE_LEVELS) -> dict[str, list[float]]:
    """Per attribute ('pattern', 'colour') and noise level: the mean word response and its
    standard error, as [mean, se] pairs in `noise_levels` order."""
    model = backbone.model
    was_training = model.training
    model.eval()
    pipe = OmniPipeline(backbone, recaption=False)
    scenes, changed = twins()
    own = render_latents(backbone, scenes)
    noise = torch.randn(own.shape, generator=torch.Generator().manual_seed(0))
    out: dict[str, list[float]] = {}
    own_estimate: dict[float, torch.Tensor] = {}  # per t: under the scenes' own captions
    for field, batch in changed.items():
        line = render_latents(backbone, batch) - own
        for t in noise_levels:
            x_t = (1 - t) * own + t * noise
            if t not in own_estimate:
                own_estimate[t] = clean_estimates(pipe, scenes, x_t, t)
            moved = clean_estimates(pipe, batch, x_t, t) - own_estimate[t]
            r = (moved * line).sum(dim=(1, 2)) / (line * line).sum(dim=(1, 2))
            out.setdefault(field, []).extend([round(float(r.mean()), 4), round(float(r.std() / len(r) ** 0.5), 4)])
    model.train(was_training)
    return out


@torch.no_grad()
def estimate_sheet(backbone: Backbone, path: str, n: int = 6, noise_levels: tuple[float, ...] = (0.5, 0.8)) -> None:
    """A PNG: per noise level and scene (the first `n` twins' scenes), the render, then the model's
    x0_hat from that render noised to t under the caption naming each marking (PATTERNS order),
    then the render with each marking: what the word should have changed."""
    model, size = backbone.model, backbone.config.image_size
    pipe = OmniPipeline(backbone, recaption=False)
    scenes = twins()[0][:n]
    rows = []
    for t in noise_levels:
        for scene in scenes:
            variants = [dataclasses.replace(scene, objects=(dataclasses.replace(scene.objects[0], pattern=p),))
                        for p in PATTERNS]
            own = render_latents(backbone, [scene])
            noise = torch.randn(own.shape, generator=torch.Generator().manual_seed(0))
            x_t = ((1 - t) * own + t * noise).expand(len(variants), -1, -1)
            side = int(round(own.shape[1] ** 0.5))
            decoded = model.decode_latents(model.unpatchify(clean_estimates(pipe, variants, x_t, t), side, side))
            estimates = [((im.permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8) for im in decoded]
            renders = [np.asarray(render(v, size, seed=0)) for v in (scene, *variants)]
            rows.append(np.concatenate([renders[0], *estimates, *renders[1:]], axis=1))
    grid = np.concatenate(rows, axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def show(label: str, response: dict[str, list[float]], noise_levels: tuple[float, ...] = NOISE_LEVELS) -> str:
    return f"{label:<12}" + "  ".join(
        f"{field} " + " ".join(f"{response[field][2 * i]:.3f}" for i in range(len(noise_levels)))
        for field in response)


if __name__ == "__main__":
    torch.set_num_threads(2)
    parser = argparse.ArgumentParser(description="Does the generator listen to the marking word?")
    parser.add_argument("backbone", nargs="?", default="toy", help="backbone spec or folder (default: toy)")
    parser.add_argument("--sheet", metavar="PNG", help="also write the decoded estimates here")
    args = parser.parse_args()
    spec, sheet = args.backbone, args.sheet
    backbone = load_backbone(spec)
    response = word_response(backbone)
    print(f"word response at t = {', '.join(map(str, NOISE_LEVELS))}; largest standard error "
          + ", ".join(f"{field} {max(values[1::2]):.3f}" for field, values in response.items()))
    print(show(spec, response))
    if sheet:
        estimate_sheet(backbone, sheet)
        print(f"sheet: {sheet} (rows: t = 0.5 then 0.8; columns: render, x0_hat under "
              f"{' / '.join(PATTERNS)}, renders with each)")
