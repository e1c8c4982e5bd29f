"""Rectified flow as BAGEL trains and samples it.

x_t = (1 - t) * x0 + t * noise, target velocity v = noise - x0; t = 1 is pure noise.
Training timesteps: s = sigmoid(normal), t = shift * s / (1 + (shift - 1) * s).
"""

from __future__ import annotations

import torch


def shift_timesteps(s: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * s / (1 + (shift - 1) * s)


def sample_train_timesteps(n: int, shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    s = torch.sigmoid(torch.randn(n, generator=generator))
    return shift_timesteps(s, shift)


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (x_t, velocity target)."""
    return (1 - t) * x0 + t * noise, noise - x0


def inference_timesteps(num_steps: int, shift: float) -> torch.Tensor:
    """num_steps + 1 points from 1 to 0, shifted (more steps spent at high noise when shift > 1)."""
    return shift_timesteps(torch.linspace(1, 0, num_steps + 1), shift)
