"""Influence-preserving SVD (IPSVD) and the two baseline factorisations.

For a linear layer ``y = W h`` with probe inputs ``H: (in, N)`` and output gradients
``Delta: (out, N)``, IPSVD finds the rank-``r`` matrix ``M = A B`` minimising

    || C_delta^1/2 (W - M) C_h^1/2 ||_F,
    C_h     = H H^T / N         + lambda_h I,   lambda_h     = ridge * tr(H H^T / N) / in,
    C_delta = Delta Delta^T / N + lambda_d I,   lambda_d     = ridge * tr(Delta Delta^T / N) / out.

The ridge is relative to the mean eigenvalue of each empirical covariance, so the result does
not depend on the scale of the probes (gradients are tiny, activations are not). With ``N``
below a layer's width, the empirical covariance is singular: the ridge is what gives the
complement of the probe span its weight, so ``W``'s action there is kept (to the extent the
ridge says) rather than silently dropped.

Neither covariance is formed. A skinny SVD ``X / sqrt(N) = U diag(s) V^T`` (``U: (dim, k)``,
``k = min(dim, N)``) gives every power of ``C = U diag(s^2) U^T + lambda I`` in closed form:

    C^p = lambda^p I + U diag((s^2 + lambda)^p - lambda^p) U^T,

applied to a matrix in ``O(dim k cols)``. The whitened weight ``C_delta^1/2 W C_h^1/2`` is then
truncated to rank ``r`` (Eckart-Young; one eigendecomposition of its smaller Gram matrix, the
same cost as the plain-SVD baseline) and mapped back with ``C^-1/2``. Because both roots are
invertible, this is the exact minimiser of the regularised objective; ``tests/engine/math/test_ipsvd.py`` checks it
against a dense twin built from explicit matrix square roots.

Everything runs on the device of its inputs. The factorisation is computed in float64 by
default; ``dtype=torch.float32`` is for devices whose float64 is slow (most non-datacentre
GPUs): on SmolLM2's layer shapes at the default ridge (0.1) the weighted error it leaves is
within 1e-4 (relative) of the float64 one, and within 1e-3 at ridge 0.01, where the inverse
roots amplify rounding (``test_ipsvd.py`` checks both). The factors come back in ``W``'s dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_DTYPE = torch.float64  # whitening squares condition numbers: the default keeps small directions


@dataclass(frozen=True)
class CovarianceRoot:
    """``C = U diag(eig) U^T + lam I`` for ``C = X X^T / N + lam I`` from probes ``X: (dim, N)``.

    ``basis``: (dim, k) orthonormal columns spanning the probes; ``eig``: (k,) the empirical
    covariance's non-zero-or-kept eigenvalues; ``lam``: the absolute ridge.
    """

    basis: torch.Tensor
    eig: torch.Tensor
    lam: float

    @property
    def dim(self) -> int:
        return int(self.basis.shape[0])

    def apply(self, M: torch.Tensor, power: float) -> torch.Tensor:
        """``C^power @ M`` for ``M: (dim, cols)`` -> (dim, cols), without forming ``C``."""
        if self.lam > 0.0:
            diag = (self.eig + self.lam) ** power - self.lam**power
            return self.lam**power * M + self.basis @ (diag[:, None] * (self.basis.T @ M))
        # No ridge: ``covariance_root`` made sure the basis is square and the spectrum positive.
        return self.basis @ ((self.eig**power)[:, None] * (self.basis.T @ M))


def covariance_root(
    X: torch.Tensor, ridge: float, dtype: torch.dtype = _DTYPE, *, absolute: bool = False
) -> CovarianceRoot:
    """Spectral form of ``X X^T / N + ridge * mean_eig * I`` for probes ``X: (dim, N)``.

    ``ridge`` is relative to the mean eigenvalue ``tr(X X^T / N) / dim``; with ``absolute`` it
    is added as is (the authors' convention, which depends on the probes' scale). ``ridge = 0``
    is allowed only when the empirical covariance has full rank (otherwise the objective leaves
    the complement of the probe span free and the minimiser is not unique).
    """
    if X.ndim != 2 or X.shape[1] < 1:
        raise ValueError(f"probes must be (dim, N) with N >= 1, got {tuple(X.shape)}")
    if ridge < 0.0:
        raise ValueError(f"ridge must be non-negative, got {ridge}")
    dim, n = X.shape
    Xs = X.to(dtype) / n**0.5
    U, s, _ = torch.linalg.svd(Xs, full_matrices=False)
    eig = s**2
    mean_eig = float(eig.sum()) / dim
    if mean_eig <= 0.0:
        raise ValueError("probes are all zero: the covariance carries no information")
    lam = ridge if absolute else ridge * mean_eig
    if lam == 0.0:
        tol = float(eig.max()) * max(dim, n) * torch.finfo(dtype).eps
        if U.shape[1] < dim or float(eig.min()) <= tol:
            raise ValueError(
                f"ridge 0 needs a full-rank covariance, but {n} probe columns span fewer than "
                f"{dim} dimensions; use a positive ridge"
            )
    return CovarianceRoot(basis=U, eig=eig, lam=lam)


def _apply_right(M: torch.Tensor, root: CovarianceRoot, power: float) -> torch.Tensor:
    """``M @ C^power`` for ``M: (rows, dim)``; ``C`` is symmetric, so transpose around ``apply``."""
    return root.apply(M.T, power).T


def whiten(W: torch.Tensor, root_h: CovarianceRoot, root_d: CovarianceRoot) -> torch.Tensor:
    """``C_delta^1/2 W C_h^1/2``: (out, in), in the roots' dtype."""
    return _apply_right(root_d.apply(W.to(root_d.basis.dtype), 0.5), root_h, 0.5)


