import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vafusion.metrics import CCC, ccc, ccc_loss


def ccc_reference(x, y):
    """Lin (1989), written from the definition with float64 sums."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y)) / n
    sx = sum((a - mx) ** 2 for a in x) / n
    sy = sum((b - my) ** 2 for b in y) / n
    return 2 * sxy / (sx + sy + (mx - my) ** 2)


def test_ccc_matches_float64_reference():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, 500)
    x = 0.6 * y + 0.2 + rng.normal(0, 0.3, 500)
    assert ccc(x, y) == pytest.approx(ccc_reference(x, y), abs=1e-12)
    assert ccc(y, y) == pytest.approx(1.0)
    yc = y - y.mean()
    assert ccc(-yc, yc) == pytest.approx(-1.0)


def test_ccc_penalises_bias_and_scale_unlike_pearson():
    y = np.linspace(-1, 1, 200)
    assert ccc(y + 0.5, y) < 0.9
    assert ccc(0.5 * y, y) < 0.9
    assert np.corrcoef(y + 0.5, y)[0, 1] == pytest.approx(1.0)


finite = arrays(np.float64, st.integers(2, 60), elements=st.floats(-1, 1, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(finite, st.integers(0, 2**31 - 1))
def test_ccc_properties(x, seed):
    rng = np.random.default_rng(seed)
    y = np.clip(x * rng.uniform(-1, 1) + rng.normal(0, 0.3, len(x)), -1, 1)
    c = ccc(x, y)
    assert -1 - 1e-9 <= c <= 1 + 1e-9
    assert c == pytest.approx(ccc(y, x), abs=1e-12)
    perm = rng.permutation(len(x))
    assert c == pytest.approx(ccc(x[perm], y[perm]), abs=1e-9)
    # shifting both by the same constant changes nothing
    assert c == pytest.approx(ccc(x + 0.3, y + 0.3), abs=1e-9)


def test_streaming_metric_equals_concatenated_ccc_and_honours_mask():
    rng = np.random.default_rng(1)
    y = rng.uniform(-1, 1, (3, 100, 2))
    x = y * 0.7 + rng.normal(0, 0.2, y.shape)
    mask = rng.random((3, 100)) > 0.3
    m = CCC(2)
    for b in range(3):
        m.update(torch.tensor(x[b]), torch.tensor(y[b]), torch.tensor(mask[b]))
    got = m.compute().numpy()
    for d in range(2):
        assert got[d] == pytest.approx(ccc(x[mask][:, d], y[mask][:, d]), abs=1e-9)


def test_ccc_loss_is_one_minus_ccc_and_ignores_masked_frames():
    rng = np.random.default_rng(2)
    y = torch.tensor(rng.uniform(-1, 1, (2, 50, 2)), dtype=torch.float64)
    x = y * 0.5 + 0.1
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[0, :10] = False
    x_bad = x.clone()
    x_bad[0, :10] = 100.0  # garbage on masked frames must not matter
    loss = ccc_loss(x_bad, y, mask)
    ref = 1 - np.mean([ccc(x[mask][:, d].numpy(), y[mask][:, d].numpy()) for d in range(2)])
    assert loss.item() == pytest.approx(ref, abs=1e-6)
