"""DiffusionNFT (Zheng et al. 2025): advantages, the loss against its formula, its limits, and a toy problem
where the update must move the policy towards high reward."""

import math

import numpy as np
import pytest
import torch

from dreamlite.incontext import pack, unpack
from dreamlite.models.unet import MobileUNet
from dreamlite.presets import preset_config
from dreamlite.sampling import Conditions
from dreamlite.shapes.tasks import RESERVED_SEED_START
from dreamlite.train.flow import flow_matching_loss
from dreamlite.train.rl import (NFTConfig, benchmark_texts, collect_rollouts, frozen_copy, group_advantages,
                                latent_reward, nft_iteration, nft_update, nft_loss, nft_step_loss, optimality_probability, reward_weights,
                                rl_edit_cases, rl_rng, rl_t2i_prompts, soft_update)

SMALL = dict(block_out_channels=(32, 64, 96), num_attention_heads=(1, 2, 3), cross_attention_dim=64,
             time_embed_dim=64, size_embed_dim=8, norm_num_groups=16, in_channels=4, out_channels=4,
             text_embed_dim=16)


# ---------------------------------------------------------------------------------------- advantages
def test_group_advantages_normalise_within_each_group():
    raw = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 3.0])
    a = group_advantages(raw, 4)
    torch.testing.assert_close(a[:4], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5, rtol=0)
    assert a[4:8].tolist() == [0.0] * 4  # a group that scored alike carries no signal
    std3 = math.sqrt(3 * 0.75 ** 2 + 2.25 ** 2) / 2  # population std of (0, 0, 0, 3)
    torch.testing.assert_close(a[8:], torch.tensor([-0.75, -0.75, -0.75, 2.25]) / std3, atol=1e-5, rtol=0)
    for g in a.reshape(3, 4):
        assert abs(g.mean().item()) < 1e-6
    none = group_advantages(raw, 4, std="none")
    torch.testing.assert_close(none[8:], torch.tensor([-0.75, -0.75, -0.75, 2.25]))
    glob = group_advantages(raw, 4, std="global")
    torch.testing.assert_close(glob, none / (raw.std(unbiased=False) + 1e-6))
    with pytest.raises(ValueError, match="multiple of 4"):
        group_advantages(raw[:7], 4)
    with pytest.raises(ValueError, match="std mode"):
        group_advantages(raw, 4, std="batch")


def test_optimality_probability_maps_clipped_advantages_into_unit_interval():
    a = torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0])
    assert optimality_probability(a).tolist() == [0.0, 0.0, 0.5, 0.75, 1.0]
    assert optimality_probability(a, scale=4.0).tolist() == [0.125, 0.375, 0.5, 0.5625, 0.75]
    r = reward_weights(torch.tensor([0.0, 1.0, 1.0, 1.0]), NFTConfig(group_size=2))
    torch.testing.assert_close(r, torch.tensor([0.0, 1.0, 0.5, 0.5]), atol=1e-5, rtol=0)


def test_config_validation():
    for bad in (dict(group_size=1), dict(std="x"), dict(beta=0.0), dict(old_decay=1.5), dict(minibatch=0)):
        with pytest.raises(ValueError):
            NFTConfig(**bad)


# ---------------------------------------------------------------------------------------------- loss
def test_nft_loss_equals_its_formula_on_hand_made_tensors():
    v_theta = torch.tensor([[[[1.0, 2.0]]], [[[0.0, -1.0]]]])  # [2, 1, 1, 2]
    v_old = torch.tensor([[[[0.0, 1.0]]], [[[1.0, 1.0]]]])
    v = torch.tensor([[[[1.0, 1.0]]], [[[0.0, 0.0]]]])
    v_ref = torch.zeros(2, 1, 1, 2)
    r, beta = torch.tensor([0.75, 0.25]), 0.5
    # sample 0: v+ = (0.5, 1.5), v- = (-0.5, 0.5); sample 1: v+ = (0.5, 0), v- = (1.5, 2)
    pos = torch.tensor([(0.25 + 0.25) / 2, (0.25 + 0) / 2])
    neg = torch.tensor([(2.25 + 0.25) / 2, (2.25 + 4.0) / 2])
    policy = r * pos + (1 - r) * neg  # [0.5, 2.375]
    guard = torch.tensor([(1 + 4) / 2, (0 + 1) / 2])
    out = nft_loss(v_theta, v_old, v, r, beta, v_ref, kl_weight=0.1)
    torch.testing.assert_close(out.per_sample, policy + 0.1 * guard)
    torch.testing.assert_close(out.policy, policy.mean())
    torch.testing.assert_close(out.guard, guard.mean())
    torch.testing.assert_close(out.loss, (policy + 0.1 * guard).mean())
    assert nft_loss(v_theta, v_old, v, r, beta, v_ref, kl_weight=0.0).guard.item() == 0.0
    with pytest.raises(ValueError, match="r must be"):
        nft_loss(v_theta, v_old, v, r[:1], beta)


