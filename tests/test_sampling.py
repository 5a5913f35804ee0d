import pytest
import torch

from dreamlite.sampling import Conditions, Guidance, make_sigmas, sample, velocity


class HandMade:
    """v = text_mean + 10 * mean(condition half): separable effects of text and image."""

    def __init__(self):
        self.calls = []

    def __call__(self, canvas, t, text, mask, ids):
        self.calls.append(canvas.shape[0])
        w = canvas.shape[-1] // 2
        txt = (text * mask[..., None]).sum((1, 2)) / mask.sum(1).clamp(min=1)
        img = canvas[..., w:].mean((1, 2, 3))
        v = (txt + 10 * img + t / 1000)[:, None, None, None] * torch.ones_like(canvas[..., :w])
        return torch.cat([v, torch.zeros_like(v)], -1)


def conds(edit: bool, B=2):
    g = torch.Generator().manual_seed(1)
    return Conditions(text=torch.randn(B, 3, 4, generator=g), mask=torch.ones(B, 3),
                      time_ids=torch.ones(B, 2), uncond_text=torch.randn(B, 2, 4, generator=g),
                      uncond_mask=torch.ones(B, 2),
                      source=torch.randn(B, 4, 2, 2, generator=g) + 1 if edit else None)


def branch(model, x, t, c, text, mask, source):
    return velocity(model, x, t, Conditions(text=text, mask=mask, time_ids=c.time_ids, source=source))


def test_scale_one_is_the_conditional_prediction():
    m, x, t = HandMade(), torch.randn(2, 4, 2, 2), torch.tensor([0.5, 0.5])
    for edit in (False, True):
        c = conds(edit)
        guided = velocity(m, x, t, c, Guidance(1.0, 1.0))
        torch.testing.assert_close(guided, branch(m, x, t, c, c.text, c.mask, c.source))
    assert m.calls[0] == 2  # guidance off: one batch of B, no extra branches


def test_two_way_guidance_formula():
    m, x, t = HandMade(), torch.randn(2, 4, 2, 2), torch.tensor([0.3, 0.3])
    c = conds(False)
    v_c = branch(m, x, t, c, c.text, c.mask, None)
    v_u = branch(m, x, t, c, c.uncond_text, c.uncond_mask, None)
    torch.testing.assert_close(velocity(m, x, t, c, Guidance(4.0)), v_u + 4.0 * (v_c - v_u))
    assert m.calls[-1] == 4  # one network call on the stacked [uncond, cond] batch


def test_three_way_edit_guidance_formula():
    m, x, t = HandMade(), torch.randn(2, 4, 2, 2), torch.tensor([0.7, 0.7])
    c = conds(True)
    v_u = branch(m, x, t, c, c.uncond_text, c.uncond_mask, None)
    v_img = branch(m, x, t, c, c.uncond_text, c.uncond_mask, c.source)
    v_text = branch(m, x, t, c, c.text, c.mask, c.source)
    g, gi = 3.5, 1.5
    expected = v_u + g * (v_text - v_img) + gi * (v_img - v_u)
    torch.testing.assert_close(velocity(m, x, t, c, Guidance(g, gi)), expected)
    assert m.calls[-1] == 6
    assert (v_img - v_u).abs().min() > 1e-3  # the image branch really differs


@pytest.mark.parametrize("edit", [False, True])
def test_guidance_stops_above_max_sigma(edit):
    m, x = HandMade(), torch.randn(2, 4, 2, 2)
    c, g = conds(edit), Guidance(3.0, 1.5, max_sigma=0.6)
    high, low = torch.tensor([0.8, 0.8]), torch.tensor([0.4, 0.4])
    v_c = branch(m, x, high, c, c.text, c.mask, c.source)
    torch.testing.assert_close(velocity(m, x, high, c, g), v_c)  # above: the conditional velocity ...
    assert m.calls[-1] == 2  # ... from one call of B rows
    torch.testing.assert_close(velocity(m, x, low, c, g), velocity(m, x, low, c, Guidance(3.0, 1.5)))
    mixed = torch.tensor([0.8, 0.4])  # per sample (RL and distillation call with mixed t)
    v_mixed = velocity(m, x, mixed, c, g)
    torch.testing.assert_close(v_mixed[0], branch(m, x, mixed, c, c.text, c.mask, c.source)[0])
    torch.testing.assert_close(v_mixed[1], velocity(m, x, mixed, c, Guidance(3.0, 1.5))[1])
    assert (v_mixed[1] - v_c[1]).abs().min() > 1e-3  # the guided sample really differs


def test_errors():
    with pytest.raises(ValueError, match=">= 0"):
        Guidance(-1.0)
    with pytest.raises(ValueError, match="max_sigma"):
        Guidance(2.0, max_sigma=0.0)
    with pytest.raises(ValueError, match="positive integer"):
        make_sigmas(0, 8, 8)
    c = Conditions(text=torch.zeros(1, 1, 4), mask=torch.ones(1, 1), time_ids=torch.ones(1, 2))
    with pytest.raises(ValueError, match="negative prompt"):
        velocity(HandMade(), torch.zeros(1, 4, 2, 2), torch.tensor([0.5]), c, Guidance(2.0))


def test_sampling_is_deterministic_and_repeat_expands():
    m = HandMade()
    c = conds(True).repeat(3)
    assert c.text.shape[0] == 6 and torch.equal(c.text[0], c.text[2])
    x = torch.randn(6, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    a = sample(m, x.clone(), make_sigmas(3, 2, 2), c, Guidance(2.0, 1.5))
    b = sample(m, x.clone(), make_sigmas(3, 2, 2), c, Guidance(2.0, 1.5))
    assert torch.equal(a, b)
