"""The scores of scratch/metrics.py: against torchmetrics given the same features, against direct
O(N²) computations on small sets, their invariants, and their behaviour on extreme and bad input.

torchmetrics' FrechetInceptionDistance and KernelInceptionDistance take any nn.Module as their
`feature` extractor; the one here returns rows of a fixed feature matrix, so the "images" fed to
`update` are row indices and no Inception network is built or downloaded. KID's subsets are
drawn with torch.randperm; with subsets=1 and subset_size = N the one subset is every sample
(in a random order, which MMD² does not see), so torchmetrics' number is ours exactly.
"""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from checks.implementations import require_package
from scratch import metrics as M

pytestmark = pytest.mark.metrics

RTOL = 1e-7  # float64 scores from two different orders of summation (and eig vs eigh): 1e-12 is typical


def gaussian_sets(seed, n=300, m=250, d=12, shift=0.3):
    """Two sets of correlated Gaussian features, the second shifted and rescaled."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)  # (d, d)
    a = rng.standard_normal((n, d)) @ mix  # (n, d)
    b = 1.3 * rng.standard_normal((m, d)) @ mix + shift  # (m, d)
    return a, b


def close(actual, expected, rtol=RTOL, atol=1e-10, what="score"):
    assert abs(actual - expected) <= atol + rtol * abs(expected), (
        f"{what}: scratch gives {actual!r}, reference {expected!r} (abs error {abs(actual - expected):.3g}, "
        f"tolerance atol={atol:g} + rtol={rtol:g}·|expected|)")


def _rows_module(torch, table):
    """An nn.Module mapping a tensor of row indices to those rows of `table` (float64)."""

    class Rows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.from_numpy(table))
            self.num_features = table.shape[1]  # read by FrechetInceptionDistance instead of a dummy image

        def forward(self, index):
            return self.table[index]

    return Rows()


def torchmetrics_scores(a, b):
    """(FID, KID) of torchmetrics with a and b as the precomputed features of 'real' and 'fake'."""
    torch = require_package("torch")
    require_package("torchmetrics")
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    table = np.concatenate([a, b]).astype(np.float64)  # (N + M, d)
    real, fake = torch.arange(len(a)), torch.arange(len(a), len(a) + len(b))
    fid = FrechetInceptionDistance(feature=_rows_module(torch, table))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    fid_value = float(fid.compute())
    kid_value = None
    if len(a) == len(b):  # torchmetrics' MMD assumes subsets of one size
        with pytest.warns(UserWarning, match="save all extracted features"):
            kid = KernelInceptionDistance(feature=_rows_module(torch, table), subsets=1, subset_size=len(a))
        kid.update(real, real=True)
        kid.update(fake, real=False)
        kid_value = float(kid.compute()[0])
    return fid_value, kid_value


# ----------------------------------------------------------------------------------------------
# Against torchmetrics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_equals_torchmetrics(seed):
    a, b = gaussian_sets(seed)
    expected, _ = torchmetrics_scores(a, b)
    close(M.frechet_distance(a, b), expected, what=f"FID (seed {seed})")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kernel_distance_equals_torchmetrics_with_one_subset_of_everything(seed):
    a, b = gaussian_sets(seed, n=200, m=200)
    _, expected = torchmetrics_scores(a, b)
    close(M.kernel_distance(a, b), expected, what=f"KID (seed {seed})")


def test_frechet_distance_equals_torchmetrics_when_d_exceeds_n():
    """Rank-deficient covariances (d = 40 > N − 1 = 29): both stay finite and agree."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((30, 40)), rng.standard_normal((30, 40)) + 0.1
    expected, kid = torchmetrics_scores(a, b)
    actual = M.frechet_distance(a, b)
    assert np.isfinite(actual)
    close(actual, expected, rtol=1e-6, what="FID with d > N")
    close(M.kernel_distance(a, b), kid, what="KID with d > N")


