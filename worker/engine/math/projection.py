"""Seeded random projections of per-sample linear-layer gradients (Kronecker-factored).

For a linear map ``y_t = W h_t`` applied at tokens ``t`` of one sample, the sample's loss gradient
is a sum of outer products, ``G = sum_t delta_t h_t^T`` with ``delta_t = dL/dy_t``. Projecting
``vec(G)`` with the Kronecker product ``P_out (x) P_in`` (``P_out: (k_out, out)``,
``P_in: (k_in, in)``) gives

    P_out G P_in^T = sum_t (P_out delta_t) (P_in h_t)^T        (k_out, k_in)

so the projected gradient comes from per-token vectors of size ``k_out`` and ``k_in``: the
``out x in`` gradient is never formed (LoGra / LogIX use the same identity). Both factors hold
i.i.d. ``N(0, 1/k)`` entries, so ``E[<P g1, P g2>] = <g1, g2>`` (a Johnson-Lindenstrauss-type
estimator; the Kronecker structure makes its variance larger than a dense projection of the same
size, see :func:`kron_relative_variance`).

Low-rank factors fit the same mould. For ``y = A z``, ``z = B h``: ``grad_A = sum_t delta_t z_t^T``
and ``grad_B = sum_t (A^T delta_t) h_t^T``, so ``P_out grad_A P_r^T`` uses left matrix ``P_out``
and right matrix ``P_r B`` (applied to ``h``), and ``P_r grad_B P_in^T`` uses left ``P_r A^T``
(applied to ``delta``) and right ``P_in``. Folding the factors into the projection matrices once
costs nothing per token.
"""

from __future__ import annotations

import heapq
import math

import torch


def gaussian_projection(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A ``(rows, cols)`` float32 matrix of i.i.d. ``N(0, 1/rows)`` entries, fixed by ``seed``.

    ``E[P^T P] = I``, so ``<P x, P y>`` is an unbiased estimate of ``<x, y>``. The generator is
    a private CPU ``torch.Generator``: the same seed gives the same matrix on every machine.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"projection shape must be positive, got ({rows}, {cols})")
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    draw = torch.randn(rows, cols, generator=gen, dtype=torch.float32, device="cpu")
    return draw / math.sqrt(rows)


