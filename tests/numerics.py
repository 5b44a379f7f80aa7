"""Tolerances for float32 results that another program computed in another order.

Two programs that compute the same f32 dot products (a sharded and an unsharded encode,
XLA and torch, two batch shapes) may sum in different orders and tile differently
depending on the CPU's ISA and the XLA build. Bit equality is then the wrong claim.
Higham's bound says any summation order of an n-term dot product is within
``gamma_n * (|a| @ |b|)`` of the exact value, ``gamma_n = n*u / (1 - n*u)`` with the
f32 unit roundoff ``u = 2**-24``; two such results are within twice that of each other.
That is the tolerance used here, element by element, instead of a magic constant.

Discrete decisions taken on those values (the TopK support, ReLU's sign) may then differ
only at a near-tie: where the values that decide are within that tolerance of each other.
"""
from __future__ import annotations

import numpy as np

U32 = 2.0**-24  # float32 unit roundoff


def dot_error_bound(a: np.ndarray, b: np.ndarray, extra_terms: int = 0) -> np.ndarray:
    """Bound on |two f32 evaluations of a @ b differ|: 2 * gamma_n * (|a| @ |b|).

    ``extra_terms`` counts additions outside the dot (e.g. a bias), which widen n."""
    n = a.shape[-1] + extra_terms
    gamma = n * U32 / (1.0 - n * U32)
    return 2.0 * gamma * (np.abs(np.asarray(a, np.float64)) @ np.abs(np.asarray(b, np.float64)))


def topk_ambiguous(pre: np.ndarray, k: int, tol: np.ndarray) -> np.ndarray:
    """[B, m] bool: entries whose membership in a ReLU'd top-k may flip under ``tol``.

    An entry is ambiguous when its row has a near-tie at the k-th place (the k-th and
    (k+1)-th largest values within that row's tolerance) and the entry is one of the tied
    values, or when it is within its tolerance of ReLU's zero.
    """
    pre = np.asarray(pre, np.float64)
    tol = np.broadcast_to(np.asarray(tol, np.float64), pre.shape)
    row_tol = tol.max(-1)
    s = -np.sort(-pre, axis=-1)
    kth, next_ = s[:, k - 1], s[:, k]
    tie_row = (kth - next_) <= 2 * row_tol
    boundary = 0.5 * (kth + next_)
    at_tie = tie_row[:, None] & (np.abs(pre - boundary[:, None]) <= 2 * row_tol[:, None])
    at_zero = np.abs(pre) <= tol
    return at_tie | at_zero


def assert_support_equal_except(z_a, z_b, ambiguous, what="support") -> int:
    """Supports (z != 0) equal except on ``ambiguous`` entries; returns how many differ."""
    sup_a, sup_b = np.asarray(z_a) != 0, np.asarray(z_b) != 0
    differ = sup_a != sup_b
    bad = differ & ~np.asarray(ambiguous)
    assert not bad.any(), (f"{what} differs at {int(bad.sum())} entries that are not near a "
                           f"tie, e.g. (row, latent) {np.argwhere(bad)[:5].tolist()}")
    return int(differ.sum())