# ----------------------------------------------------------------------------------------------
# Against direct computations, term by term
# ----------------------------------------------------------------------------------------------


def test_frechet_distance_equals_the_textbook_formula_with_scipy_sqrtm():
    scipy_linalg = require_package("scipy.linalg")
    a, b = gaussian_sets(4, n=80, m=60, d=5)
    cov_a = sum(np.outer(x - a.mean(0), x - a.mean(0)) for x in a) / (len(a) - 1)  # one outer product per sample
    cov_b = sum(np.outer(x - b.mean(0), x - b.mean(0)) for x in b) / (len(b) - 1)
    root = scipy_linalg.sqrtm(cov_a @ cov_b)  # the matrix square root of the (non-symmetric) product
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a + cov_b - 2 * np.real(root))
    close(M.frechet_distance(a, b), float(expected), what="FID against scipy.linalg.sqrtm")


def test_kernel_distance_equals_a_double_loop():
    a, b = gaussian_sets(5, n=12, m=9, d=4)
    d = a.shape[1]

    def k(x, y):
        return (float(np.dot(x, y)) / d + 1.0) ** 3

    n, m = len(a), len(b)
    within_a = sum(k(a[i], a[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    within_b = sum(k(b[i], b[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    across = sum(k(x, y) for x in a for y in b) / (n * m)
    close(M.kernel_distance(a, b), within_a + within_b - 2 * across, what="KID against a double loop")


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_equal_a_direct_loop(k):
    real, fake = gaussian_sets(6, n=40, m=30, d=3, shift=0.8)

    def radius(points, i):  # the k-th smallest distance from points[i] to the other points
        return sorted(np.linalg.norm(points[i] - points[j]) for j in range(len(points)) if j != i)[k - 1]

    real_r = [radius(real, i) for i in range(len(real))]
    fake_r = [radius(fake, j) for j in range(len(fake))]
    precision = np.mean([any(np.linalg.norm(f - r) <= real_r[i] for i, r in enumerate(real)) for f in fake])
    recall = np.mean([any(np.linalg.norm(r - f) <= fake_r[j] for j, f in enumerate(fake)) for r in real])
    assert 0 < precision < 1 and 0 < recall < 1, "the sets overlap only in part, or the check proves little"
    assert M.precision_recall(real, fake, k=k) == (precision, recall)


def test_inception_score_equals_its_definition():
    rng = np.random.default_rng(7)
    logits = 3 * rng.standard_normal((50, 10))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    marginal = probs.mean(axis=0)
    kl = [sum(p[y] * np.log(p[y] / marginal[y]) for y in range(10)) for p in probs]
    close(M.inception_score(probs), float(np.exp(np.mean(kl))), what="IS")


# ----------------------------------------------------------------------------------------------
# Invariants
# ----------------------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 60), d=st.integers(1, 20))
def test_frechet_distance_of_a_set_with_itself_is_zero_and_never_meaningfully_negative(seed, n, d):
    """Exact up to rounding when Σ has full rank; where it is singular (N − 1 < d + a few) the zero eigenvalues of
    Σ_a^½ Σ_b Σ_a^½ come out as ±1e-16·Tr Σ, and their square roots as 1e-8·Tr Σ: √ε, not ε, is the limit there."""
    a = np.random.default_rng(seed).standard_normal((n, d)) * 3
    scale = max(float(np.trace(np.cov(a, rowvar=False).reshape(d, d))), 1.0)  # rounding is relative to the traces
    tolerance = 1e-9 * scale if n > d + 10 else 1e-7 * d * scale
    assert abs(M.frechet_distance(a, a)) <= tolerance


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 40), m=st.integers(2, 40), d=st.integers(1, 12))
def test_frechet_distance_is_symmetric_nonnegative_and_translation_invariant(seed, n, m, d):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((n, d)), 2 * rng.standard_normal((m, d)) + 1
    forward, backward = M.frechet_distance(a, b), M.frechet_distance(b, a)
    close(backward, forward, rtol=1e-8, atol=1e-8, what="FID(b, a) against FID(a, b)")
    assert forward >= -1e-8
    t = rng.standard_normal(d) * 10
    close(M.frechet_distance(a + t, b + t), forward, rtol=1e-8, atol=1e-8, what="FID after translating both sets")


def test_frechet_distance_of_shifted_copies_is_the_squared_shift():
    a, _ = gaussian_sets(8)
    t = np.arange(a.shape[1]) / 4
    close(M.frechet_distance(a, a + t), float(t @ t), rtol=1e-9, atol=1e-9, what="FID of a translated copy")


def test_kernel_distance_of_one_distribution_is_unbiased_around_zero():
    """Two sets from one distribution: MMD²_u scatters around 0 (some draws negative), the biased one would not."""
    values = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        values.append(M.kernel_distance(rng.standard_normal((60, 4)), rng.standard_normal((60, 4))))
    values = np.array(values)
    spread = values.std() / np.sqrt(len(values))
    assert (values < 0).any(), f"an unbiased MMD² of one distribution must come out negative sometimes: {values}"
    assert abs(values.mean()) <= 4 * spread, f"mean {values.mean():.3g} is {abs(values.mean()) / spread:.1f} standard errors from 0"
    far = M.kernel_distance(np.random.default_rng(0).standard_normal((60, 4)),
                            np.random.default_rng(1).standard_normal((60, 4)) + 2)
    assert far > 20 * values.std(), "shifted sets should score far above the spread of equal ones"


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 30), m=st.integers(2, 30), d=st.integers(1, 8))
def test_kernel_distance_is_symmetric(seed, n, m, d):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    close(M.kernel_distance(b, a), M.kernel_distance(a, b), rtol=1e-9, atol=1e-9, what="KID(b, a) against KID(a, b)")


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(4, 40), d=st.integers(1, 8), k=st.integers(1, 3))
def test_precision_and_recall_of_a_set_with_itself_are_one(seed, n, d, k):
    a = np.random.default_rng(seed).standard_normal((n, d))
    assert M.precision_recall(a, a, k=k) == (1.0, 1.0)


def test_precision_and_recall_of_far_apart_sets_are_zero():
    a, b = gaussian_sets(9)
    assert M.precision_recall(a, b + 1000.0) == (0.0, 0.0)


def test_precision_and_recall_tell_collapse_from_noise():
    """A collapsed generator (all its samples on a few real ones) is precise but has no recall; noise is the reverse."""
    rng = np.random.default_rng(10)
    real = rng.standard_normal((300, 2))
    collapsed = real[:5].repeat(60, axis=0) + 1e-3 * rng.standard_normal((300, 2))
    precision, recall = M.precision_recall(real, collapsed)
    assert precision > 0.95 and recall < 0.1, (precision, recall)
    spread = 4 * rng.standard_normal((300, 2))
    precision, recall = M.precision_recall(real, spread)
    assert precision < 0.5 and recall > 0.9, (precision, recall)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 50), k=st.integers(2, 12), sharp=st.floats(0.0, 8.0))
