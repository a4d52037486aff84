"""PCA whitening: whitened statistics, moments that add up, sign convention, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepercluster.cluster import (
    PCAWhitening,
    feature_moments,
    fit_pca,
    l2_normalize,
    pca_from_moments,
)


def _anisotropic(n: int = 4000, dim: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scales = np.array([10.0, 5.0, 3.0, 1.0, 0.5, 0.2])[:dim]
    x = (rng.standard_normal((n, dim)) * scales) @ rotation.T + 3.0
    return x.astype(np.float32)


def test_whitened_components_have_unit_variance_and_no_covariance() -> None:
    x = _anisotropic()
    pca = fit_pca(x, dim=4, power=0.5)
    z = pca.project(x).astype(np.float64)
    assert z.shape == (x.shape[0], 4)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    # Variance is eigenvalue / (eigenvalue + 1e-5 * 100): 0.999 for the smallest kept axis.
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(4), atol=2e-3)
    np.testing.assert_allclose(pca.eigenvalues, [100, 25, 9, 1], rtol=0.1)
    assert pca.explained_variance_ratio == pytest.approx(135 / 135.29, abs=0.01)


def test_power_zero_only_projects() -> None:
    x = _anisotropic()
    pca = fit_pca(x, dim=3, power=0.0)
    z = pca.project(x).astype(np.float64)
    np.testing.assert_allclose(z.var(axis=0, ddof=1), pca.eigenvalues, rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(pca.projection, axis=0), 1.0, atol=1e-5)


def test_apply_returns_unit_rows() -> None:
    x = _anisotropic(n=500)
    out = PCAWhitening.apply(fit_pca(x, dim=6), x, batch_size=64)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_moments_of_two_halves_add_up_to_the_whole() -> None:
    x = _anisotropic(n=1001)
    whole = fit_pca(x, dim=4)
    parts = [feature_moments(x[:400], batch_size=128), feature_moments(x[400:])]
    n = parts[0][0] + parts[1][0]
    total = parts[0][1] + parts[1][1]
    outer = parts[0][2] + parts[1][2]
    summed = pca_from_moments(n, total, outer, dim=4)
    np.testing.assert_allclose(summed.projection, whole.projection, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(summed.mean, whole.mean, rtol=1e-6)


def test_sign_convention_is_deterministic() -> None:
    x = _anisotropic()
    pca = fit_pca(x, dim=6)
    pivot = np.argmax(np.abs(pca.projection), axis=0)
    assert (pca.projection[pivot, np.arange(6)] > 0).all()
    # -x has the same covariance; eigh may return either sign, the convention removes it.
    np.testing.assert_allclose(fit_pca(-x, dim=6).projection, pca.projection, atol=1e-6)


def test_sample_is_reproducible() -> None:
    x = _anisotropic()
    a, b = fit_pca(x, dim=2, sample=500, seed=1), fit_pca(x, dim=2, sample=500, seed=1)
    np.testing.assert_array_equal(a.projection, b.projection)
    assert not np.array_equal(a.projection, fit_pca(x, dim=2, sample=500, seed=2).projection)


def test_rank_deficient_features_stay_finite() -> None:
    x = _anisotropic(n=300)
    x = np.concatenate([x, x[:, :2]], axis=1)  # 8 columns, rank 6
    out = fit_pca(x, dim=8).apply(x)
    assert np.isfinite(out).all()


def test_dict_round_trip() -> None:
    pca = fit_pca(_anisotropic(n=200), dim=3)
    back = PCAWhitening.from_dict(pca.to_dict())
    for key, value in pca.to_dict().items():
        np.testing.assert_array_equal(back.to_dict()[key], value)
    with pytest.raises(ValueError, match="keys"):
        PCAWhitening.from_dict({"mean": pca.mean})


@pytest.mark.parametrize(
    ("n", "dim", "message"),
    [
        (100, 7, r"cluster.pca_dim \(7\) exceeds the feature dimension \(6\); lower"),
        (4, 4, r"exceeds the number of images minus one \(3\)"),
        (100, 0, "must be >= 1"),
    ],
)
def test_bad_dim_raises(n: int, dim: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit_pca(_anisotropic(n=n), dim=dim)


def test_constant_features_raise() -> None:
    with pytest.raises(ValueError, match="zero variance"):
        fit_pca(np.ones((10, 3), dtype=np.float32), dim=2)


def test_project_checks_the_dimension() -> None:
    pca = fit_pca(_anisotropic(n=50), dim=2)
    with pytest.raises(ValueError, match="refit"):
        pca.project(np.zeros((3, 5), dtype=np.float32))


def test_l2_normalize_keeps_zero_rows() -> None:
    out = l2_normalize(np.array([[3, 4], [0, 0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0, 0]])


def test_apply_tensor_equals_apply() -> None:
    x = _anisotropic(n=300)
    pca = fit_pca(x, dim=5)
    out = pca.apply_tensor(torch.from_numpy(x), batch_size=64)
    assert out.dtype == torch.float32 and out.shape == (300, 5)
    np.testing.assert_allclose(out.numpy(), pca.apply(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="refit the PCA"):
        pca.apply_tensor(torch.zeros((3, 2)))


def test_fit_from_a_tensor_equals_fit_from_an_array() -> None:
    x = _anisotropic(n=400)
    a = fit_pca(x, dim=4, sample=200, seed=1)
    b = fit_pca(torch.from_numpy(x), dim=4, sample=200, seed=1)
    np.testing.assert_allclose(a.projection, b.projection, rtol=1e-6, atol=1e-7)
