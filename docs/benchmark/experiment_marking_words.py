"""Experiment (docs/benchmark.md): does the generator learn to listen to the marking word when
every training caption names every marking? The world's captions name the markings of one or two
objects but not of three, so half the objects text-to-image training draws carry a marking no
word names, and a missing marking word does not mean "plain". MODE 'named' continues the
committed backbone with text-to-image captions that name every object's marking
(`tasks.caption(..., every_marking=True)`); MODE 'standard' is the same continuation with the
world's captions (the control: same scenes, same noise, only the captions differ). MODE 'lone'
makes every example of every batch text-to-image of one object (whose caption always names its
marking), every weight trained: the most marking words a batch can hold. MODE 'alternate' makes
every other batch such a one-object batch and the rest the recipe's mix. Every EVERY
steps it prints the word response (`probe_marking_words.py`); at the end, the judge's scores on
the continuation experiments' 160 captions (which, like the benchmark's, name no marking of three
objects).

    python docs/benchmark/experiment_marking_words.py MODE [STEPS] [EVERY] [THREADS]   # 600 150 2
"""

from __future__ import annotations

import sys
import time

import torch
from continuation import Continuation  # docs/benchmark/continuation.py
from probe_marking_words import show, word_response  # docs/benchmark/probe_marking_words.py

from omnipersona.losses import joint_loss
from omnipersona.toyworld import tasks
from omnipersona.toyworld.pretrain import Segment, WorldSample, make_sample, pack_world_batch
from omnipersona.toyworld.world import random_scene, render


def batch(run: Continuation, step: int, every_marking: bool, lone: bool = False):
    """The recipe's batch (with `lone`, of `make_sample`'s one-object text-to-image only); with
    `every_marking`, its text-to-image captions name every marking, the draws staying the same."""
    rng, size, samples = run.rng, run.size, []
    names = run.tasks(step)
    if lone:
        names = ["t2i_single"] * len(names)
    for name in names:
        if name == "t2i" and every_marking:  # make_sample's draws in its order: the control's scenes
            seed = int(rng.integers(1 << 30))
            scene = random_scene(rng)
            samples.append(WorldSample([Segment("text", tasks.caption(scene, every_marking=every_marking)),
                                        Segment("target", image=0)], [render(scene, size, seed=seed)], "t2i"))
        else:
            samples.append(make_sample(name, rng, size))
    return pack_world_batch(run.backbone, samples, run.generator, run.cfg.timestep_shift, size)


def main(mode: str, steps: int = 600, every: int = 150, threads: int = 2) -> None:
    if mode not in ("named", "standard", "lone", "alternate"):
        raise SystemExit(f"MODE is 'named', 'standard', 'lone' or 'alternate', not {mode!r}")
    run = Continuation(steps)
    torch.set_num_threads(threads)
    print(show("start", word_response(run.backbone)), flush=True)
    start = time.monotonic()
    for step in range(steps):
        lone = mode == "lone" or (mode == "alternate" and step % 2 == 0)
        seq = batch(run, step, every_marking=mode == "named", lone=lone)
        loss, parts = joint_loss(run.model, seq, None, None, run.cfg.loss_weights)
        run.update(loss)
        if (step + 1) % every == 0:
            print(show(str(step + 1), word_response(run.backbone)), f"{time.monotonic() - start:.0f}s",
                  " ".join(f"{k} {v:.3f}" for k, v in parts.items()), flush=True)
    print("judge", run.score(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:5]))
