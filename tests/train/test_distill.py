"""Progressive distillation (Salimans & Ho 2022) in flow form and guidance folding (Meng et al. 2023):
targets with known answers, and a student that learns two teacher steps in one."""

import math

import pytest
import torch

from dreamlite.flow import euler_step
from dreamlite.incontext import pack, unpack
from dreamlite.models.unet import MobileUNet
from dreamlite.presets import preset_config
from dreamlite.sampling import NO_GUIDANCE, Conditions, Guidance, make_sigmas, sample, velocity
from dreamlite.train.distill import (DistillRound, distill_loss, distill_round, guidance_distill_loss,
                                     guided_target, progressive_plan, schedules, step_distill_loss,
                                     two_step_target)

SMALL = dict(block_out_channels=(32, 64, 96), num_attention_heads=(1, 2, 3), cross_attention_dim=64,
             time_embed_dim=64, size_embed_dim=8, norm_num_groups=16, in_channels=4, out_channels=4,
             text_embed_dim=16)


class Field(torch.nn.Module):
    """A model with MobileUNet's signature whose target-half velocity is fn(x [B, D], t [B, 1])."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, canvas, t_in, text, mask, time_ids):
        x = unpack(canvas)
        v = self.fn(x.flatten(1).float(), (t_in.float() / 1000)[:, None]).reshape(x.shape)
        return pack(v.to(canvas.dtype))


def dummy_cond(B: int) -> Conditions:
    return Conditions(text=torch.zeros(B, 1, 4), mask=torch.ones(B, 1), time_ids=torch.ones(B, 2))


A = torch.tensor([[-0.8, 0.6], [-0.6, -0.8]])  # a contracting rotation: Euler steps do not commute trivially


def linear_teacher() -> Field:
    return Field(lambda x, t: x @ A.T)


# ------------------------------------------------------------------------------------------- targets
def test_two_step_target_of_a_constant_velocity_teacher_is_that_velocity():
    c = torch.tensor([0.7, -1.3])
    teacher = Field(lambda x, t: c.expand_as(x))
    sig = make_sigmas(8, 1, 1)
    x = torch.randn(5, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    for i in range(0, 8, 2):
        target = two_step_target(teacher, x, sig[i], sig[i + 1], sig[i + 2], dummy_cond(5))
        torch.testing.assert_close(target, c.reshape(1, 2, 1, 1).expand(5, 2, 1, 1), atol=1e-6, rtol=0)


def test_two_step_target_of_a_linear_teacher_matches_the_closed_form():
    sig = make_sigmas(4, 1, 1)
    x = torch.randn(6, 2, 1, 1, generator=torch.Generator().manual_seed(1))
    j = torch.tensor([0, 1, 0, 1, 1, 0])  # mixed student steps within one batch
    s_i, s_mid, s_next = sig[2 * j], sig[2 * j + 1], sig[2 * j + 2]
    target = two_step_target(linear_teacher(), x, s_i, s_mid, s_next, dummy_cond(6))
    eye = torch.eye(2)
    for b in range(6):
        h1, h2 = (s_mid[b] - s_i[b]).item(), (s_next[b] - s_mid[b]).item()
        M = ((eye + h2 * A) @ (eye + h1 * A) - eye) / (h1 + h2)
        torch.testing.assert_close(target[b].flatten(), M @ x[b].flatten(), atol=1e-5, rtol=1e-5)
    # and one student Euler step with that velocity lands on the teacher's two steps
    t = linear_teacher()
    x_mid = euler_step(x, velocity(t, x, s_i, dummy_cond(6)), s_i, s_mid)
    x_two = euler_step(x_mid, velocity(t, x_mid, s_mid, dummy_cond(6)), s_mid, s_next)
    torch.testing.assert_close(euler_step(x, target, s_i, s_next), x_two, atol=1e-6, rtol=0)


def test_the_student_schedule_is_every_other_teacher_sigma():
    for n, (h, w) in ((1, (4, 4)), (2, (8, 8)), (4, (32, 32)), (8, (64, 48))):
        teacher, student = schedules(n, h, w)
        assert teacher.shape == (2 * n + 1,) and student.shape == (n + 1,)
        torch.testing.assert_close(teacher[::2], student, atol=1e-6, rtol=0)


class HandMade:
    """v = text_mean + 10 * mean(condition half) + t: separable effects of text and image."""

    def __call__(self, canvas, t, text, mask, ids):
        w = canvas.shape[-1] // 2
        txt = (text * mask[..., None]).sum((1, 2)) / mask.sum(1).clamp(min=1)
        img = canvas[..., w:].mean((1, 2, 3))
        v = (txt + 10 * img + t / 1000)[:, None, None, None] + 0.1 * canvas[..., :w]
        return torch.cat([v, torch.zeros_like(v)], -1)


def test_guidance_folding_target_is_the_cfg_formula():
    g = torch.Generator().manual_seed(2)
    m, x, t = HandMade(), torch.randn(3, 4, 2, 2, generator=g), torch.tensor([0.2, 0.5, 0.9])
    text, neg = torch.randn(3, 3, 4, generator=g), torch.randn(3, 2, 4, generator=g)
    src = torch.randn(3, 4, 2, 2, generator=g)
    ones3, ones2, ids = torch.ones(3, 3), torch.ones(3, 2), torch.ones(3, 2)
    branch = lambda tx, mk, s: velocity(m, x, t, Conditions(text=tx, mask=mk, time_ids=ids, source=s))  # noqa
    gen = Conditions(text=text, mask=ones3, time_ids=ids, uncond_text=neg, uncond_mask=ones2)
    v_c, v_u = branch(text, ones3, None), branch(neg, ones2, None)
    torch.testing.assert_close(guided_target(m, x, t, gen, Guidance(4.5)), v_u + 4.5 * (v_c - v_u))
    edit = Conditions(text=text, mask=ones3, time_ids=ids, source=src, uncond_text=neg, uncond_mask=ones2)
    v_u, v_img, v_text = branch(neg, ones2, None), branch(neg, ones2, src), branch(text, ones3, src)
    expected = v_u + 3.0 * (v_text - v_img) + 1.5 * (v_img - v_u)
    torch.testing.assert_close(guided_target(m, x, t, edit, Guidance(3.0, 1.5)), expected)
    # the student regresses exactly that: a student equal to the folded field has zero loss
    folded = lambda canvas, tt, tx, mk, i: pack(guided_target(m, unpack(canvas), tt / 1000, edit,  # noqa
                                                              Guidance(3.0, 1.5)))
    noise, x0 = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    assert guidance_distill_loss(folded, m, x0, noise, t, edit, Guidance(3.0, 1.5)).item() < 1e-10
    assert guidance_distill_loss(m, m, x0, noise, t, edit, Guidance(3.0, 1.5)).item() > 1e-3


def test_progressive_plan():
    plan = progressive_plan(32, 4, Guidance(4.0, 1.5))
    assert [r.name for r in plan] == ["guidance", "steps-16", "steps-8", "steps-4"]
    assert plan[0].guidance == Guidance(4.0, 1.5) and all(r.guidance.off for r in plan[1:])
    assert [r.name for r in progressive_plan(8, 8, NO_GUIDANCE)] == ["guidance"]
    for bad in ((24, 4), (4, 8), (8, 0)):
        with pytest.raises(ValueError):
            progressive_plan(*bad, NO_GUIDANCE)
    with pytest.raises(ValueError, match="step indices"):
        step_distill_loss(linear_teacher(), linear_teacher(), torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1),
                          torch.tensor([2]), make_sigmas(4, 1, 1), dummy_cond(1))


# ------------------------------------------------------------------------------------ a student learns
class Student(torch.nn.Module):
    """v = W(t) x with W(t) a small MLP of t: the family that contains two-Euler-step maps of a linear field."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.SiLU(), torch.nn.Linear(32, 4))
        with torch.no_grad():
            self.net[-1].weight.zero_()
            self.net[-1].bias.copy_(A.flatten())  # starts as the teacher
        self.field = Field(lambda x, t: torch.einsum("bij,bj->bi", self.net(t).reshape(-1, 2, 2), x))

    def forward(self, *args):
        return self.field(*args)