@dataclass(frozen=True)
class IPSVDResult:
    """Factors ``A: (out, r)``, ``B: (r, in)`` and the relative weighted error they leave,
    ``|| C_delta^1/2 (W - A B) C_h^1/2 ||_F / || C_delta^1/2 W C_h^1/2 ||_F``."""

    A: torch.Tensor
    B: torch.Tensor
    weighted_error: float


def whitened_problem(
    W: torch.Tensor,
    H: torch.Tensor,
    Delta: torch.Tensor,
    ridge: float,
    dtype: torch.dtype = _DTYPE,
    *,
    absolute: bool = False,
) -> tuple[torch.Tensor, CovarianceRoot, CovarianceRoot]:
    """``(C_delta^1/2 W C_h^1/2, root_h, root_d)`` for ``W: (out, in)``, ``H: (in, N)``,
    ``Delta: (out, N)``: the matrix IPSVD truncates and the roots that map it back."""
    out_f, in_f = W.shape
    if H.shape[0] != in_f or Delta.shape[0] != out_f or H.shape[1] != Delta.shape[1]:
        raise ValueError(
            f"probe shapes do not match W {tuple(W.shape)}: H {tuple(H.shape)}, "
            f"Delta {tuple(Delta.shape)}"
        )
    root_h = covariance_root(H, ridge, dtype, absolute=absolute)
    root_d = covariance_root(Delta, ridge, dtype, absolute=absolute)
    return whiten(W, root_h, root_d), root_h, root_d


def spectrum(M: torch.Tensor) -> torch.Tensor:
    """Singular values of ``M: (m, n)``, descending, ``(min(m, n),)``: from the eigenvalues of
    the smaller Gram matrix in float64 (no vectors: a few times cheaper than the truncation)."""
    G = M.T @ M if M.shape[0] >= M.shape[1] else M @ M.T
    evals = torch.linalg.eigvalsh(G.double())
    return evals.flip(0).clamp_min(0.0).sqrt()


def ipsvd(
    W: torch.Tensor,
    H: torch.Tensor,
    Delta: torch.Tensor,
    rank: int,
    ridge: float,
    dtype: torch.dtype = _DTYPE,
    *,
    absolute: bool = False,
) -> IPSVDResult:
    """Rank-``rank`` factors minimising ``|| C_delta^1/2 (W - A B) C_h^1/2 ||_F``.

    ``W: (out, in)``, ``H: (in, N)``, ``Delta: (out, N)``. Factors come back in ``W``'s dtype,
    with the singular values split evenly between them (``A = C_delta^-1/2 U sqrt(S)``,
    ``B = sqrt(S) V^T C_h^-1/2``) so both have comparable scale when trained afterwards. The
    weighted error is read off the whitened residual, which is exactly the weighted one.
    ``dtype``: the precision of the factorisation (see the module doc); ``absolute``: the
    ridge is absolute (see :func:`covariance_root`).
    """
    _check_rank(W, rank)
    core, root_h, root_d = whitened_problem(W, H, Delta, ridge, dtype, absolute=absolute)
    L, R = truncated_factors(core, rank)
    norm = torch.linalg.matrix_norm(core)
    error = float(torch.linalg.matrix_norm(core - L @ R) / norm) if float(norm) > 0 else 0.0
    A = root_d.apply(L, -0.5)
    B = _apply_right(R, root_h, -0.5)
    return IPSVDResult(A.to(W.dtype), B.to(W.dtype), error)


