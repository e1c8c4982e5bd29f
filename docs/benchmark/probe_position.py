"""Where does an object's position get lost between the ViT and the answer? (docs/benchmark.md)

    python docs/benchmark/probe_position.py [BACKBONE_DIR] [ATTRIBUTE]

On 1,200 lone-object scenes asked "where is the ... ?" (or another VQA kind), fits linear probes
(800 to fit, 400 to test) for the object's position and shape on (a) the hidden state at the answer
position after each MoT layer and (b) the mean over the object's own image tokens, and counts the
first answer token the model actually produces.
"""

from __future__ import annotations

import collections
import sys

import numpy as np
import torch

from omnipersona.backbone import load_backbone
from omnipersona.data import load_image
from omnipersona.sampler import Runner, add_blocks
from omnipersona.toyworld import tasks
from omnipersona.toyworld.pretrain import patch_labels
from omnipersona.toyworld.world import POSITIONS, SHAPES, random_scene, render


def probe(features: list[torch.Tensor], labels: torch.Tensor, classes: int, fit: int = 800) -> float:
    """Held-out accuracy of an L2-regularised linear classifier on standardised features."""
    x = torch.stack(features)
    x = (x - x[:fit].mean(0)) / (x[:fit].std(0) + 1e-5)
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(x[:fit] @ w + b, labels[:fit]) + 1e-3 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(((x[fit:] @ w + b).argmax(-1) == labels[fit:]).float().mean())


def main() -> None:
    torch.set_num_threads(1)
    backbone = load_backbone(sys.argv[1] if len(sys.argv) > 1 else "toy")
    attribute = sys.argv[2] if len(sys.argv) > 2 else "position"
    model, bank = backbone.model, backbone.new_bank()
    runner = Runner(model, bank, backbone.special_ids)
    layers = model.language_model.model.layers
    caught: dict[int, torch.Tensor] = {}
    for k, layer in enumerate(layers):
        layer.register_forward_hook(lambda _m, _i, out, k=k: caught.__setitem__(k, out[0].detach()))
    at_answer = {k: [] for k in range(-1, len(layers))}
    on_object = {k: [] for k in range(-1, len(layers))}
    positions, shapes, first_tokens = [], [], collections.Counter()
    rng = np.random.default_rng(5)
    with torch.no_grad():
        for n in range(1200):
            scene = random_scene(rng, n_objects=1)
            example = tasks.vqa(scene, rng, kind=attribute)
            vit = model.vit_tokens(load_image(render(scene, 32, seed=n), 32)[None])[0]
            builder = runner.builder()
            builder.start_sample()
            add_blocks(builder, [("vit", vit), ("text", bank.encode(example.question))])
            builder.add_open_text([])  # the answer position
            seq = builder.build()
            hidden, _ = runner.run(seq)
            object_tokens = seq.vit_index[patch_labels([scene], 8)["object"][0].bool()]
            embedded = model.embed(seq, bank.embedding_rows())
            at_answer[-1].append(embedded[-1])
            on_object[-1].append(embedded[object_tokens].mean(0))
            for k in range(len(layers)):
                at_answer[k].append(caught[k][-1])
                on_object[k].append(caught[k][object_tokens].mean(0))
            positions.append(POSITIONS.index(scene.objects[0].position))
            shapes.append(SHAPES.index(scene.objects[0].shape))
            first_tokens[bank.decode([int(model.logits(hidden[-1:]).argmax())])] += 1
    pos, shape = torch.tensor(positions), torch.tensor(shapes)
    for k in range(-1, len(layers)):
        name = "embeddings" if k < 0 else f"after layer {k + 1}"
        print(f"{name:>14}: answer position -> position {probe(at_answer[k], pos, 5):.2f}, "
              f"shape {probe(at_answer[k], shape, 6):.2f}; object tokens -> position {probe(on_object[k], pos, 5):.2f}")
    print("first answer tokens:", first_tokens.most_common(8))


if __name__ == "__main__":
    main()