def test_a_student_learns_two_teacher_steps_in_one():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4)
    teacher, student, n = linear_teacher(), Student(), 2
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    draw = lambda gen: (torch.randn(64, 2, 1, 1, generator=gen), dummy_cond(64))  # noqa: E731
    losses = distill_round(student, teacher, opt, draw, DistillRound(n), 300, g, grad_clip=0.0)
    assert losses[-1] < 0.02 * losses[0], (losses[0], losses[-1])
    teacher_sig, student_sig = schedules(n, 1, 1)
    x = torch.randn(256, 2, 1, 1, generator=g)
    with torch.no_grad():
        for j in range(n):  # each student step lands where two teacher steps land
            s_i, s_next = teacher_sig[2 * j], teacher_sig[2 * j + 2]
            one = euler_step(x, velocity(student, x, s_i.expand(256), dummy_cond(256)), s_i, s_next)
            two = sample(teacher, x, teacher_sig[2 * j: 2 * j + 3], dummy_cond(256))
            rel = ((one - two).norm(dim=1) / (two - x).norm(dim=1)).max()
            print(f"step {j}: worst relative error {rel:.4f}")
            assert rel < 0.03
        full_s = sample(student, x, student_sig, dummy_cond(256))  # N student steps vs 2N teacher steps
        full_t = sample(teacher, x, teacher_sig, dummy_cond(256))
        naive = sample(teacher, x, student_sig, dummy_cond(256))  # the teacher with N steps is worse
        err, naive_err = (full_s - full_t).norm(dim=1).mean(), (naive - full_t).norm(dim=1).mean()
        print(f"losses {losses[0]:.4g} -> {losses[-1]:.4g}; N-step student vs 2N-step teacher {err:.2e}, "
              f"N-step teacher {naive_err:.2e}, |x| {full_t.norm(dim=1).mean():.3f}")
        assert err < 0.01 * full_t.norm(dim=1).mean() + 1e-4 and err < 0.1 * naive_err, (err, naive_err)


# ------------------------------------------------------------------------------------ on a tiny U-Net
def test_distill_losses_run_on_a_tiny_unet():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    student = MobileUNet(**preset_config("tiny", **SMALL))
    teacher = MobileUNet(**preset_config("tiny", **SMALL)).eval().requires_grad_(False)
    cond = Conditions(text=torch.randn(2, 3, 16, generator=g), mask=torch.ones(2, 3),
                      time_ids=torch.full((2, 2), 32.0), source=torch.randn(2, 4, 4, 4, generator=g),
                      uncond_text=torch.zeros(2, 1, 16), uncond_mask=torch.ones(2, 1))
    x0 = torch.randn(2, 4, 4, 4, generator=g)
    for rnd in (DistillRound(None, Guidance(3.0, 1.5)), DistillRound(2)):
        loss = distill_loss(student, teacher, x0, cond, rnd, g)
        assert loss.ndim == 0 and math.isfinite(loss.item())
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
        student.zero_grad()
    # per-sample losses, mixed student steps in one batch
    same = step_distill_loss(teacher, teacher, x0, torch.randn(2, 4, 4, 4, generator=g), torch.tensor([0, 1]),
                             make_sigmas(4, 4, 4), cond, reduce=False)
    assert same.shape == (2,) and (same >= 0).all()