def _grad(v_theta, *args, **kw):
    v_theta = v_theta.clone().requires_grad_(True)
    out = nft_loss(v_theta, *args, **kw)
    out.loss.backward()
    return out, v_theta.grad


def test_nft_loss_limits():
    g = torch.Generator().manual_seed(0)
    v_theta, v_old, v = (torch.randn(3, 4, 2, 2, generator=g) for _ in range(3))
    mse = lambda a, b: ((a - b) ** 2).flatten(1).mean(1)  # noqa: E731
    ones, zeros = torch.ones(3), torch.zeros(3)
    # beta = 1, r = 1: plain flow matching of v_theta on the (positive) samples
    torch.testing.assert_close(nft_loss(v_theta, v_old, v, ones, 1.0).per_sample, mse(v_theta, v))
    # beta = 1, r = 0: v_theta is pushed to the mirror image 2 v_old - v of the negative target
    torch.testing.assert_close(nft_loss(v_theta, v_old, v, zeros, 1.0).per_sample, mse(v_theta, 2 * v_old - v))
    # beta -> 0: the loss tends to ||v_old - v||^2 and its gradient / beta to 2 (2r - 1) (v_old - v) / D
    D = v.flatten(1).shape[1]
    for r in (ones, zeros, torch.tensor([0.2, 0.5, 0.9])):
        out, grad = _grad(v_theta, v_old, v, r, 1e-4)
        torch.testing.assert_close(out.per_sample, mse(v_old, v), atol=1e-3, rtol=0)
        expected = 2 * (2 * r - 1)[:, None, None, None] * (v_old - v) / D / 3  # / 3: mean over the batch
        torch.testing.assert_close(grad / 1e-4, expected, atol=1e-3, rtol=1e-3)
    # at theta = theta_old the loss is flow matching for any r, and r = 1/2 gives no gradient
    for r in (ones, zeros, torch.full((3,), 0.3)):
        torch.testing.assert_close(nft_loss(v_old, v_old, v, r, 0.7).per_sample, mse(v_old, v))
    _, grad = _grad(v_old, v_old, v, torch.full((3,), 0.5), 0.7)
    assert grad.abs().max().item() < 1e-7


def tiny_unet(seed=0) -> MobileUNet:
    torch.manual_seed(seed)
    return MobileUNet(**preset_config("tiny", **SMALL)).eval()


def conds(B: int, edit: bool, g: torch.Generator) -> Conditions:
    return Conditions(text=torch.randn(B, 3, 16, generator=g), mask=torch.ones(B, 3),
                      time_ids=torch.full((B, 2), 32.0),
                      source=torch.randn(B, 4, 4, 4, generator=g) if edit else None)


def test_nft_step_loss_on_a_unet_is_flow_matching_at_the_old_policy_and_r_half_teaches_nothing():
    g = torch.Generator().manual_seed(3)
    policy = tiny_unet()
    old, ref = frozen_copy(policy), frozen_copy(policy)
    for edit in (False, True):
        c = conds(2, edit, g)
        x0, noise = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
        t = torch.tensor([0.3, 0.8])
        cond_half = c.source if edit else torch.zeros_like(x0)
        with torch.no_grad():
            fm = flow_matching_loss(policy, x0, cond_half, c.text, c.mask, c.time_ids, t, noise, reduce=False)
        out = nft_step_loss(policy, old, x0, c, torch.tensor([0.9, 0.1]), t, noise, 0.5, ref, kl_weight=1.0)
        torch.testing.assert_close(out.per_sample, fm, atol=1e-5, rtol=1e-5)  # guard is 0: ref == policy
        policy.zero_grad()
        nft_step_loss(policy, old, x0, c, torch.full((2,), 0.5), t, noise, 0.5).loss.backward()
        worst = max(p.grad.abs().max().item() for p in policy.parameters() if p.grad is not None)
        assert worst < 1e-6
        policy.zero_grad()
        nft_step_loss(policy, old, x0, c, torch.ones(2), t, noise, 0.5).loss.backward()
        assert max(p.grad.abs().max().item() for p in policy.parameters() if p.grad is not None) > 1e-4
    assert all(p.grad is None for p in old.parameters())


def test_soft_update_interpolates_parameters():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    wa, wb = a.weight.detach().clone(), b.weight.detach().clone()
    soft_update(a, b, 0.25)
    torch.testing.assert_close(a.weight, 0.25 * wa + 0.75 * wb)
    soft_update(a, b, 0.0)
    torch.testing.assert_close(a.weight, wb)


