"""p-variation of complex paths follows the definition with the modulus |z| = (sum |z_i|^2)^(1/2): a complex
path is never cut to its real part."""
import warnings

import numpy as np
import pytest
import torch

from projects.depth_limit.pvar import METHODS, p_variation


@pytest.mark.parametrize("method", [m for m in METHODS if m != "auto"])
def test_complex_path_uses_the_modulus(method):
    z = np.array([0, 1j, 1 + 1j, 2])
    # increments 1, 1, |1 - i| = sqrt(2); best partition 0 -> i -> 2: |i|^2 + |2 - i|^2 = 1 + 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's ComplexWarning (discarding the imaginary part) would be an error
        res = p_variation(z, 2, method=method)
    assert res.value == pytest.approx(6.0) and list(res.partition) == [0, 1, 3]
    assert p_variation(z.real, 2, method=method).value == pytest.approx(4.0)  # the real part alone differs


def test_complex_points_in_c_d_equal_their_real_embedding_and_torch_agrees():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 3)) + 1j * rng.normal(size=(40, 3))
    embedded = np.concatenate([z.real, z.imag], axis=1)
    for p in (1.0, 2.0, 3.5):
        expected = p_variation(embedded, p).value
        assert p_variation(z, p).value == pytest.approx(expected, rel=1e-12)
        assert p_variation(torch.from_numpy(z), p).value == pytest.approx(expected, rel=1e-12)
        assert p_variation(torch.from_numpy(z).conj(), p).value == pytest.approx(expected, rel=1e-12)
