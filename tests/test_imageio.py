"""Known answers of the image helpers shared by the export tests and benchmarks."""

import math

import numpy as np

from dreamlite.imageio import psnr


def test_psnr_known_values():
    a = np.zeros((4, 4, 3), np.uint8)
    assert psnr(a, a) == float("inf")
    b = a.copy()
    b[...] = 1  # MSE 1 -> 20 log10(255)
    assert math.isclose(psnr(a, b), 20 * math.log10(255.0), rel_tol=1e-12)
    c = a.copy()
    c[0, 0, 0] = 255  # MSE 255^2 / 48 -> 10 log10(48)
    assert math.isclose(psnr(a, c), 10 * math.log10(48), rel_tol=1e-12)
    assert psnr(a, c) == psnr(c, a)