# --------------------------------------------------------------------------------------- toy problem
class GaussianPolicy(torch.nn.Module):
    """The exact flow velocity of data x0 ~ N(m, s^2 I) in 2-D (latents [B, 2, 1, 1]), learnable mean m:
    v(x_t, t) = E[noise - x0 | x_t] = (t - (1 - t) s^2) / ((1 - t)^2 s^2 + t^2) (x_t - (1 - t) m) - m."""

    def __init__(self, s: float = 0.5):
        super().__init__()
        self.m = torch.nn.Parameter(torch.zeros(2))
        self.s2 = s * s

    def forward(self, canvas, t_in, text, mask, time_ids):
        x = unpack(canvas).flatten(1)  # [B, 2]
        t = (t_in.float() / 1000)[:, None]
        v = (t - (1 - t) * self.s2) / ((1 - t) ** 2 * self.s2 + t ** 2) * (x - (1 - t) * self.m) - self.m
        return pack(v[:, :, None, None])


GOAL = torch.tensor([1.0, 1.0]) / math.sqrt(2)


def projection_reward(latents: torch.Tensor, cond) -> torch.Tensor:
    return torch.sigmoid(2 * latents.flatten(1) @ GOAL)  # [N] in (0, 1): higher along GOAL


def run_toy(iterations: int, kl_weight: float = 0.0, seed: int = 0, noise: str = "fresh"):
    g = torch.Generator().manual_seed(seed)
    policy = GaussianPolicy()
    old, ref = frozen_copy(policy), frozen_copy(policy)
    opt = torch.optim.Adam(policy.parameters(), lr=0.05)
    cfg = NFTConfig(group_size=8, beta=1.0, minibatch=16, epochs=2, old_decay=0.3, grad_clip=0.0,
                    kl_weight=kl_weight, noise=noise)
    cond = Conditions(text=torch.zeros(4, 1, 4), mask=torch.ones(4, 1), time_ids=torch.ones(4, 2))
    sigmas = torch.linspace(1.0, 0.0, 9)
    stats = [nft_iteration(policy, old, opt, cond, sigmas, (2, 1, 1), projection_reward, cfg, g, ref)
             for _ in range(iterations)]
    return policy.m.detach(), stats


def test_nft_moves_a_toy_policy_towards_high_reward():
    m, stats = run_toy(25)
    along, across = (m @ GOAL).item(), (m[0] - m[1]).abs().item() / math.sqrt(2)
    assert along > 0.5, m  # started at 0
    assert across < 0.35 * along, m  # the move is along the reward's gradient
    first, last = np.mean([s.reward_mean for s in stats[:3]]), np.mean([s.reward_mean for s in stats[-3:]])
    assert last > first + 0.1, (first, last)
    assert all(abs(s.r_mean - 0.5) < 0.1 and s.signal > 0.9 for s in stats)  # centred up to clipping
    assert all(len(s.prompt_rewards) == 4 and abs(np.mean(s.prompt_rewards) - s.reward_mean) < 1e-5 for s in stats)
    # the guard towards the frozen start holds the policy back
    m_guarded, _ = run_toy(25, kl_weight=1.0)
    assert 0.05 < (m_guarded @ GOAL).item() < 0.2 * along, m_guarded


def test_rollout_noise_moves_the_toy_policy_too():
    m, stats = run_toy(25, noise="rollout")
    along, across = (m @ GOAL).item(), (m[0] - m[1]).abs().item() / math.sqrt(2)
    assert along > 0.5 and across < 0.35 * along, m
    assert np.mean([s.reward_mean for s in stats[-3:]]) > np.mean([s.reward_mean for s in stats[:3]]) + 0.1


