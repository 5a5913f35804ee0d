import torch

from dreamlite.flow import (euler_step, interpolate, noise_from_velocity, resolution_mu, sample_t_logit_normal,
                            shift_sigmas, velocity_target, x0_from_velocity)
from dreamlite.sampling import Conditions, make_sigmas, sample


def test_interpolation_endpoints_and_inverses():
    x0, noise = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    assert torch.equal(interpolate(x0, noise, 0.0), x0)
    assert torch.equal(interpolate(x0, noise, 1.0), noise)
    t = torch.tensor([0.1, 0.5, 0.9])
    x_t = interpolate(x0, noise, t)
    v = velocity_target(x0, noise)
    torch.testing.assert_close(x0_from_velocity(x_t, v, t), x0)
    torch.testing.assert_close(noise_from_velocity(x_t, v, t), noise)


def test_constant_velocity_integrates_exactly():
    """With the true (constant) velocity, Euler over any schedule lands exactly on x0."""
    x0, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    v = velocity_target(x0, noise)

    def model(canvas, t, text, mask, ids):  # returns v for the target half whatever the input
        return torch.cat([v.repeat(canvas.shape[0] // 2, 1, 1, 1), torch.zeros_like(v)], -1)

    cond = Conditions(text=torch.zeros(2, 1, 3), mask=torch.ones(2, 1), time_ids=torch.ones(2, 2))
    out = sample(model, noise.clone(), make_sigmas(7, 3, 3), cond)
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)
    x = noise.clone()
    for a, b in [(1.0, 0.25), (0.25, 0.0)]:
        x = euler_step(x, v, a, b)
    torch.testing.assert_close(x, x0, atol=1e-6, rtol=1e-6)


def test_schedule_matches_documented_official_values():
    # PIPELINE.md Sec. 6: 1024^2 (latent 128x128), 4 steps, mu = 1.16
    torch.testing.assert_close(make_sigmas(4, 128, 128), torch.tensor([1.0, 0.9054, 0.7613, 0.5153, 0.0]),
                               atol=1e-4, rtol=0)
    s28 = make_sigmas(28, 128, 128)
    torch.testing.assert_close(s28[[1, 2, 3, -3, -2]], torch.tensor([0.98852, 0.97645, 0.96375, 0.1970, 0.1057]),
                               atol=1e-4, rtol=0)
    assert abs(resolution_mu(128, 128) - 1.16) < 1e-9
    torch.testing.assert_close(shift_sigmas(torch.tensor([0.5]), 1.16), torch.tensor([0.7613]), atol=1e-4, rtol=0)


def test_logit_normal_times_are_in_range_and_centred():
    t = sample_t_logit_normal(20000, generator=torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    assert abs(t.median().item() - 0.5) < 0.02
    shifted = sample_t_logit_normal(20000, shift_mu=1.0, generator=torch.Generator().manual_seed(0))
    assert shifted.median() > 0.7