def test_inception_score_lies_between_one_and_the_number_of_classes(seed, n, k, sharp):
    logits = sharp * np.random.default_rng(seed).standard_normal((n, k))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    score = M.inception_score(probs)
    assert 1.0 - 1e-9 <= score <= k + 1e-9


def test_inception_score_extremes():
    assert abs(M.inception_score(np.eye(10)[np.arange(1000) % 10]) - 10.0) < 1e-9  # certain and balanced: K
    assert abs(M.inception_score(np.eye(10)[np.zeros(100, int)]) - 1.0) < 1e-12  # one class only: 1
    assert abs(M.inception_score(np.full((100, 10), 0.1)) - 1.0) < 1e-12  # never certain: 1


# ----------------------------------------------------------------------------------------------
# Extreme input: rank-deficient covariances, d > N, float32
# ----------------------------------------------------------------------------------------------


def test_rank_deficient_covariances_give_finite_scores():
    rng = np.random.default_rng(11)
    a = np.zeros((50, 6))
    a[:, :2] = rng.standard_normal((50, 2))  # four dead features: Σ_a has rank 2
    b = a + 0.0
    b[:, 5] = 1.0  # a constant feature: zero variance, shifted mean
    fid = M.frechet_distance(a, b)
    assert np.isfinite(fid)
    close(fid, 1.0, rtol=1e-9, atol=1e-9, what="FID of sets differing by a constant feature")
    assert np.isfinite(M.kernel_distance(a, b))
    assert M.precision_recall(a, a) == (1.0, 1.0)