def ipsvd_factors(
    W: torch.Tensor,
    H: torch.Tensor,
    Delta: torch.Tensor,
    rank: int,
    ridge: float,
    dtype: torch.dtype = _DTYPE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` of :func:`ipsvd`."""
    result = ipsvd(W, H, Delta, rank, ridge, dtype)
    return result.A, result.B


def weighted_error(
    W: torch.Tensor, M: torch.Tensor, H: torch.Tensor, Delta: torch.Tensor, ridge: float
) -> float:
    """Of any ``M: (out, in)``: ``|| C_delta^1/2 (W - M) C_h^1/2 ||_F / || C_delta^1/2 W C_h^1/2 ||_F``: relative error."""
    root_h = covariance_root(H, ridge)
    root_d = covariance_root(Delta, ridge)
    num = torch.linalg.matrix_norm(whiten(W.to(_DTYPE) - M.to(_DTYPE), root_h, root_d))
    den = torch.linalg.matrix_norm(whiten(W, root_h, root_d))
    return float(num / den) if float(den) > 0 else 0.0


def svd_factors(
    W: torch.Tensor, rank: int, dtype: torch.dtype = _DTYPE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain truncated SVD of ``W: (out, in)``: ``A = U sqrt(S)`` (out, r), ``B = sqrt(S) V^T``."""
    _check_rank(W, rank)
    L, R = truncated_factors(W.to(dtype), rank)
    return L.to(W.dtype), R.to(W.dtype)


def random_factors(
    W: torch.Tensor, rank: int, generator: torch.Generator, dtype: torch.dtype = _DTYPE
) -> tuple[torch.Tensor, torch.Tensor]:
    """``W`` restricted to a random rank-``r`` input subspace: ``A = W Q`` (out, r), ``B = Q^T``.

    ``Q: (in, r)`` has orthonormal columns from a seeded Gaussian draw. The baseline keeps no
    knowledge of which directions matter, yet stays a projection of ``W`` (unlike factors drawn
    from scratch, whose proxy would be a different, untrained model).
    """
    _check_rank(W, rank)
    # Drawn on the generator's device (the CPU in the engine), then moved: one seed, one matrix
    # on every device.
    G = torch.randn(W.shape[1], rank, generator=generator, dtype=_DTYPE, device=generator.device)
    Q, _ = torch.linalg.qr(G.to(device=W.device, dtype=dtype))
    return (W.to(dtype) @ Q).to(W.dtype), Q.T.contiguous().to(W.dtype)


def truncated_factors(M: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``r`` factors of ``M: (m, n)`` (Eckart-Young): ``L = U_r sqrt(S_r)`` (m, r) and
    ``R = sqrt(S_r) V_r^T`` (r, n), so ``L R`` is the truncated SVD.

    Computed from the eigendecomposition of the smaller Gram matrix (``min(m, n)`` square),
    which on CPU is several times faster than a full SVD of ``M``. Squaring costs accuracy only
    in singular values below ``sqrt(eps) * s_max`` (about ``1e-8 s_max`` in float64), whose
    contribution to ``L R`` is below that level anyway.
    """
    if M.dtype != torch.float64:
        # The Gram route's squaring would cost float32 half its digits: a direct SVD instead.
        U, s, Vh = torch.linalg.svd(M, full_matrices=False)
        root = s[:rank].sqrt()
        return U[:, :rank] * root, root[:, None] * Vh[:rank]
    if M.shape[0] < M.shape[1]:
        L, R = truncated_factors(M.T, rank)
        return R.T, L.T
    evals, V = torch.linalg.eigh(M.T @ M)  # ascending
    V = V[:, -rank:].flip(-1)  # (n, r), leading first
    root_s = evals[-rank:].flip(0).clamp_min(0.0).sqrt().sqrt()  # sqrt of singular values
    positive = root_s > 0
    # M V_r = U_r S_r, so U_r sqrt(S_r) = M V_r / sqrt(S_r); a zero singular value gives zeros.
    L = torch.where(positive, (M @ V) / root_s.clamp_min(torch.finfo(M.dtype).tiny), 0.0)
    R = torch.where(positive[:, None], root_s[:, None] * V.T, 0.0)
    return L, R


def _check_rank(W: torch.Tensor, rank: int) -> None:
    if W.ndim != 2:
        raise ValueError(f"W must be a matrix, got shape {tuple(W.shape)}")
    if not 1 <= rank <= min(W.shape):
        raise ValueError(f"rank must be in [1, {min(W.shape)}] for W {tuple(W.shape)}, got {rank}")