def kron_features(d: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample projected gradients ``sum_t d_t x_t^T``, flattened.

    Args:
        d: ``(batch, T, k_out)`` output gradients already projected, ``d_t = left delta_t``
            (``left: (k_out, out)``).
        x: ``(batch, T, k_in)`` inputs already projected, ``x_t = right h_t``
            (``right: (k_in, in)``); zero at padding, so padding contributes nothing.

    Returns:
        ``(batch, k_out * k_in)``, row-major over ``(k_out, k_in)``: the layout of
        ``(left (x) right) vec(G)`` for the sample's gradient ``G = sum_t delta_t h_t^T`` with
        ``vec`` row-major. The two sides are projected separately (the inputs in the forward
        pass, the gradients in the backward), so the ``out x in`` gradient is never formed.
    """
    return torch.einsum("bto,bti->boi", d, x).reshape(d.shape[0], -1)


def _check_budget(n_blocks: int, budget: int) -> None:
    """A feature budget must give every gradient block at least one feature."""
    if n_blocks < 1:
        raise ValueError("need at least one gradient block")
    if budget < n_blocks:
        raise ValueError(
            f"proj_dim {budget} is smaller than the number of gradient blocks {n_blocks}"
        )


def kron_sizes(shapes: list[tuple[int, int]], budget: int) -> list[tuple[int, int]]:
    """Choose ``(k_out, k_in)`` per gradient block so that the total ``sum k_out * k_in`` is as
    close to ``budget`` as a near-square grid allows, never above it.

    Every block starts at ``k x k`` with ``k = floor(sqrt(budget / n_blocks))``; blocks are then
    upgraded in order to ``(k+1) x k`` and ``(k+1) x (k+1)`` while the budget allows. No side
    exceeds the block's own dimension (projecting a 32-dim vector to 40 dims buys nothing).

    Args:
        shapes: ``(out, in)`` of each block's gradient.
        budget: the target feature dimension ``d``.
    """
    n_blocks = len(shapes)
    _check_budget(n_blocks, budget)
    k = max(1, math.isqrt(budget // n_blocks))
    sizes = [(min(k, o), min(k, i)) for o, i in shapes]
    total = sum(a * b for a, b in sizes)
    for step in (0, 1):  # 0: grow k_out, 1: grow k_in
        for j, (o, i) in enumerate(shapes):
            a, b = sizes[j]
            na, nb = (min(a + 1, o), b) if step == 0 else (a, min(b + 1, i))
            extra = na * nb - a * b
            if extra and total + extra <= budget:
                sizes[j] = (na, nb)
                total += extra
    return sizes


def kron_relative_variance(k_out: int, k_in: int) -> float:
    """Relative variance of ``|(P_out (x) P_in) vec(g)|^2 / |g|^2`` for a rank-one ``g`` (the
    worst case) with Gaussian ``N(0, 1/k)`` factors: ``(1 + 2/k_out)(1 + 2/k_in) - 1``. A dense
    projection to ``k_out * k_in`` dims would give ``2 / (k_out k_in)``."""
    return (1.0 + 2.0 / k_out) * (1.0 + 2.0 / k_in) - 1.0


def eigen_decomposition(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues ``(d,)`` (descending, float64, clamped at 0) and eigenvectors as the rows of
    ``(d, d)`` (float32) of a covariance ``cov: (d, d)``, largest first.

    Eigenvalue ties are broken by ``eigh``'s order and each vector's sign is fixed (its
    largest-magnitude entry positive), so the result is a pure function of ``cov``. Computed in
    float64, returned on ``cov``'s device.
    """
    d = cov.shape[0]
    if cov.ndim != 2 or cov.shape[1] != d:
        raise ValueError(f"covariance must be square, got {tuple(cov.shape)}")
    sym = cov.double()
    vals, vecs = torch.linalg.eigh((sym + sym.T) / 2)
    rows = vecs.flip(1).T  # (d, d), largest eigenvalue first
    idx = rows.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(rows.gather(1, idx))
    signs[signs == 0] = 1
    return vals.flip(0).clamp_min(0.0), (rows * signs).float()


def energy_sizes(
    spectra: list[tuple[torch.Tensor, torch.Tensor]], budget: int
) -> list[tuple[int, int]]:
    """Choose ``(k_out, k_in)`` per gradient block, ``sum k_out * k_in <= budget``, to keep as
    much of the expected squared gradient as a grid of the blocks' top eigenvectors can.

    Under the Kronecker-factored model of a block's per-token gradient ``delta_t h_t^T`` (the
    two sides independent, covariances ``C_out`` and ``C_in`` with eigenvalues ``lam``
    and ``mu``, descending), keeping the top ``k_out`` and ``k_in`` eigenvectors keeps
    ``E_b(k_out, k_in) = (sum_{i<k_out} lam_i)(sum_{j<k_in} mu_j)`` of its squared norm.
    The covariances of every block are sums over the same probe tokens, so ``E_b`` is on one
    scale across blocks and layers: a block whose gradients are large gets more of the budget
    than one whose gradients are small, unlike :func:`kron_sizes`, which gives every block the
    same grid. Greedy: every block starts at ``1 x 1``; then, repeatedly, the one step (a row
    or a column added to one block's grid) with the largest gain in ``E`` per feature it costs
    is taken while the budget allows.

    Args:
        spectra: per block, the eigenvalues ``(out,)`` of ``C_out`` and ``(in,)`` of ``C_in``,
            each descending and non-negative (:func:`eigen_decomposition`).
        budget: the feature dimension ``d``, at least the number of blocks.

    Returns:
        ``(k_out, k_in)`` per block, in order; each side at most the block's own dimension.
    """
    n_blocks = len(spectra)
    _check_budget(n_blocks, budget)
    lam = [[float(x) for x in a.double().cpu()] for a, _ in spectra]
    mu = [[float(x) for x in b.double().cpu()] for _, b in spectra]
    for j in range(n_blocks):
        if any(x < 0 for x in lam[j]) or any(x < 0 for x in mu[j]):
            raise ValueError(f"block {j}: eigenvalues must be non-negative")
    sizes = [[1, 1] for _ in range(n_blocks)]
    kept_out = [lam[j][0] for j in range(n_blocks)]  # sum of the kept eigenvalues of each side
    kept_in = [mu[j][0] for j in range(n_blocks)]
    total = n_blocks
    version = [0] * n_blocks
    heap: list[tuple[float, int, int, int, int]] = []  # (-gain per feature, j, side, cost, ver)

    def push(j: int) -> None:
        a, b = sizes[j]
        if a < len(lam[j]):  # one more output-side eigenvector: b features
            heapq.heappush(heap, (-lam[j][a] * kept_in[j] / b, j, 0, b, version[j]))
        if b < len(mu[j]):  # one more input-side eigenvector: a features
            heapq.heappush(heap, (-mu[j][b] * kept_out[j] / a, j, 1, a, version[j]))

    for j in range(n_blocks):
        push(j)
    while heap and total < budget:
        neg_gain, j, side, cost, ver = heapq.heappop(heap)
        if ver != version[j] or total + cost > budget:
            continue
        if neg_gain == 0.0:  # nothing left to gain anywhere (ties beyond the spectra's rank)
            break
        a, b = sizes[j]
        if side == 0:
            kept_out[j] += lam[j][a]
            sizes[j][0] = a + 1
        else:
            kept_in[j] += mu[j][b]
            sizes[j][1] = b + 1
        total += cost
        version[j] += 1
        push(j)
    return [(a, b) for a, b in sizes]


def energy_grid_sizes(
    shapes: list[tuple[int, int]], energies: list[float], budget: int
) -> list[tuple[int, int]]:
    """Choose ``(k_out, k_in)`` per gradient block for random (Gaussian) Kronecker factors, the
    budget split by the blocks' gradient energy ``E_b`` (``sum k_out k_in <= budget``).

    A block's contribution to the variance of a projected inner product ``<g, v>`` is about
    ``E_b / sqrt(d_b)`` for a near-square ``d_b = k_out k_in`` grid (relative variance
    ``(1 + 2/k_out)(1 + 2/k_in) - 1 ~ 4 / sqrt(d_b)``, times ``|g_b|^2 |v_b|^2 ~ E_b``);
    minimising ``sum_b E_b d_b^(-1/2)`` under ``sum_b d_b = budget`` gives
    ``d_b ~ E_b^(2/3)``. Each block gets that share (at least 1, at most ``out * in``, what a
    capped block cannot use shared out again), floored to a near-square grid; what flooring
    leaves is spent a row or column at a time on the blocks with the largest share.

    Args:
        shapes: ``(out, in)`` of each block's gradient.
        energies: per block, a non-negative measure of its squared gradient (e.g. the probes'
            ``sum_t |delta_t|^2 * sum_t |h_t|^2``); all zero falls back to :func:`kron_sizes`.
        budget: the feature dimension ``d``, at least the number of blocks.
    """
    n_blocks = len(shapes)
    if len(energies) != n_blocks:
        raise ValueError(f"{len(energies)} energies for {n_blocks} blocks")
    _check_budget(n_blocks, budget)
    if any(not math.isfinite(e) or e < 0 for e in energies):
        raise ValueError("energies must be finite and non-negative")
    if not any(e > 0 for e in energies):
        return kron_sizes(shapes, budget)
    weight = [e ** (2.0 / 3.0) for e in energies]
    cap = [o * i for o, i in shapes]
    share = [0.0] * n_blocks
    free = set(range(n_blocks))
    left = float(budget)
    while free:  # water-filling: capped blocks keep their cap, the rest share what is left
        total_w = sum(weight[j] for j in free)
        over = {
            j for j in free if (total_w > 0 and left * weight[j] / total_w >= cap[j]) or cap[j] <= 1
        }
        if not over:
            for j in free:
                share[j] = left * weight[j] / total_w if total_w > 0 else 0.0
            break
        for j in over:
            share[j] = float(cap[j])
            left -= cap[j]
        free -= over
    sizes = []
    for j, (o, i) in enumerate(shapes):
        d = max(1, int(share[j]))
        a = min(o, max(1, math.isqrt(d)))
        b = min(i, max(1, d // a))
        a = min(o, max(1, d // b))
        sizes.append((a, b))
    total = sum(a * b for a, b in sizes)
    while total > budget:  # the floor of 1 per block can overshoot a tiny budget
        j = max(range(n_blocks), key=lambda k: sizes[k][0] * sizes[k][1])
        a, b = sizes[j]
        sizes[j] = (a - 1, b) if a >= b else (a, b - 1)
        total -= b if a >= b else a
    order = sorted(range(n_blocks), key=lambda k: -weight[k])
    grew = True
    while grew:
        grew = False
        for j in order:
            o, i = shapes[j]
            a, b = sizes[j]
            for na, nb in ((a + 1, b), (a, b + 1)) if a <= b else ((a, b + 1), (a + 1, b)):
                extra = na * nb - a * b
                if na <= o and nb <= i and total + extra <= budget:
                    sizes[j] = (na, nb)
                    total += extra
                    grew = True
                    break
    return sizes


def eigen_projection(basis: torch.Tensor, k: int) -> torch.Tensor:
    """The top-``k`` rows ``(k, d)`` of the eigenvectors ``(d, d)`` of
    :func:`eigen_decomposition`.

    LoGra's choice of projection: per layer, the principal directions of the inputs and of the
    output gradients. The rows are orthonormal, so the projected inner product is the exact inner
    product of the gradients' components in that subspace (not an unbiased estimate of the whole:
    what lies outside the subspace is dropped).
    """
    d = basis.shape[0]
    if not 1 <= k <= d:
        raise ValueError(f"k must be in 1..{d}, got {k}")
    return basis[:k].contiguous()
