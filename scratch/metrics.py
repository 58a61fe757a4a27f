"""Scores of generated samples, computed on features: Fréchet distance, kernel distance, precision/recall,
and the Inception Score.

Shape letters: N and M the samples of the two sets, d the feature width, K the classes.

Each score compares two sets of feature vectors (rows), real and generated, as the field does
with Inception v3's pool features; here the features come from the digit classifier of
scratch/classifier.py (scratch/scoring.py wires them together). No score has a gradient: these
are plain functions, not forward/backward pairs. Each returns a Python float, computed in
float64 whatever the input dtype: a score is one number read by people, and float32 sums over
a million kernel entries would lose its third digit. (The DESIGN rule "dtype in = dtype out"
is about arrays that flow on through a network; a score flows nowhere.)
"""

import numpy as np


def _check_features(name, x, min_samples=2):
    """x as float64 (N, d) with N ≥ min_samples and every entry finite; TypeError/ValueError naming `name` otherwise."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array (float32 or float64), got dtype {x.dtype} with shape {x.shape}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, d), got shape {x.shape}")
    if x.shape[0] < min_samples:
        raise ValueError(f"{name} must hold at least {min_samples} samples (rows), got shape {x.shape}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one feature (column), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(x)))} non-finite values (NaN or ±inf), shape {x.shape}")
    return x.astype(np.float64)


def _check_pair(a, b, names=("a", "b"), min_samples=2):
    a, b = _check_features(names[0], a, min_samples), _check_features(names[1], b, min_samples)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same feature width d: {names[0]} has shape "
                         f"{a.shape}, {names[1]} has shape {b.shape}")
    return a, b


# ----------------------------------------------------------------------------------------------
# Fréchet distance (Heusel et al. 2017): two Gaussians fitted to the two sets of features
# ----------------------------------------------------------------------------------------------


def frechet_distance(a, b):
    """The Fréchet (2-Wasserstein) distance² between N(μ_a, Σ_a) and N(μ_b, Σ_b) fitted to a (N, d) and b (M, d).

        FID = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½)

    with the unbiased covariances (divided by N − 1, as torchmetrics and pytorch-fid do). 0 for
    two sets with the same mean and covariance; for identical sets it can come out as ±1e-12,
    rounding, which is left as it is rather than hidden by a clip. Where a covariance is singular
    (d ≥ N, or a dead feature) its zero eigenvalues come out as ±ε·Tr Σ and their square roots as
    √ε·Tr Σ ≈ 1e-8·Tr Σ: there, FID is exact to about that much (so is every implementation's).
    """
    a, b = _check_pair(a, b)
    # BEGIN SOLUTION
    # HINT: Tr((Σ_a Σ_b)^½) is Σ √λ over the eigenvalues λ of the symmetric Σ_a^½ Σ_b Σ_a^½ (np.linalg.eigh, eigvalsh).
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)  # (d,), (d,)
    # Σ = (1 / (N − 1)) Σ_i (x_i − μ)(x_i − μ)ᵀ
    centred_a, centred_b = a - mu_a, b - mu_b  # (N, d), (M, d)
    cov_a = centred_a.T @ centred_a / (len(a) - 1)  # (d, d)
    cov_b = centred_b.T @ centred_b / (len(b) - 1)  # (d, d)
    # Σ_a Σ_b is not symmetric, but Σ_a^½ (Σ_a^½ Σ_b) and (Σ_a^½ Σ_b) Σ_a^½ share their eigenvalues (AB and BA
    # always do), and the second, Σ_a^½ Σ_b Σ_a^½, is symmetric positive semi-definite. So the eigenvalues λ of
    # Σ_a Σ_b are real and ≥ 0, its square root has eigenvalues √λ, and Tr((Σ_a Σ_b)^½) = Σ √λ.
    w, v = np.linalg.eigh(cov_a)  # (d,), (d, d): Σ_a = V diag(w) Vᵀ
    # A covariance is PSD, so a negative w is rounding (−1e-17 where Σ_a is singular: d > N − 1, a dead feature);
    # clipped to 0 rather than let √ make a NaN. A truly negative eigenvalue cannot come out of XᵀX.
    sqrt_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # (d, d), Σ_a^½ = V diag(√w) Vᵀ, symmetric
    middle = sqrt_a @ cov_b @ sqrt_a  # (d, d), Σ_a^½ Σ_b Σ_a^½
    lam = np.linalg.eigvalsh((middle + middle.T) / 2.0)  # (d,), symmetrised: rounding leaves it 1e-16 off
    trace_sqrt = np.sqrt(np.clip(lam, 0.0, None)).sum()  # Tr((Σ_a Σ_b)^½); the clip as above
    diff = mu_a - mu_b  # (d,)
    fid = diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_sqrt
    # END SOLUTION
    return float(fid)


# ----------------------------------------------------------------------------------------------
# Kernel distance (Bińkowski et al. 2018, KID): the unbiased MMD² with a cubic polynomial kernel
# ----------------------------------------------------------------------------------------------


def polynomial_kernel(x, y):
    """k(x, y) = (xᵀy / d + 1)³ for every pair of rows of x (N, d) and y (M, d): an (N, M) matrix."""
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3  # (N, M)


def kernel_distance(a, b):
    """KID: the unbiased estimate of MMD² between the distributions of a (N, d) and b (M, d), all pairs used.

        MMD²_u = 1/(N(N−1)) Σ_{i≠j} k(a_i, a_j) + 1/(M(M−1)) Σ_{i≠j} k(b_i, b_j) − 2/(NM) Σ_{i,j} k(a_i, b_j)

    Unbiased: its mean over draws of the two sets is the true MMD², so for two sets drawn from
    one distribution it scatters around 0 and is negative about half the time. (KID as
    torchmetrics computes it averages this over random subsets; here there is one subset, all.)
    """
    a, b = _check_pair(a, b)
    # BEGIN SOLUTION
    # HINT: the within-set sums leave out i = j: subtract each kernel matrix's trace.
    n, m = len(a), len(b)
    k_aa, k_bb, k_ab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)  # (N, N), (M, M), (N, M)
    # k(a_i, a_i) pairs a sample with itself: an unbiased estimate of E k(x, x') uses distinct pairs only
    within_a = (k_aa.sum() - np.trace(k_aa)) / (n * (n - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    across = k_ab.sum() / (n * m)
    mmd2 = within_a + within_b - 2.0 * across
    # END SOLUTION
    return float(mmd2)


# ----------------------------------------------------------------------------------------------
# Precision and recall (Kynkäänniemi et al. 2019): k-nearest-neighbour balls around each sample
# ----------------------------------------------------------------------------------------------


def pairwise_sq_distances(x, y, rows=256):
    """‖x_i − y_j‖² for x (N, d), y (M, d): (N, M), as sums of squared differences.

    Not ‖x‖² + ‖y‖² − 2xᵀy, which is faster but leaves 1e-13 where x_i = y_j: a sample then lies
    outside a ball of radius 0 around its own copy. Chunks of `rows` keep the (rows, M, d) temporary small.
    """
    out = np.empty((len(x), len(y)))  # (N, M)
    for start in range(0, len(x), rows):
        diff = x[start:start + rows, None, :] - y[None, :, :]  # (rows, M, d)
        out[start:start + rows] = np.einsum("nmd,nmd->nm", diff, diff)
    return out


def knn_radii(x, k):
    """The squared distance from each row of x (N, d) to its k-th nearest neighbour among the other rows: (N,)."""
    # BEGIN SOLUTION
    # HINT: a sample is not its own neighbour: put +inf on the diagonal, then np.partition each row.
    dist = pairwise_sq_distances(x, x)  # (N, N)
    np.fill_diagonal(dist, np.inf)  # exclude the point itself
    return np.partition(dist, k - 1, axis=1)[:, k - 1]  # (N,), the k-th smallest of the N − 1 others
    # END SOLUTION


def precision_recall(real, fake, k=3):
    """(precision, recall) of fake (M, d) against real (N, d), each in [0, 1] (Kynkäänniemi et al. 2019).

    The manifold of a set is the union of balls around its samples, each ball's radius the
    distance to the sample's k-th nearest neighbour in its own set (the sample itself excluded).
        precision = share of fake samples inside the real manifold   (are the samples realistic?)
        recall    = share of real samples inside the fake manifold   (is the real variety covered?)
    Needs k ≤ N − 1 and k ≤ M − 1.
    """
    real, fake = _check_pair(real, fake, ("real", "fake"))
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k >= min(len(real), len(fake)):
        raise ValueError(f"k = {k} needs more than k samples in each set (a k-th neighbour besides the sample "
                         f"itself): real has shape {real.shape}, fake has shape {fake.shape}")
    # BEGIN SOLUTION
    # HINT: fake_j is inside real_i's ball when ‖fake_j − real_i‖² ≤ radius_i²; any i will do.
    real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)  # (N,), (M,), squared
    cross = pairwise_sq_distances(real, fake)  # (N, M)
    # precision: fake_j counts when some real_i's ball holds it
    precision = np.mean(np.any(cross <= real_radii[:, None], axis=0))
    # recall: real_i counts when some fake_j's ball holds it
    recall = np.mean(np.any(cross <= fake_radii[None, :], axis=1))
    # END SOLUTION
    return float(precision), float(recall)


# ----------------------------------------------------------------------------------------------
# The Inception Score (Salimans et al. 2016), here with the digit classifier's p(y | x)
# ----------------------------------------------------------------------------------------------


def inception_score(probs):
    """exp(E_x KL(p(y|x) ‖ p(y))) of class probabilities probs (N, K), rows summing to 1; p(y) = their mean.

    High when each sample is confidently one class (p(y|x) sharp) and the classes are evenly
    used (p(y) flat). The exponent is the mutual information between sample and label, at most
    H(y) ≤ log K, so 1 ≤ IS ≤ K: 10 for digits each certain and every digit equally often.
    """
    probs = _check_features("probs", probs, min_samples=1)
    if probs.min() < 0.0 or np.max(np.abs(probs.sum(axis=1) - 1.0)) > 1e-4:
        raise ValueError(f"probs (shape {probs.shape}) must be probabilities: entries ≥ 0 and rows summing to 1, "
                         f"got entries in [{probs.min():.3g}, {probs.max():.3g}] and row sums in "
                         f"[{probs.sum(axis=1).min():.6g}, {probs.sum(axis=1).max():.6g}]")
    # BEGIN SOLUTION
    # HINT: 0 · log 0 = 0: a class a sample gives no mass to contributes nothing to its KL.
    marginal = probs.mean(axis=0)  # (K,), p(y) = E_x p(y | x)
    # KL(p(y|x) ‖ p(y)) = Σ_y p(y|x) (log p(y|x) − log p(y)); where p(y|x) = 0 the term is 0 (and p(y) > 0 elsewhere)
    safe = np.where(probs > 0.0, probs, 1.0)  # (N, K), log 1 = 0 where the mass is 0
    kl = np.sum(probs * (np.log(safe) - np.log(np.where(marginal > 0.0, marginal, 1.0))), axis=1)  # (N,)
    score = np.exp(kl.mean())
    # END SOLUTION
    return float(score)
