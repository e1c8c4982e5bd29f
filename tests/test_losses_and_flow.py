"""Loss values on hand-made cases; rectified-flow formulas; CFG combination."""

import math

import torch

from omnipersona.flow import inference_timesteps, noisy_latents, sample_train_timesteps, shift_timesteps
from omnipersona.losses import LossWeights, ce_loss, flow_loss, joint_loss
from omnipersona.sampler import SamplerConfig, combine_cfg
from omnipersona.sequence import LossKind, SequenceBuilder


def test_ce_on_a_hand_made_case():
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(1.0), math.log(1.0)]])
    labels = torch.tensor([1, 0])
    # p(label) = 3/4 and 1/2
    expected = -(math.log(0.75) + math.log(0.5)) / 2
    assert abs(ce_loss(logits, labels).item() - expected) < 1e-6
    assert ce_loss(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)).item() == 0.0


def test_flow_mse_and_noising():
    x0 = torch.tensor([[1.0, -1.0]])
    noise = torch.tensor([[3.0, 1.0]])
    x_t, v = noisy_latents(x0, noise, 0.25)
    assert torch.allclose(x_t, torch.tensor([[1.5, -0.5]]))
    assert torch.equal(v, torch.tensor([[2.0, 2.0]]))
    assert flow_loss(torch.tensor([[1.0, 2.0]]), v).item() == 0.5  # ((1-2)^2 + 0) / 2


def test_timestep_shift_and_schedule():
    s = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(shift_timesteps(s, 3.0), torch.tensor([0.0, 0.75, 1.0]))
    g = torch.Generator().manual_seed(0)
    t = sample_train_timesteps(10000, 3.0, g)
    assert 0 < t.min() and t.max() < 1 and t.mean() > 0.6  # shift pushes t towards noise
    ts = inference_timesteps(4, 1.0)
    assert torch.allclose(ts, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


def test_cfg_combination_formula_and_interval():
    v_c, v_t, v_i = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    cfg = SamplerConfig(cfg_text=4.0, cfg_img=2.0, cfg_interval=(0.4, 1.0), renorm_min=0.0)
    raw = v_i + 2.0 * ((v_t + 4.0 * (v_c - v_t)) - v_i)  # [10, -1]
    out = combine_cfg(v_c, v_t, v_i, cfg, t=0.9)
    assert torch.allclose(out, raw * (v_c.norm() / raw.norm()))  # renormed to the cond norm
    assert torch.equal(combine_cfg(v_c, v_t, v_i, cfg, t=0.3), v_c)  # outside the interval


def test_joint_loss_weights_each_part(tiny):
    cfg = tiny.config
    b = SequenceBuilder(tiny.special_ids, cfg.hidden_size, cfg.latent_token_dim, set())
    D = cfg.latent_token_dim
    b.start_sample()
    b.add_text([7, 8])
    b.add_text([9], loss=True)
    b.add_latent(torch.randn(4, D), torch.arange(4), t=0.5, target=torch.randn(4, D), noised=True)
    b.start_sample()
    b.add_latent(torch.randn(4, D), torch.arange(4), t=0.3, target=torch.randn(4, D),
                 kind=LossKind.EDITING, noised=True)
    seq = b.build()
    assert seq.ce_labels.tolist() == [9, tiny.special_ids.im_end]
    with torch.no_grad():
        _, p1 = joint_loss(tiny.model, seq, None, None, LossWeights(1, 1, 1))
        total, p2 = joint_loss(tiny.model, seq, None, None, LossWeights(ce=0.5, gen=2.0, edit=3.0))
    assert p1["ce"] > 0 and p1["gen"] > 0 and p1["edit"] > 0
    assert abs(p2["total"] - (0.5 * p1["ce"] + 2 * p1["gen"] + 3 * p1["edit"])) < 1e-4
