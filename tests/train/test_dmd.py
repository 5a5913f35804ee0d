"""Distribution matching distillation (``dreamlite.train.dmd``): known answers of the student's sample, the DMD
direction and its loss, and a one-step generator that learns a Gaussian through a fake network it trains itself."""

import pytest
import torch

from dreamlite.sampling import Conditions
from dreamlite.train.dmd import DMDConfig, dmd_direction, dmd_iteration, dmd_loss, student_sample

SHAPE = (6, 2, 3, 3)  # [B, C, h, w] target latents


def _cond(B: int = SHAPE[0]) -> Conditions:
    return Conditions(torch.zeros(B, 1, 4), torch.ones(B, 1, dtype=torch.long), torch.zeros(B, 2))


class Elementwise(torch.nn.Module):
    """A 'network' v(x_t, t) = f(x, t) applied to every canvas element (MobileUNet's call signature)."""

    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, canvas, t_in, text, mask, time_ids):
        return self.f(canvas, (t_in / 1000).reshape(-1, 1, 1, 1))


class Linear(Elementwise):
    """v = a x + b with learnable a, b."""

    def __init__(self, a: float, b: float):
        super().__init__(None)
        self.a, self.b = torch.nn.Parameter(torch.tensor(a)), torch.nn.Parameter(torch.tensor(b))

    def forward(self, canvas, t_in, text, mask, time_ids):
        return self.a * canvas + self.b


class GaussianVelocity(Elementwise):
    """The exact velocity of data N(m, s^2) in every element: E[noise - x0 | x_t]; m, s learnable."""

    def __init__(self, m: float, s: float):
        super().__init__(None)
        self.m, self.log_s = torch.nn.Parameter(torch.tensor(m)), torch.nn.Parameter(torch.tensor(s).log())

    def forward(self, canvas, t_in, text, mask, time_ids):
        t = (t_in / 1000).reshape(-1, 1, 1, 1)
        s2 = self.log_s.exp() ** 2
        var = (1 - t) ** 2 * s2 + t ** 2
        centred = canvas - (1 - t) * self.m
        x0 = self.m + (1 - t) * s2 / var * centred
        noise = t / var * centred
        return noise - x0


def test_a_constant_velocity_student_lands_on_noise_minus_v_from_every_step():
    c, noise = 0.7, torch.randn(SHAPE)
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0])
    student = Elementwise(lambda x, t: torch.full_like(x, c))
    for k in (0, 1, 2, 3, None):
        torch.testing.assert_close(student_sample(student, noise, sigmas, _cond(), k), noise - c)
    with pytest.raises(ValueError, match="outside"):
        student_sample(student, noise, sigmas, _cond(), 4)


def test_the_gradient_runs_through_the_last_grad_steps_calls_only():
    """v = a x on sigmas 1 -> 0.6 -> 0.3 -> 0: the sample is noise (1 - 0.4 a)(1 - 0.3 a)(1 - 0.3 a). With every
    call differentiated, d sum / da is the product rule's; with the last call only, x_2 is a constant and the
    gradient is -0.3 sum(x_2) (DMD2's backward simulation)."""
    sigmas, noise, a = torch.tensor([1.0, 0.6, 0.3, 0.0]), torch.randn(SHAPE), 0.4
    x_2 = noise * (1 - 0.4 * a) * (1 - 0.3 * a)
    f = lambda a: (1 - 0.4 * a) * (1 - 0.3 * a) ** 2  # noqa: E731
    df = -0.4 * (1 - 0.3 * a) ** 2 - 0.6 * (1 - 0.4 * a) * (1 - 0.3 * a)
    for grad_steps, expected in ((0, df * noise.sum()), (3, df * noise.sum()), (1, -0.3 * x_2.sum())):
        student = Linear(a, 0.0)
        x0_hat = student_sample(student, noise, sigmas, _cond(), grad_steps=grad_steps)
        torch.testing.assert_close(x0_hat.detach(), noise * f(a))
        x0_hat.sum().backward()
        torch.testing.assert_close(student.a.grad, expected)


