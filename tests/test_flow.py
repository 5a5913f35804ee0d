import pytest
import torch

from dreamlite.flow import (euler_step, interpolate, noise_from_velocity, ddim_step, resolution_mu,
                            sample_t_logit_normal, shift_sigmas, velocity_target, x0_from_velocity)
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


def test_ddim_step_is_euler_at_eta_zero_and_the_ddpm_posterior_at_one():
    """eta = 0 is the Euler step; eta = 1 draws from q(x_s | x_t, x0) of the forward process (its mean and
    variance written out independently here: x_t | x_s = (1-t)/(1-s) x_s + N(0, t^2 - ((1-t)/(1-s))^2 s^2))."""
    g = torch.Generator().manual_seed(0)
    x_t, v, z = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    t, s = 0.7, 0.4
    torch.testing.assert_close(ddim_step(x_t, v, t, s, 0.0, z), euler_step(x_t, v, t, s))
    x0 = x0_from_velocity(x_t, v, t)
    a = (1 - t) / (1 - s)  # x_t = a x_s + N(0, var_ts)
    var_ts = t ** 2 - a ** 2 * s ** 2
    post_var = var_ts * s ** 2 / t ** 2  # Gaussian posterior of x_s given x_t and x0
    post_mean = ((1 - s) * x0 / s ** 2 + a * x_t / var_ts) * post_var
    torch.testing.assert_close(ddim_step(x_t, v, t, s, 1.0, z), post_mean + post_var ** 0.5 * z, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\], got 1.5"):
        ddim_step(x_t, v, t, s, 1.5, z)


def _gaussian_data_model(mu: float, a: float):
    """The exact velocity E[noise - x0 | x_t] for data x0 ~ N(mu, a^2) per entry, in the network's signature."""

    def model(canvas, timestep, text, mask, ids):
        w = canvas.shape[-1] // 2
        x_t, t = canvas[..., :w], (timestep / 1000).reshape(-1, 1, 1, 1)
        var = (1 - t) ** 2 * a ** 2 + t ** 2  # Var[x_t]
        r = x_t - (1 - t) * mu
        x0 = mu + (1 - t) * a ** 2 / var * r
        noise = t / var * r
        return torch.cat([noise - x0, torch.zeros_like(x_t)], -1)

    return model


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_every_eta_samples_the_data_distribution_with_the_exact_velocity(eta):
    """Known answer: with the exact velocity of Gaussian data, the ODE (eta 0) and every stochastic member of the
    family land on N(mu, a^2) (200 steps: Euler's own error is under 0.005 there)."""
    mu, a, n = 0.7, 0.3, 4096
    g = torch.Generator().manual_seed(1)
    cond = Conditions(text=torch.zeros(n, 1, 3), mask=torch.ones(n, 1), time_ids=torch.ones(n, 2))
    x = torch.randn(n, 1, 2, 2, generator=g)
    out = sample(_gaussian_data_model(mu, a), x, make_sigmas(200, 2, 2), cond, eta=eta,
                 noise_sampler=lambda x: torch.randn(x.shape, generator=g))
    assert abs(out.mean().item() - mu) < 0.01
    assert abs(out.std().item() - a) < 0.01
