"""IPSVD against its dense twin (explicit matrix square roots) and against plain SVD."""

from __future__ import annotations

import pytest
import torch

from worker.engine.math.ipsvd import (
    covariance_root,
    ipsvd,
    ipsvd_factors,
    random_factors,
    svd_factors,
    truncated_factors,
    weighted_error,
)

D = torch.float64


def _sym_power(C: torch.Tensor, p: float) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(C)
    return (vecs * vals.clamp_min(0.0) ** p) @ vecs.T


def _dense_cov(X: torch.Tensor, ridge: float) -> torch.Tensor:
    C = X.to(D) @ X.to(D).T / X.shape[1]
    return C + ridge * (torch.trace(C) / C.shape[0]) * torch.eye(C.shape[0], dtype=D)


def naive_ipsvd(
    W: torch.Tensor, H: torch.Tensor, Delta: torch.Tensor, rank: int, ridge: float
) -> torch.Tensor:
    """The textbook minimiser: ``S_d^-1 [S_d W S_h]_r S_h^-1`` with dense ``S = C^1/2``."""
    Ch, Cd = _dense_cov(H, ridge), _dense_cov(Delta, ridge)
    Sh, Sd = _sym_power(Ch, 0.5), _sym_power(Cd, 0.5)
    U, s, Vt = torch.linalg.svd(Sd @ W.to(D) @ Sh)
    core = (U[:, :rank] * s[:rank]) @ Vt[:rank]
    return torch.linalg.solve(Sd, core) @ torch.linalg.inv(Sh)


def naive_objective(
    W: torch.Tensor, M: torch.Tensor, H: torch.Tensor, Delta: torch.Tensor, ridge: float
) -> float:
    Sh = _sym_power(_dense_cov(H, ridge), 0.5)
    Sd = _sym_power(_dense_cov(Delta, ridge), 0.5)
    return float(torch.linalg.matrix_norm(Sd @ (W.to(D) - M.to(D)) @ Sh))


def _problem(
    out_f: int, in_f: int, n: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out_f, in_f, generator=g, dtype=D)
    # Anisotropic probes (a few strong directions), as real activations and gradients are.
    H = torch.randn(in_f, n, generator=g, dtype=D) * torch.logspace(1, -2, in_f, dtype=D)[:, None]
    Delta = (
        torch.randn(out_f, n, generator=g, dtype=D) * torch.logspace(0, -3, out_f, dtype=D)[:, None]
    )
    return W, H, Delta


@pytest.mark.parametrize(("out_f", "in_f", "n"), [(12, 20, 64), (20, 12, 64), (16, 24, 10)])
def test_full_rank_reconstructs_exactly(out_f: int, in_f: int, n: int) -> None:
    W, H, Delta = _problem(out_f, in_f, n)
    r = min(out_f, in_f)
    A, B = ipsvd_factors(W, H, Delta, r, ridge=1e-2)
    torch.testing.assert_close(A @ B, W, rtol=1e-9, atol=1e-9)
    A, B = svd_factors(W, r)
    torch.testing.assert_close(A @ B, W, rtol=1e-9, atol=1e-9)


def test_identity_covariances_give_plain_svd() -> None:
    g = torch.Generator().manual_seed(1)
    W = torch.randn(10, 14, generator=g, dtype=D)
    n = 40
    # Rows of H (and Delta) orthonormal times sqrt(N): H H^T / N = I exactly.
    H = torch.linalg.qr(torch.randn(n, 14, generator=g, dtype=D))[0].T * n**0.5
    Delta = torch.linalg.qr(torch.randn(n, 10, generator=g, dtype=D))[0].T * n**0.5
    for ridge in (0.0, 0.3):
        A, B = ipsvd_factors(W, H, Delta, 4, ridge=ridge)
        As, Bs = svd_factors(W, 4)
        torch.testing.assert_close(A @ B, As @ Bs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("n", "ridge"), [(64, 1e-2), (64, 0.0), (9, 1e-2), (9, 1e-6)])
def test_matches_dense_twin(n: int, ridge: float) -> None:
    """Includes N < in and N < out: the ridge alone weighs the complement of the probe span."""
    W, H, Delta = _problem(18, 26, n)
    A, B = ipsvd_factors(W, H, Delta, 5, ridge=ridge)
    expected = naive_ipsvd(W, H, Delta, 5, ridge)
    torch.testing.assert_close(A @ B, expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max()))
    fast = weighted_error(W, A @ B, H, Delta, ridge)
    assert ipsvd(W, H, Delta, 5, ridge).weighted_error == pytest.approx(fast, rel=1e-8)
    naive = naive_objective(W, A @ B, H, Delta, ridge) / naive_objective(
        W, torch.zeros_like(W), H, Delta, ridge
    )
    assert fast == pytest.approx(naive, rel=1e-8)