@pytest.mark.parametrize("n, d", [(2, 1), (2, 30), (10, 200)])
def test_tiny_sets_and_wide_features(n, d):
    rng = np.random.default_rng(12)
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    for name, score in (("FID", M.frechet_distance), ("KID", M.kernel_distance)):
        assert np.isfinite(score(a, b)), f"{name} of {n} samples of width {d} is not finite"
    trace = float(np.trace(np.cov(a, rowvar=False).reshape(d, d)))
    assert abs(M.frechet_distance(a, a)) < 1e-7 * d * max(trace, 1.0)  # singular Σ: √ε-exact (see the check above)


def test_float32_features_are_scored_in_float64():
    a, b = gaussian_sets(13)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    for score in (M.frechet_distance, M.kernel_distance, M.precision_recall):
        got = score(a32, b32)
        assert got == score(a32.astype(np.float64), b32.astype(np.float64)), f"{score.__name__} on float32"
        assert isinstance(got, (float, tuple))
    assert isinstance(M.frechet_distance(a32, b32), float)


# ----------------------------------------------------------------------------------------------
# Bad input: a ValueError (TypeError for a wrong dtype kind) naming the argument and the shapes
# ----------------------------------------------------------------------------------------------


BAD = [
    ("mismatched feature widths", lambda f: f(np.zeros((5, 3)), np.zeros((5, 4))), ValueError, ["(5, 3)", "(5, 4)"]),
    ("one sample", lambda f: f(np.zeros((1, 3)), np.zeros((5, 3))), ValueError, ["(1, 3)", "at least 2"]),
    ("a vector, not rows", lambda f: f(np.zeros(5), np.zeros((5, 1))), ValueError, ["(N, d)", "(5,)"]),
    ("NaN", lambda f: f(np.full((5, 3), np.nan), np.zeros((5, 3))), ValueError, ["non-finite", "(5, 3)"]),
    ("infinity", lambda f: f(np.zeros((5, 3)), np.full((5, 3), np.inf)), ValueError, ["non-finite"]),
    ("integers", lambda f: f(np.zeros((5, 3), int), np.zeros((5, 3))), TypeError, ["int64", "(5, 3)"]),
]


@pytest.mark.parametrize("score", [M.frechet_distance, M.kernel_distance, M.precision_recall], ids=lambda f: f.__name__)
@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_refused_with_a_clear_error(score, case):
    _, call, error, fragments = case
    with pytest.raises(error) as raised:
        call(score)
    for fragment in fragments:
        assert fragment in str(raised.value), f"{score.__name__}: {fragment!r} missing from {str(raised.value)!r}"


@pytest.mark.parametrize("k", [5, 6, 0, -1, 2.0, True])
def test_precision_recall_refuses_a_k_without_enough_neighbours(k):
    with pytest.raises(ValueError, match="k"):
        M.precision_recall(np.zeros((5, 2)), np.ones((8, 2)), k=k)


@pytest.mark.parametrize("probs", [np.full((4, 3), 0.5), -np.eye(3), np.ones(3) / 3, np.full((2, 2), np.nan)])
def test_inception_score_refuses_what_is_not_probabilities(probs):
    with pytest.raises(ValueError, match="probs"):
        M.inception_score(probs)
