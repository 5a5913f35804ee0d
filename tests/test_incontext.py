import pytest
import torch

from dreamlite.incontext import condition_half, pack, unpack


def test_pack_layout():
    target, source = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    canvas = pack(target, source)
    assert canvas.shape == (2, 4, 3, 10)
    assert torch.equal(canvas[..., :5], target) and torch.equal(canvas[..., 5:], source)
    assert torch.equal(unpack(canvas), target) and torch.equal(condition_half(canvas), source)
    blank = pack(target)
    assert torch.equal(blank[..., 5:], torch.zeros_like(target))


def test_pack_errors_name_the_problem():
    with pytest.raises(ValueError, match="differs from target shape"):
        pack(torch.zeros(1, 4, 3, 5), torch.zeros(1, 4, 3, 6))
    with pytest.raises(ValueError, match="latent \\[B, C, h, w\\]"):
        pack(torch.zeros(4, 3, 5))
    with pytest.raises(ValueError, match="odd"):
        unpack(torch.zeros(1, 4, 3, 7))