def test_is_a_minimiser_against_perturbations() -> None:
    W, H, Delta = _problem(14, 22, 8)
    A, B = ipsvd_factors(W, H, Delta, 4, ridge=1e-2)
    best = naive_objective(W, A @ B, H, Delta, 1e-2)
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        dA = 1e-3 * torch.randn(A.shape, generator=g, dtype=D)
        dB = 1e-3 * torch.randn(B.shape, generator=g, dtype=D)
        assert naive_objective(W, (A + dA) @ (B + dB), H, Delta, 1e-2) >= best


def test_lower_weighted_error_than_svd_and_random() -> None:
    W, H, Delta = _problem(24, 32, 96)
    r = 6
    A, B = ipsvd_factors(W, H, Delta, r, ridge=1e-2)
    As, Bs = svd_factors(W, r)
    Ar, Br = random_factors(W, r, torch.Generator().manual_seed(0))
    e_ip = weighted_error(W, A @ B, H, Delta, 1e-2)
    e_svd = weighted_error(W, As @ Bs, H, Delta, 1e-2)
    e_rand = weighted_error(W, Ar @ Br, H, Delta, 1e-2)
    assert e_ip < 0.9 * e_svd
    assert e_ip < 0.9 * e_rand
    # In the unweighted norm, plain SVD is the optimum (Eckart-Young) and beats the random subspace.
    fro = torch.linalg.matrix_norm
    assert fro(W - As @ Bs) <= fro(W - A @ B)
    assert fro(W - As @ Bs) < fro(W - Ar @ Br)


def test_complement_of_probe_span_is_kept_by_the_ridge() -> None:
    """With N < in, W's action outside the probe span is not silently dropped."""
    W, H, Delta = _problem(8, 30, 6)
    _, _, Vt = torch.linalg.svd(H.T, full_matrices=True)
    span, complement = Vt[:6].T, Vt[6:].T  # (in, N) and (in, in - N)
    A, B = ipsvd_factors(W, H, Delta, 8, ridge=1e-2)  # full rank: nothing to truncate
    torch.testing.assert_close(A @ B @ complement, W @ complement, rtol=1e-8, atol=1e-8)
    # Truncated: better, under the regularised objective, than fitting only the probed part.
    A, B = ipsvd_factors(W, H, Delta, 3, ridge=1e-2)
    As, Bs = ipsvd_factors(W @ span @ span.T, H, Delta, 3, ridge=1e-2)
    ours = naive_objective(W, A @ B, H, Delta, 1e-2)
    dropped = naive_objective(W, As @ Bs, H, Delta, 1e-2)
    assert ours < dropped
    assert float(torch.linalg.matrix_norm(A @ B @ complement)) > 0.1 * float(
        torch.linalg.matrix_norm(W @ complement)
    )


def test_ridge_is_relative_to_the_mean_eigenvalue() -> None:
    """Scaling the probes (gradients are tiny) leaves the factorisation unchanged."""
    W, H, Delta = _problem(10, 16, 7)
    A, B = ipsvd_factors(W, H, Delta, 3, ridge=1e-2)
    A2, B2 = ipsvd_factors(W, 1e3 * H, 1e-5 * Delta, 3, ridge=1e-2)
    torch.testing.assert_close(A @ B, A2 @ B2, rtol=1e-7, atol=1e-9)
    root = covariance_root(H, 0.25)
    assert root.lam == pytest.approx(0.25 * float((H**2).sum()) / (H.shape[1] * H.shape[0]))


def test_covariance_root_powers_match_dense() -> None:
    _, H, _ = _problem(4, 12, 5)
    root = covariance_root(H, 1e-2)
    C = _dense_cov(H, 1e-2)
    M = torch.randn(12, 3, dtype=D, generator=torch.Generator().manual_seed(2))
    for p in (0.5, -0.5, 1.0):
        torch.testing.assert_close(root.apply(M, p), _sym_power(C, p) @ M, rtol=1e-8, atol=1e-10)


def test_bad_inputs_are_named() -> None:
    W, H, Delta = _problem(6, 8, 4)
    with pytest.raises(ValueError, match="ridge 0 needs a full-rank"):
        ipsvd_factors(W, H, Delta, 2, ridge=0.0)
    with pytest.raises(ValueError, match="rank must be in"):
        ipsvd_factors(W, H, Delta, 7, ridge=1e-2)
    with pytest.raises(ValueError, match="probe shapes"):
        ipsvd_factors(W, H[:, :3], Delta, 2, ridge=1e-2)
    with pytest.raises(ValueError, match="all zero"):
        ipsvd_factors(W, torch.zeros_like(H), Delta, 2, ridge=1e-2)
    with pytest.raises(ValueError, match="non-negative"):
        covariance_root(H, -1.0)


