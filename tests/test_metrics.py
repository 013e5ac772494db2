"""Lin's CCC against a from-the-definition reference, as a loss, as a streaming metric; its properties."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
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


# property tests (hypothesis)


def _pair(
    _: None, n: int, seed: int, noise: float, scale: float, bias: float
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, n)
    x = scale * y + bias + rng.normal(0, noise, n)
    return x, y


VA = st.integers(-10000, 10000).map(lambda i: i / 10000)  # valence/arousal values, 4 decimals as annotated


pairs = st.builds(
    _pair,
    st.just(None),
    st.integers(3, 80),
    st.integers(0, 2**31 - 1),
    st.floats(0, 2),
    st.floats(-3, 3),
    st.floats(-2, 2),
)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc * yc).sum() / np.sqrt((xc**2).sum() * (yc**2).sum()))


@settings(max_examples=80, deadline=None)
@given(pairs)
def test_ccc_is_pearson_times_bias_correction_and_never_exceeds_it(xy):
    x, y = xy
    assume(x.std() > 1e-6 and y.std() > 1e-6)
    c, r = ccc(x, y), _pearson(x, y)
    sx, sy = x.std(), y.std()
    bias_correction = 2 * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2)
    assert 0 < bias_correction <= 1 + 1e-12
    assert c == pytest.approx(r * bias_correction, abs=1e-9)
    assert abs(c) <= abs(r) + 1e-9
    assert np.sign(c) == np.sign(r) or abs(r) < 1e-12


@settings(max_examples=80, deadline=None)
@given(pairs, st.floats(0.01, 100) | st.floats(-100, -0.01), st.floats(-50, 50))
def test_ccc_is_unchanged_by_one_affine_map_of_both(xy, a, b):
    x, y = xy
    assume(x.std() > 1e-3 and y.std() > 1e-3)
    assert ccc(a * x + b, a * y + b) == pytest.approx(ccc(x, y), abs=1e-7)


@settings(max_examples=80, deadline=None)
@given(pairs, st.floats(0.05, 20))
def test_ccc_is_not_scale_invariant_but_best_at_the_right_scale(xy, s):
    """Scaling only the prediction changes CCC (unlike Pearson); with matched means, CCC at scale s is
    2 s cov / (s^2 var(x) + var(y)), largest at s = sd(y) / sd(x) where it equals |r|."""
    x, y = xy
    assume(x.std() > 1e-3 and y.std() > 1e-3)
    x = x - x.mean() + y.mean()
    r = _pearson(x, y)
    assert _pearson(s * x, y) == pytest.approx(r, abs=1e-9)
    best = y.std() / x.std()
    xm = x - x.mean()
    at_best = ccc(best * np.sign(r) * xm + y.mean(), y)
    assert at_best >= abs(ccc(s * xm + y.mean(), y)) - 1e-9
    assert at_best == pytest.approx(abs(r), abs=1e-9)


@settings(max_examples=80, deadline=None)
@given(pairs)
def test_moving_the_mean_onto_the_target_never_lowers_ccc(xy):
    x, y = xy
    c = ccc(x, y)
    centred = ccc(x - x.mean() + y.mean(), y)
    assert abs(centred) >= abs(c) - 1e-12


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=VA), VA)
def test_ccc_of_constants_is_defined(x, k):
    const = np.full_like(x, k)
    assert ccc(const, const) == 1.0  # identical constants: perfect agreement
    value = ccc(x, const)
    if np.ptp(x) > 0:
        assert abs(value) < 1e-12  # no covariance with a constant
    else:
        assert value == pytest.approx(1.0 if x[0] == k else 0.0, abs=1e-12)  # two constants: agree or not


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(5, 60), st.floats(0, 0.9))
def test_streaming_metric_and_loss_equal_the_batch_formula_for_any_split_and_mask(seed, batches, t, drop):
    rng = np.random.default_rng(seed)
    y = rng.uniform(-1, 1, (batches, t, 2))
    x = 0.5 * y + rng.normal(0, 0.4, y.shape)
    mask = rng.random((batches, t)) >= drop
    assume(mask.sum() >= 2)
    metric = CCC(2)
    for b in rng.permutation(batches):
        metric.update(torch.tensor(x[b]), torch.tensor(y[b]), torch.tensor(mask[b]))
    ref = [ccc(x[mask][:, d], y[mask][:, d]) for d in range(2)]
    assert metric.compute().numpy() == pytest.approx(ref, abs=1e-9)
    loss = ccc_loss(torch.tensor(x), torch.tensor(y), torch.tensor(mask)).item()
    assert loss == pytest.approx(1 - np.mean(ref), abs=1e-6)


def test_ccc_refuses_two_dimensions_instead_of_flattening_them():
    """(N, 2) valence/arousal flattened would mix the two dimensions into one meaningless number."""
    rng = np.random.default_rng(0)
    va = rng.uniform(-1, 1, (50, 2))
    with pytest.raises(ValueError, match=r"takes one series, got shape \(50, 2\); score each column"):
        ccc(va, va)
    assert ccc(va[:, :1], va[:, :1]) == pytest.approx(1.0)  # one column is one series