def test_the_direction_is_the_normalised_difference_of_the_two_denoisers():
    """real v = 0 (x0_real = x_t), fake v = c (x0_fake = x_t - t c): direction = -t c / mean|x0_hat - x_t|."""
    x0_hat, noise, t, c = torch.randn(SHAPE), torch.randn(SHAPE), torch.rand(SHAPE[0]) * 0.9 + 0.05, 0.3
    real = Elementwise(lambda x, t: torch.zeros_like(x))
    fake = Elementwise(lambda x, t: torch.full_like(x, c))
    got = dmd_direction(real, fake, x0_hat, noise, t, _cond(), DMDConfig(guidance_scale=1.0,
                                                                         image_guidance_scale=1.0).guidance)
    x_t = (1 - t.reshape(-1, 1, 1, 1)) * x0_hat + t.reshape(-1, 1, 1, 1) * noise
    scale = (x0_hat - x_t).abs().flatten(1).mean(1).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(got, (-t.reshape(-1, 1, 1, 1) * c / scale).expand(SHAPE))
    off = DMDConfig(guidance_scale=1.0, image_guidance_scale=1.0).guidance
    same = dmd_direction(real, real, x0_hat, noise, t, _cond(), off)
    assert same.abs().max() == 0  # the student's distribution is the real one: nothing to move


def test_the_loss_gradient_is_the_direction_per_element():
    x0_hat, direction = torch.randn(SHAPE, requires_grad=True), torch.randn(SHAPE)
    dmd_loss(x0_hat, direction).backward()
    torch.testing.assert_close(x0_hat.grad, direction / x0_hat.numel())


def test_config_refuses_bad_values():
    for bad in (dict(student_steps=0), dict(fake_updates=0), dict(fake_lr=0.0), dict(t_min=0.5, t_max=0.4),
                dict(t_min=0.0), dict(guidance_scale=-1.0), dict(student_step="first"), dict(grad_steps=5)):
        with pytest.raises(ValueError):
            DMDConfig(**bad)


def test_a_one_step_generator_learns_a_gaussian_from_the_real_denoiser():
    """Real data N(1.5, 0.5^2). The student is one Euler step v = (1 - s_g) z - m_g, i.e. x0 = m_g + s_g z, from
    N(0, 0.3^2) shifted to 0; the fake network fits the student's samples by flow matching. DMD moves the
    student's mean and spread onto the real ones; without the student step nothing moves."""
    torch.manual_seed(0)
    real = GaussianVelocity(1.5, 0.5).requires_grad_(False)
    student, fake = Linear(0.7, 0.0), GaussianVelocity(0.0, 0.3)
    a0 = student.a.item()
    cfg = DMDConfig(guidance_scale=1.0, image_guidance_scale=1.0, student_steps=1, fake_updates=3, fake_warmup=0)
    opts = (torch.optim.Adam(student.parameters(), lr=0.02), torch.optim.Adam(fake.parameters(), lr=0.05))
    draw = lambda g: (torch.zeros(64, 1, 2, 2), _cond(64))  # noqa: E731
    sigmas, gen = torch.tensor([1.0, 0.0]), torch.Generator().manual_seed(0)
    for _ in range(40):  # the fake network follows the student first
        dmd_iteration(student, fake, real, opts, draw, sigmas, cfg, gen, update_student=False)
    assert student.a.item() == a0 and abs(fake.m.item()) < 0.15  # student unchanged, fake fits m_g = 0
    for _ in range(400):
        stats = dmd_iteration(student, fake, real, opts, draw, sigmas, cfg, gen)
    m_g, s_g = -student.b.item(), 1 - student.a.item()  # x0 = z - v = (1 - a) z - b
    assert stats.student_loss == stats.student_loss  # finite once the student learns
    assert m_g == pytest.approx(1.5, abs=0.1) and abs(s_g) == pytest.approx(0.5, abs=0.1)