@pytest.mark.parametrize(("m", "n"), [(9, 15), (15, 9), (12, 12)])
def test_truncated_factors_match_torch_svd(m: int, n: int) -> None:
    g = torch.Generator().manual_seed(3)
    M = torch.randn(m, n, generator=g, dtype=D)
    U, s, Vt = torch.linalg.svd(M, full_matrices=False)
    for r in (1, 4, min(m, n)):
        L, R = truncated_factors(M, r)
        torch.testing.assert_close(L @ R, (U[:, :r] * s[:r]) @ Vt[:r], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(L.norm(dim=0), s[:r].sqrt(), rtol=1e-9, atol=1e-9)
    low = torch.randn(m, 2, generator=g, dtype=D) @ torch.randn(2, n, generator=g, dtype=D)
    L, R = truncated_factors(low, 5)  # rank 2 matrix, rank 5 asked: extra columns are zero-ish
    torch.testing.assert_close(L @ R, low, rtol=1e-7, atol=1e-7)
    assert bool(torch.isfinite(L).all() and torch.isfinite(R).all())


def test_float32_weights_keep_their_dtype() -> None:
    W, H, Delta = (t.float() for t in _problem(6, 8, 20))
    A, B = ipsvd_factors(W, H, Delta, 3, ridge=1e-2)
    assert A.dtype == B.dtype == torch.float32
    assert A.shape == (6, 3) and B.shape == (3, 8)


def _realistic_probes(
    out_f: int, in_f: int, n: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A weight and float32 probes shaped like a SmolLM2 layer's: activations with a decaying
    spectrum and a few large directions, output gradients ~1e-4 of their scale."""
    decay = torch.arange(1, in_f + 1, dtype=torch.float32) ** -0.7
    H = torch.randn(in_f, n, generator=gen) * decay[torch.randperm(in_f, generator=gen)][:, None]
    H[:4] *= 20.0  # outlier features, as real activations have
    dec_d = torch.arange(1, out_f + 1, dtype=torch.float32) ** -1.0
    Delta = 1e-4 * torch.randn(out_f, n, generator=gen) * dec_d[:, None]
    W = torch.randn(out_f, in_f, generator=gen) / in_f**0.5
    return W, H, Delta


# At the default ridge (0.1) float32 stays within 1e-4; a ridge ten times smaller makes the
# inverse roots' large complement weights amplify float32 rounding (measured up to ~4e-4).
@pytest.mark.parametrize(("ridge", "tolerance"), [(0.1, 1e-4), (0.01, 1e-3)])
@pytest.mark.parametrize(("out_f", "in_f"), [(576, 576), (192, 576), (1536, 576), (576, 1536)])
def test_float32_factorisation_matches_float64(
    out_f: int, in_f: int, ridge: float, tolerance: float
) -> None:
    """The float32 mode (for GPUs with slow float64) against the float64 default, on SmolLM2's
    layer shapes with 768 probe columns at the rho 0.5 rank; the error is measured in float64."""
    gen = torch.Generator(device="cpu").manual_seed(out_f + in_f)
    W, H, Delta = _realistic_probes(out_f, in_f, 768, gen)
    rank = (out_f * in_f) // (2 * (out_f + in_f))
    errors = {}
    for dtype in (torch.float64, torch.float32):
        res = ipsvd(W, H, Delta, rank, ridge, dtype=dtype)
        assert res.A.dtype == res.B.dtype == torch.float32  # W's dtype either way
        errors[dtype] = weighted_error(W, res.A @ res.B, H, Delta, ridge)
        assert abs(res.weighted_error - errors[dtype]) < 1e-3 * errors[dtype] + 1e-6
    assert 0.01 < errors[torch.float64] < 0.9
    assert abs(errors[torch.float32] - errors[torch.float64]) <= tolerance * errors[torch.float64]


def test_float32_baselines_match_float64() -> None:
    gen = torch.Generator(device="cpu").manual_seed(5)
    W = torch.randn(96, 64, generator=gen)
    A64, B64 = svd_factors(W, 16)
    A32, B32 = svd_factors(W, 16, dtype=torch.float32)
    torch.testing.assert_close(A32 @ B32, A64 @ B64, rtol=1e-4, atol=1e-4)
    g1, g2 = (torch.Generator(device="cpu").manual_seed(3) for _ in range(2))
    A64, B64 = random_factors(W, 16, g1)
    A32, B32 = random_factors(W, 16, g2, dtype=torch.float32)
    torch.testing.assert_close(A32 @ B32, A64 @ B64, rtol=1e-4, atol=1e-4)  # same seed, same Q