class Recorder(torch.nn.Module):
    """A policy that remembers the target half of every canvas and time it is called with."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, canvas, t_in, text, mask, time_ids):
        self.calls.append((unpack(canvas).detach().clone(), (t_in.float() / 1000).detach().clone()))
        return canvas * self.w


def test_rollout_noise_puts_x_t_on_the_line_from_each_start_noise_to_its_image():
    cond = Conditions(text=torch.zeros(3, 1, 4), mask=torch.ones(3, 1), time_ids=torch.ones(3, 2))
    old = GaussianPolicy()
    start_gen = torch.Generator().manual_seed(5)
    x0, rep, start = collect_rollouts(old, cond, torch.linspace(1.0, 0.0, 5), 4, (2, 1, 1), start_gen)
    assert torch.equal(start, torch.randn(12, 2, 1, 1, generator=torch.Generator().manual_seed(5)))
    assert x0.shape == start.shape == (12, 2, 1, 1) and not torch.allclose(x0, start)
    r = torch.rand(12, generator=torch.Generator().manual_seed(1))
    for mode, on_line in (("rollout", True), ("fresh", False)):
        policy = Recorder()
        cfg = NFTConfig(group_size=4, minibatch=5, grad_clip=0.0, noise=mode)
        nft_update(policy, frozen_copy(GaussianPolicy()), torch.optim.SGD(policy.parameters(), lr=0.0), x0, rep, r,
                   cfg, torch.Generator().manual_seed(2), start_noise=start)
        assert sum(len(x) for x, _ in policy.calls) == 12  # one pass over all rollouts in minibatches
        for x_t, t in policy.calls:  # each row must be (1 - t) x0_i + t start_i for some rollout i
            line = (1 - t[:, None, None, None, None]) * x0[None] + t[:, None, None, None, None] * start[None]
            err = (line - x_t[:, None]).flatten(2).abs().amax(-1).amin(-1)  # [b]: distance to the nearest rollout
            assert bool((err < 1e-6).all()) is on_line, (mode, err)
    with pytest.raises(ValueError, match="noise='rollout' needs the rollouts' start noise"):
        nft_update(Recorder(), GaussianPolicy(), None, x0, rep, r, NFTConfig(group_size=4, noise="rollout"),
                   torch.Generator())
    with pytest.raises(ValueError, match="unknown noise mode 'pinned'"):
        NFTConfig(noise="pinned")


def test_latent_reward_decodes_and_repeats_prompts_per_group():
    seen = {}

    class Recorder:
        name = "recorder"

        def __call__(self, images, prompts, metadata, sources=None):
            seen.update(images=images, prompts=prompts, metadata=metadata, sources=sources)
            return torch.full((len(prompts),), 0.5)

    fn = latent_reward(Recorder(), lambda z: np.zeros((z.shape[0], 32, 32, 3), np.uint8), ["a", "b"],
                       [{"i": 0}, {"i": 1}], group_size=3, sources=np.stack([np.zeros((32, 32, 3), np.uint8),
                                                                             np.ones((32, 32, 3), np.uint8)]))
    assert fn(torch.zeros(6, 4, 2, 2), None).tolist() == [0.5] * 6
    assert seen["prompts"] == ["a"] * 3 + ["b"] * 3
    assert [m["i"] for m in seen["metadata"]] == [0, 0, 0, 1, 1, 1]
    assert seen["sources"][:, 0, 0, 0].tolist() == [0, 0, 0, 1, 1, 1] and seen["images"].shape == (6, 32, 32, 3)


# ---------------------------------------------------------------------------------------- prompt pools
def test_rl_pools_use_training_seeds_and_avoid_benchmark_texts():
    with pytest.raises(ValueError, match="reserved"):
        rl_rng(RESERVED_SEED_START + 1)
    banned = benchmark_texts()
    assert len(banned) > 300
    prompts = rl_t2i_prompts(rl_rng(5, 0), 120)
    assert len(prompts) == 120 and not {p for p, _ in prompts} & banned
    assert all(p == row["prompt"] for p, row in prompts)
    assert prompts == rl_t2i_prompts(rl_rng(5, 0), 120)  # reproducible
    assert prompts != rl_t2i_prompts(rl_rng(5, 1), 120)  # a new stream per iteration
    cases = rl_edit_cases(rl_rng(5, 0), 24, size=32)
    assert len(cases) == 24 and not {c.instruction for c in cases} & banned
    assert cases[0].source_image.shape == (32, 32, 3)
    # without the filter the canonical phrasings do produce benchmark prompts
    raw = rl_t2i_prompts(rl_rng(5, 0), 400, tag_weights={"single_object": 1.0}, exclude_benchmark=False)
    assert {p for p, _ in raw} & banned


def test_stochastic_rollouts_draw_their_fresh_noise_from_the_rollout_generator():
    """eta > 0 rollouts are reproducible from the generator alone, differ from the ODE's from the same start noise,
    and leave the start noise (the NFT update's "rollout" mode) unchanged."""
    cond = Conditions(text=torch.zeros(2, 1, 4), mask=torch.ones(2, 1), time_ids=torch.ones(2, 2))
    run = lambda eta: collect_rollouts(GaussianPolicy(), cond, torch.linspace(1.0, 0.0, 5), 3, (2, 1, 1),  # noqa: E731
                                       torch.Generator().manual_seed(5), eta=eta)
    (x_ode, _, s_ode), (x_a, _, s_a), (x_b, _, _) = run(0.0), run(1.0), run(1.0)
    assert torch.equal(x_a, x_b) and torch.equal(s_a, s_ode)
    assert (x_a - x_ode).abs().max() > 1e-3
    with pytest.raises(ValueError, match="rollout_eta and rollout_edit_eta must be in"):
        NFTConfig(rollout_eta=2.0)
