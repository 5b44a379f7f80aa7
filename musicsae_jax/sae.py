"""The SAE family as Flax NNX modules: one parameter layout, one interface.

Every architecture holds ``W_enc [d, m]``, ``b_enc [m]``, ``W_dec [m, d]``,
``b_dec [d]`` (``nnx.Param``) so training, sharding, checkpointing and export treat
them alike.  Extras: JumpReLU has a trainable ``log_threshold [m]``; BatchTopK and
Matryoshka keep an inference ``threshold`` as a non-trainable :class:`Stat`.

Interface (the training loop is written against exactly this)::

    model = make_sae(cfg, d=d, rngs=nnx.Rngs(0))
    z = model.encode(x)               # [B, d] -> [B, m], inference semantics
    x_hat = model.decode(z)           # [B, m] -> [B, d], dense
    x_hat, z = model(x)
    loss, metrics = model.loss(x, dead_mask=None, train=True)
    model.update_stats(metrics["z"])  # BatchTopK EMA / JumpReLU threshold level

Everything is jit-friendly (no Python control flow on values) and exact when the
latent axis is sharded over a mesh axis: top-k runs on the full logical array and
GSPMD inserts the collectives.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musicsae_jax.sae_config import ARCHITECTURES, DEFAULTS, default_prefixes, resolve_config


class Stat(nnx.Variable):
    """A non-trainable statistic (e.g. the BatchTopK inference threshold).

    Not an ``nnx.Param``, so ``nnx.Optimizer(..., wrt=nnx.Param)`` leaves it alone;
    it is still part of the state that is split, sharded and checkpointed.
    """


# --------------------------------------------------------------------------------------
# Shared recipe: decoder-norm constraint, b_dec init, sparse decode, AuxK
# --------------------------------------------------------------------------------------


def _unit_rows(w: jax.Array, eps: float = 1e-8) -> jax.Array:
    return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), eps)


def normalize_decoder(model: "SAE") -> None:
    """Rescale every decoder row to unit norm (call after each optimizer step).

    Unit rows stop the sparsity penalty from being dodged by shrinking z while
    growing W_dec, and make latent magnitudes comparable across features.
    """
    model.W_dec[...] = _unit_rows(model.W_dec[...])


def remove_parallel_grad(W_dec: jax.Array, grad_W_dec: jax.Array) -> jax.Array:
    """Remove from each row's gradient its component along that row.

    With unit-norm rows, the parallel component only changes the norm, which
    :func:`normalize_decoder` undoes anyway; removing it keeps Adam's moments clean.
    """
    sq = jnp.maximum(jnp.sum(W_dec * W_dec, axis=-1, keepdims=True), 1e-12)
    return grad_W_dec - jnp.sum(grad_W_dec * W_dec, axis=-1, keepdims=True) / sq * W_dec


def geometric_median(x: jax.Array, n_iter: int = 100, eps: float = 1e-6) -> jax.Array:
    """Weiszfeld iterations; robust to the outlier rows activations often contain."""
    x = jnp.asarray(x, jnp.float32)

    def step(_, y):
        w = 1.0 / jnp.maximum(jnp.linalg.norm(x - y, axis=-1), eps)
        return (w[:, None] * x).sum(0) / w.sum()

    return jax.lax.fori_loop(0, n_iter, step, x.mean(0))


def init_b_dec(model: "SAE", x_sample, method: str = "mean") -> jax.Array:
    """Set ``b_dec`` from data so the SAE starts by reconstructing the centre."""
    x_sample = jnp.asarray(x_sample, jnp.float32)
    if method == "mean":
        b = x_sample.mean(0)
    elif method == "median":
        b = geometric_median(x_sample)
    else:
        raise ValueError(f"init_b_dec method={method!r}; allowed: 'mean', 'median'")
    model.b_dec[...] = b.astype(model.b_dec[...].dtype)
    return b


@jax.custom_vjp
def dense_pre_acts(x: jax.Array, b_dec: jax.Array, W_enc: jax.Array,
                   b_enc: jax.Array) -> jax.Array:
    """(x - b_dec) @ W_enc + b_enc, whose backward gets db_dec as a matvec.

    Plain autodiff computes db_dec = -sum_b (g @ W_enc.T)[b], a dense [B, m] x [m, d]
    matmul (2·B·d·m FLOPs, a sixth of a dense step) that XLA does not rewrite; here
    db_dec = -W_enc @ sum_b g. The x cotangent (g @ W_enc.T) is only computed when x is
    differentiated.
    """
    return (x - b_dec) @ W_enc + b_enc


def _dense_pre_fwd(x, b_dec, W_enc, b_enc):
    return dense_pre_acts(x, b_dec, W_enc, b_enc), (x, b_dec, W_enc)


def _dense_pre_bwd(res, g):
    x, b_dec, W_enc = res
    g_b_enc = g.sum(0)
    # XLA:CPU runs a dot contracting both operands' dim 0 about 2x slower than the same
    # dot on an explicitly transposed [d, B] copy; the barrier keeps the copy.
    g_W_enc = jax.lax.optimization_barrier((x - b_dec).T) @ g
    return (g @ W_enc.T, -(W_enc @ g_b_enc), g_W_enc, g_b_enc)


dense_pre_acts.defvjp(_dense_pre_fwd, _dense_pre_bwd)


@jax.custom_vjp
def latent_matmul(z: jax.Array, W_dec: jax.Array) -> jax.Array:
    """z @ W_dec ([B, m] x [m, d]) whose W_dec gradient runs as (g.T @ z).T.

    Autodiff's z.T @ g contracts both operands over the batch axis, which XLA:CPU runs
    ~1.4x slower than g.T @ z on an explicit [d, B] copy followed by one [d, m]
    transpose (both kept by optimization barriers).
    """
    return z @ W_dec


def _latent_matmul_fwd(z, W_dec):
    return z @ W_dec, (z, W_dec)


def _latent_matmul_bwd(res, g):
    z, W_dec = res
    bar = jax.lax.optimization_barrier
    return g @ W_dec.T, bar(bar(g.T) @ z).T


latent_matmul.defvjp(_latent_matmul_fwd, _latent_matmul_bwd)


# Sparse (token, latent) pairs. XLA:CPU runs one big gather/scatter over n = B·k pairs
# badly: the [n, d] operand is materialised and the scatter is a slow serial loop. The
# pairs are therefore kept as [c, s] chunks (c = k chunks of s = B pairs) and processed
# by a fori_loop whose body gathers or scatter-adds one [s, d] slab in a single fused
# loop: 4-10x faster at d=256 and no [n, d] buffer (537 MB at B=4096, k=32, d=1024).
# rows=None means chunk row i is token i (per-token top-k): no row gather, no scatter.


def _chunks(a: jax.Array) -> jax.Array:
    return a if a.ndim == 2 else a.reshape(1, -1)


def _rows_of(rows, j):
    return slice(None) if rows is None else rows[j]


def _decode_pairs(W_dec, vals, rows, cols, n_out):
    """out[n_out, d] = sum over pairs of vals * W_dec[cols] added at rows."""
    c = cols.shape[0]
    if rows is None and c <= 64:                # unrolled: one fused loop, no scatter
        out = vals[0][:, None] * W_dec[cols[0]]
        for j in range(1, c):
            out = out + vals[j][:, None] * W_dec[cols[j]]
        return out

    def body(j, acc):
        upd = vals[j][:, None] * W_dec[cols[j]]
        return acc + upd if rows is None else acc.at[rows[j]].add(upd)

    return jax.lax.fori_loop(0, c, body, jnp.zeros((n_out, W_dec.shape[-1]), W_dec.dtype))


def _gather_dot(g, W, rows, cols):
    """[c, s]: sum_d g[rows] * W[cols] per pair."""
    def body(j, acc):
        return acc.at[j].set(jnp.sum(g[_rows_of(rows, j)] * W[cols[j]], axis=-1))
    return jax.lax.fori_loop(0, cols.shape[0], body, jnp.zeros(cols.shape, g.dtype))


def _scatter_outer(coef, src, rows, cols, m):
    """[m, d]: sum over pairs of coef * src[rows] added at cols (rank-1 updates)."""
    def body(j, acc):
        return acc.at[cols[j]].add(coef[j][:, None] * src[_rows_of(rows, j)])
    return jax.lax.fori_loop(0, cols.shape[0], body, jnp.zeros((m, src.shape[-1]), src.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def pair_decode(W_dec: jax.Array, vals: jax.Array, rows, cols: jax.Array,
                n_out: int) -> jax.Array:
    """Sparse decode of (token, latent) pairs without b_dec: O(n·d), not O(B·m·d).

    ``vals``/``cols`` (and ``rows``, or None for row i = token i) are [c, s] chunks.
    The backward is sparse too: dvals by gathered dot products, dW_dec by rank-1
    scatter-adds into the touched rows only.
    """
    return _decode_pairs(W_dec, vals, rows, cols, n_out)


def _pair_decode_fwd(W_dec, vals, rows, cols, n_out):
    return _decode_pairs(W_dec, vals, rows, cols, n_out), (W_dec, vals, rows, cols)


def _pair_decode_bwd(n_out, res, g):
    W_dec, vals, rows, cols = res
    g_vals = _gather_dot(g, W_dec, rows, cols)
    g_W = _scatter_outer(vals, g, rows, cols, W_dec.shape[0])
    return g_W, g_vals, None, None


pair_decode.defvjp(_pair_decode_fwd, _pair_decode_bwd)


def sparse_decode(W_dec: jax.Array, vals: jax.Array, idx: jax.Array) -> jax.Array:
    """sum_j vals[b, j] * W_dec[idx[b, j]] without b_dec, for per-token ``[B, k]``
    selections: O(B·k·d), not O(B·m·d), with a sparse backward (:func:`pair_decode`)."""
    lead = vals.shape[:-1]
    v, i = vals.reshape(-1, vals.shape[-1]), idx.reshape(-1, idx.shape[-1])
    out = pair_decode(W_dec, v.T, None, i.T, v.shape[0])
    return out.reshape(lead + (W_dec.shape[-1],))


@jax.custom_vjp
def sparse_pre_acts(x: jax.Array, b_dec: jax.Array, W_enc: jax.Array, b_enc: jax.Array,
                    pre: jax.Array, rows, cols: jax.Array) -> jax.Array:
    """pre[rows, cols] for pre = (x - b_dec) @ W_enc + b_enc, with a sparse backward.

    ``pre`` is the already computed (stop-gradient) dense pre-activation used to pick
    the latents; its value is read, never differentiated. ``rows``/``cols`` are [c, s]
    chunks (1-D: one chunk; rows=None: chunk row i is token i). The backward only
    touches the selected pairs: dW_enc gets rank-1 column updates (scatter-adds into
    W_enc.T, O(n·d)), db_enc a segment sum, and db_dec = -W_enc @ db_enc (a matvec)
    instead of the dense O(B·d·m) matmuls of differentiating a dense encoder.
    """
    return _pre_gather(pre, rows, cols)


def _pre_gather(pre, rows, cols):
    if rows is None:
        c = _chunks(cols)
        return jnp.take_along_axis(pre, c.T, axis=1).T.reshape(cols.shape)
    return pre[rows, cols]


def _sparse_pre_fwd(x, b_dec, W_enc, b_enc, pre, rows, cols):
    return _pre_gather(pre, rows, cols), (x, b_dec, W_enc, rows, cols)


def _sparse_pre_bwd(res, g):
    x, b_dec, W_enc, rows, cols = res
    g2, cols2 = _chunks(g), _chunks(cols)
    rows2 = None if rows is None else _chunks(rows)
    m = W_enc.shape[-1]
    g_b_enc = jnp.zeros((m,), g.dtype).at[cols.reshape(-1)].add(g.reshape(-1))
    g_W_enc = _scatter_outer(g2, x - b_dec, rows2, cols2, m).T
    g_b_dec = -(W_enc @ g_b_enc)
    # only used if x itself is differentiated (never in training): DCE'd otherwise
    g_x = _decode_pairs(W_enc.T, g2, rows2, cols2, x.shape[0])
    return (g_x, g_b_dec.astype(b_dec.dtype), g_W_enc.astype(W_enc.dtype),
            g_b_enc.astype(W_enc.dtype), None, None, None)


sparse_pre_acts.defvjp(_sparse_pre_fwd, _sparse_pre_bwd)


def _sq_err(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """Per-token squared error summed over d, averaged over the batch."""
    return jnp.mean(jnp.sum((x - x_hat) ** 2, axis=-1))


def _aux_ratio(residual, e_hat):
    """AuxK's normalised error (0 when the residual is constant)."""
    num = _sq_err(residual, e_hat)
    den = _sq_err(residual, residual.mean(0, keepdims=True))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def _auxk_value(pre, residual, W_dec, dead_mask, k_aux):
    """The dense formulation over all m latents (the reference the compact one equals)."""
    masked = jnp.where(dead_mask[None, :], jax.nn.relu(pre), 0.0)
    vals, idx = jax.lax.top_k(masked, k_aux)
    e_hat = latent_matmul(_scatter_rows(vals, idx, pre.shape[-1]), W_dec)
    return _aux_ratio(residual, e_hat).astype(pre.dtype)


def dead_buckets(m: int) -> tuple[int, ...]:
    """The sizes the dead latents are gathered into: m/256, m/64, m/16, m/4 (those of at
    least 16), then m itself (the dense formulation)."""
    return tuple(c for c in (m // 256, m // 64, m // 16, m // 4) if c >= 16) + (m,)


def _bucket(dead_mask: jax.Array, caps: Sequence[int]) -> jax.Array:
    """Branch index: 0 if no latent is dead, else 1 + the smallest bucket that holds them."""
    n = jnp.sum(dead_mask.astype(jnp.int32))
    return jnp.where(n > 0, 1 + jnp.sum(n > jnp.asarray(caps[:-1])), 0)


def _dead_slots(dead_mask: jax.Array, cap: int) -> tuple[jax.Array, jax.Array]:
    """(ids [cap] of the dead latents, padded with latent 0; valid [cap]): exact when at
    most cap latents are dead, which :func:`_bucket` guarantees."""
    ids = jnp.nonzero(dead_mask, size=cap, fill_value=0)[0]
    return ids, jnp.arange(cap) < jnp.sum(dead_mask.astype(jnp.int32))


def _auxk_compact(pre_dead, valid, residual, W_dec_dead, k_aux):
    """AuxK over the gathered dead latents only: pre_dead [B, cap], W_dec_dead [cap, d].
    The padding slots are masked to 0, so the top-k values (and the loss) equal the dense
    formulation's: there every live latent is masked to 0 as well."""
    masked = jnp.where(valid[None, :], jax.nn.relu(pre_dead), 0.0)
    vals, idx = jax.lax.top_k(masked, min(k_aux, pre_dead.shape[-1]))
    e_hat = _scatter_rows(vals, idx, pre_dead.shape[-1]) @ W_dec_dead
    return _aux_ratio(residual, e_hat).astype(pre_dead.dtype)


def auxk_loss(pre: jax.Array, residual: jax.Array, W_dec: jax.Array, dead_mask: jax.Array,
              k_aux: int) -> jax.Array:
    """AuxK (Gao et al. 2024): the top-k_aux *dead* latents reconstruct the residual.

    Gives dead latents a gradient towards what the live ones miss. The squared error is
    divided by the residual's variance (about its batch mean) so the coefficient does not
    depend on how good the main reconstruction already is; 0 if the residual is constant.

    Dead latents are usually a few per mille of m, yet in a real run some are dead at
    almost every step: the top-k_aux and the decode run over only the dead latents,
    gathered into the smallest of :func:`dead_buckets` that holds them (``lax.switch``;
    no latent dead: nothing runs; more than m/4: the dense formulation). The value and
    gradients are those of the dense formulation.
    """
    residual = jax.lax.stop_gradient(residual)
    caps = dead_buckets(pre.shape[-1])

    def compact(cap):
        def run(_):
            if cap == pre.shape[-1]:
                return _auxk_value(pre, residual, W_dec, dead_mask, k_aux)
            ids, valid = _dead_slots(dead_mask, cap)
            return _auxk_compact(pre[:, ids], valid, residual, W_dec[ids], k_aux)
        return run

    return jax.lax.switch(_bucket(dead_mask, caps),
                          [lambda _: jnp.zeros((), pre.dtype)] + [compact(c) for c in caps],
                          None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def auxk_loss_from_params(x, b_dec, W_enc, b_enc, W_dec, residual, dead_mask, k_aux):
    """:func:`auxk_loss` with the pre-activations of the dead latents computed from the
    encoder parameters, for the sparse TopK paths (whose own pre is stop-gradient): with
    few dead latents that is a [B, d] x [d, cap] matmul, not a second dense encoder pass.
    Forward and backward each pick their branch with their own ``lax.switch``, so nothing
    of size [B, m] is computed or kept unless more than m/4 latents are dead (a
    differentiated ``lax.switch`` would keep every branch's residuals)."""
    return _auxk_switch(x, b_dec, W_enc, b_enc, W_dec, residual, dead_mask, k_aux)


def _auxk_params_branch(cap: int, m: int, k_aux: int):
    """f(params, x, residual, dead_mask) -> AuxK for one bucket size."""
    def f(params, x, residual, dead_mask):
        b_dec, W_enc, b_enc, W_dec = params
        residual = jax.lax.stop_gradient(residual)
        if cap == m:
            pre = dense_pre_acts(x, b_dec, W_enc, b_enc)
            return _auxk_value(pre, residual, W_dec, dead_mask, k_aux)
        ids, valid = _dead_slots(dead_mask, cap)
        pre = (x - b_dec) @ jnp.take(W_enc, ids, axis=1) + b_enc[ids]
        return _auxk_compact(pre, valid, residual, jnp.take(W_dec, ids, axis=0), k_aux)
    return f


def _auxk_switch(x, b_dec, W_enc, b_enc, W_dec, residual, dead_mask, k_aux):
    m = W_enc.shape[-1]
    caps = dead_buckets(m)
    branches = [lambda p, *_: jnp.zeros((), p[1].dtype)]
    branches += [_auxk_params_branch(c, m, k_aux) for c in caps]
    return jax.lax.switch(_bucket(dead_mask, caps), branches,
                          (b_dec, W_enc, b_enc, W_dec), x, residual, dead_mask)


def _auxk_p_fwd(x, b_dec, W_enc, b_enc, W_dec, residual, dead_mask, k_aux):
    out = _auxk_switch(x, b_dec, W_enc, b_enc, W_dec, residual, dead_mask, k_aux)
    return out, (x, b_dec, W_enc, b_enc, W_dec, residual, dead_mask)


def _auxk_p_bwd(k_aux, res, g):
    """Gradients for the parameters only (x and the residual are data / stop-gradient)."""
    x, b_dec, W_enc, b_enc, W_dec, residual, dead_mask = res
    params = (b_dec, W_enc, b_enc, W_dec)
    m = W_enc.shape[-1]
    caps = dead_buckets(m)

    def taken(cap):
        f = _auxk_params_branch(cap, m, k_aux)

        def run(p):
            _, vjp = jax.vjp(lambda q: f(q, x, residual, dead_mask), p)
            return vjp(g)[0]
        return run

    grads = jax.lax.switch(_bucket(dead_mask, caps),
                           [lambda p: tuple(jnp.zeros_like(t) for t in p)]
                           + [taken(c) for c in caps], params)
    return (jnp.zeros_like(x), *grads, jnp.zeros_like(residual), None)


auxk_loss_from_params.defvjp(_auxk_p_fwd, _auxk_p_bwd)


def _scatter_rows(vals: jax.Array, idx: jax.Array, m: int) -> jax.Array:
    """Dense [B, m] latents from per-row (vals, idx) (idx distinct within a row)."""
    rows = jnp.arange(vals.shape[0])[:, None]
    return jnp.zeros(vals.shape[:-1] + (m,), vals.dtype).at[rows, idx].set(vals)


# --------------------------------------------------------------------------------------
# JumpReLU straight-through estimators (Rajamanoharan et al. 2024)
# --------------------------------------------------------------------------------------


def _rectangle(u: jax.Array) -> jax.Array:
    return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


@jax.custom_vjp
def jumprelu(pre: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
    """z = pre * H(pre - threshold); threshold gets a rectangle-kernel pseudo-gradient."""
    return pre * (pre > threshold)


def _jumprelu_fwd(pre, threshold, bandwidth):
    return jumprelu(pre, threshold, bandwidth), (pre, threshold, bandwidth)


def _jumprelu_bwd(res, g):
    pre, threshold, bandwidth = res
    g_pre = g * (pre > threshold)
    g_thr = -(threshold / bandwidth) * _rectangle((pre - threshold) / bandwidth) * g
    return g_pre, _sum_to(g_thr, threshold.shape), None


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@jax.custom_vjp
def step_fn(pre: jax.Array, threshold: jax.Array, bandwidth: float) -> jax.Array:
    """H(pre - threshold) for the L0 penalty; only the threshold gets a gradient."""
    return (pre > threshold).astype(pre.dtype)


def _step_fwd(pre, threshold, bandwidth):
    return step_fn(pre, threshold, bandwidth), (pre, threshold, bandwidth)


def _step_bwd(res, g):
    pre, threshold, bandwidth = res
    g_thr = -(1.0 / bandwidth) * _rectangle((pre - threshold) / bandwidth) * g
    return jnp.zeros_like(pre), _sum_to(g_thr, threshold.shape), None


step_fn.defvjp(_step_fwd, _step_bwd)


def _sum_to(g: jax.Array, shape) -> jax.Array:
    """Sum a broadcast cotangent back to the (trailing) shape of the operand."""
    return g.reshape((-1,) + tuple(shape)).sum(0) if g.ndim > len(shape) else g


# --------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------


def _by_token(vals, rows, cols):
    """Pairs reordered by token (stable), the layout :meth:`select_batch_fast` returns."""
    order = jnp.argsort(rows, stable=True)
    return vals[order], rows[order], cols[order]


def _nth_largest(arrays: Sequence[jax.Array], n: int) -> jax.Array:
    """The n-th largest value (with multiplicity) over ``arrays`` of non-negative floats;
    negative entries are left out. Bisection on the float bits (monotone for x >= 0):
    32 passes of a compare-and-count instead of sorting the values. Needs at least n
    entries >= 0."""
    bits = [jnp.where(a > 0, jax.lax.bitcast_convert_type(a, jnp.int32),
                      jnp.where(a < 0, -1, 0)) for a in arrays]       # -0.0 counts as 0

    def count(t):
        return sum(jnp.sum(bb >= t, dtype=jnp.int32) for bb in bits)

    def body(_, lh):                      # invariant: count(lo) >= n > count(hi)
        lo, hi = lh
        mid = lo + (hi - lo) // 2
        ok = count(mid) >= n
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 32, body, (jnp.int32(0), jnp.int32(0x7F800001)))
    return jax.lax.bitcast_convert_type(lo, jnp.float32).astype(arrays[0].dtype)


def _first_per_row(cv, ci, cv2, ci2, deep, tau, n):
    """(vals, rows, cols) [n], ordered by token: each row's first c_r sorted candidates,
    c_r = its candidates > tau plus its share of the ties at tau (given out in row order
    until n are taken). Rows in ``deep`` (may be None) take theirs from cv2/ci2."""
    b, kr = cv.shape
    gt, eq = jnp.sum(cv > tau, 1), jnp.sum(cv == tau, 1)
    if deep is not None:
        gt = gt.at[deep].set(jnp.sum(cv2 > tau, 1))
        eq = eq.at[deep].set(jnp.sum(cv2 == tau, 1))
    need = n - jnp.sum(gt)
    ties = jnp.clip(need - (jnp.cumsum(eq) - eq), 0, eq)
    ends = jnp.cumsum(gt + ties)                                      # [B], ends[-1] = n
    pos = jnp.arange(n, dtype=ends.dtype)
    rows = jnp.searchsorted(ends, pos, side="right").astype(jnp.int32)
    rows = jnp.minimum(rows, b - 1)
    j = pos - (ends - gt - ties)[rows]                                # rank within the row
    vals, cols = cv[rows, jnp.minimum(j, kr - 1)], ci[rows, jnp.minimum(j, kr - 1)]
    if deep is not None:
        slot = jnp.full((b,), -1, jnp.int32).at[deep].set(jnp.arange(deep.shape[0],
                                                                     dtype=jnp.int32))
        s = slot[rows]
        s0, j2 = jnp.maximum(s, 0), jnp.minimum(j, cv2.shape[1] - 1)
        vals = jnp.where(s >= 0, cv2[s0, j2], vals)
        cols = jnp.where(s >= 0, ci2[s0, j2], cols)
    return vals, rows, cols


class SAE(nnx.Module):
    """Shared layout and the ReLU + decoder-norm-weighted L1 architecture."""

    architecture = "relu"

    def __init__(self, d: int, m: int, *, rngs: nnx.Rngs, l1_coeff: float = 2.0,
                 encoder_init_scale: float | None = None, dtype=jnp.float32, **_unused):
        self.d, self.m = int(d), int(m)
        w = _unit_rows(jax.random.normal(rngs.params(), (self.m, self.d), dtype))
        scale = (self.default_encoder_scale(self.d, self.m) if encoder_init_scale is None
                 else float(encoder_init_scale))
        self.W_dec = nnx.Param(w)
        self.W_enc = nnx.Param(w.T * scale)
        self.b_enc = nnx.Param(jnp.zeros((self.m,), dtype))
        self.b_dec = nnx.Param(jnp.zeros((self.d,), dtype))
        self.l1_coeff = float(l1_coeff)

    @staticmethod
    def default_encoder_scale(d: int, m: int) -> float:
        """ReLU: W_enc = (2d/m) W_dec.T at init, so the first reconstruction is about x
        (about half of m random unit directions pass the ReLU, and their projections sum
        to ~ m/(2d) x). With W_enc = W_dec.T a 32d dictionary starts at ~16x the input
        norm: on bench/quality.py (MiniLM, m = 32d, 0.5M tokens) MSE was still 65x the
        input's at step 50 and the run ended at FVU 0.92."""
        return min(1.0, 2.0 * d / m)

    # -- shared pieces -----------------------------------------------------------------
    def pre_acts(self, x: jax.Array) -> jax.Array:
        return dense_pre_acts(x, self.b_dec[...], self.W_enc[...], self.b_enc[...])

    def decode(self, z: jax.Array) -> jax.Array:
        return latent_matmul(z, self.W_dec[...]) + self.b_dec[...]

    def encode(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.pre_acts(x))

    def __call__(self, x: jax.Array):
        z = self.encode(x)
        return self.decode(z), z

    def update_stats(self, z: jax.Array) -> None:
        """No running statistics for this architecture (z, or metrics["active_vals"])."""

    def _metrics(self, loss, x, x_hat, z, mse, aux, sparsity, pairs=None) -> dict[str, Any]:
        """Scalars plus ``z`` (dense [B, m]) and its cheap sparse summaries:
        ``fired_count`` [m] (tokens of the batch on which each latent fired) and, for
        the sparse architectures (``pairs`` = selected values and latent ids),
        ``active_vals`` (the selected values; ``update_stats`` accepts them in place of
        z). A train step that uses these instead of z lets XLA drop the dense z."""
        if pairs is None:
            fired = z > 0
            count = jnp.sum(fired, axis=0).astype(jnp.float32)
            l0 = jnp.mean(jnp.sum(fired, axis=-1).astype(jnp.float32))
            extra = {}
        else:
            vals, cols = (jax.lax.stop_gradient(a).reshape(-1) for a in pairs)
            on = (vals > 0).astype(jnp.float32)
            count = jnp.zeros((self.m,), jnp.float32).at[cols].add(on)
            l0 = jnp.sum(on) / x.shape[0]
            extra = {"active_vals": vals}
        return {
            "loss": loss,
            "mse": mse,
            "fvu_batch": mse / jnp.maximum(_sq_err(x, x.mean(0, keepdims=True)), 1e-12),
            "l0": l0,
            "aux_loss": aux,
            "sparsity_loss": sparsity,
            "z": jax.lax.stop_gradient(z),
            "fired_count": count,
            **extra,
        }

    # -- ReLU + L1 -----------------------------------------------------------------------
    def loss(self, x: jax.Array, dead_mask=None, train: bool = True,
             sparsity_scale=1.0):
        """MSE + l1_coeff * mean_b sum_i z_i ||W_dec_i|| (norm-weighted so it can't be
        cheated by shrinking z and growing decoder rows). ``sparsity_scale`` multiplies
        the coefficient: the train step ramps it 0 -> 1 over ``train.l1_warmup_frac`` of
        the run (the other architectures take and ignore it)."""
        x_hat, z = self(x)
        mse = _sq_err(x, x_hat)
        sparsity = jnp.mean(z @ jnp.linalg.norm(self.W_dec[...], axis=-1))
        loss = mse + self.l1_coeff * sparsity_scale * sparsity
        return loss, self._metrics(loss, x, x_hat, z, mse, jnp.zeros(()), sparsity)


class TopKSAE(SAE):
    """TopK (Gao et al. 2024): keep the k largest pre-activations per token (ReLU'd)."""

    architecture = "topk"

    @staticmethod
    def default_encoder_scale(d: int, m: int) -> float:
        """1: the k largest pre-activations are picked whatever their scale."""
        return 1.0

    def __init__(self, d, m, *, rngs, k: int = 32, aux_coeff: float = 1 / 32,
                 k_aux: int | None = None, **kw):
        super().__init__(d, m, rngs=rngs, **kw)
        self.k = int(k)
        self.aux_coeff = float(aux_coeff)
        self.k_aux = int(min(k_aux if k_aux is not None else max(d // 2, 1), m))

    def select(self, pre: jax.Array):
        """Per-token top-k: (vals [B,k] ReLU'd, idx [B,k])."""
        vals, idx = jax.lax.top_k(pre, self.k)
        return jax.nn.relu(vals), idx

    def encode(self, x):
        vals, idx = self.select(self.pre_acts(x))
        return _scatter_rows(vals, idx, self.m)

    def _aux(self, pre, residual, dead_mask, x=None):
        """AuxK; with ``x`` (sparse paths, pre is stop-gradient) the differentiable pre
        is recomputed from the parameters, only if a latent is dead."""
        if dead_mask is None:
            return jnp.zeros(())
        dead_mask = jnp.asarray(dead_mask, bool)
        if x is None:
            return auxk_loss(pre, residual, self.W_dec[...], dead_mask, self.k_aux)
        return auxk_loss_from_params(x, self.b_dec[...], self.W_enc[...], self.b_enc[...],
                                     self.W_dec[...], residual, dead_mask, self.k_aux)

    def _sparse_pre(self, x, pre_sg, rows, cols):
        """Differentiable pre[rows, cols] (flat) with the sparse encoder backward."""
        return sparse_pre_acts(x, self.b_dec[...], self.W_enc[...], self.b_enc[...], pre_sg,
                               rows, cols)

    def loss(self, x, dead_mask=None, train: bool = True, sparsity_scale=1.0):
        """MSE + aux_coeff * AuxK. Only the encoder forward is dense: the k latents are
        picked on a stop-gradient pre, their values get a sparse encoder backward
        (:func:`sparse_pre_acts`) and the decode is a k-row gather (:func:`sparse_decode`)."""
        pre = jax.lax.stop_gradient(self.pre_acts(x))
        b = x.shape[0]
        _, idx = jax.lax.top_k(pre, self.k)
        cols = idx.T                                             # [k, B] chunks
        vals_t = jax.nn.relu(self._sparse_pre(x, pre, None, cols))
        x_hat = pair_decode(self.W_dec[...], vals_t, None, cols, b) + self.b_dec[...]
        vals = vals_t.T
        mse = _sq_err(x, x_hat)
        aux = self._aux(pre, x - x_hat, dead_mask, x)
        loss = mse + self.aux_coeff * aux
        z = _scatter_rows(jax.lax.stop_gradient(vals), idx, self.m)
        return loss, self._metrics(loss, x, x_hat, z, mse, aux, jnp.zeros(()), (vals, idx))


class BatchTopKSAE(TopKSAE):
    """BatchTopK (Bussmann et al. 2024): top B·k activations over the whole batch.

    Training selects over the flattened batch, so tokens get a variable number of
    latents. Inference cannot see a batch, so ``encode`` uses a threshold. The training
    loop sets it before every evaluation so that the mean L0 on training rows is k
    (:mod:`musicsae_jax.calibration`); between evaluations :meth:`update_stats` keeps an
    EMA of the smallest selected activation (biased low, a progress estimate only).
    """

    architecture = "batchtopk"

    def __init__(self, d, m, *, rngs, threshold_momentum: float = 0.99, **kw):
        super().__init__(d, m, rngs=rngs, **kw)
        self.threshold = Stat(jnp.zeros((), jnp.float32))
        self.threshold_momentum = float(threshold_momentum)

    def select_batch(self, pre: jax.Array):
        """(vals [B·k] ReLU'd, rows [B·k], cols [B·k]) of the batch-wide top B·k."""
        b = pre.shape[0]
        vals, flat = jax.lax.top_k(jax.nn.relu(pre).reshape(-1), b * self.k)
        return vals, flat // self.m, flat % self.m

    def select_batch_fast(self, pre: jax.Array, per_row: int | None = None,
                          deep_rows: int | None = None, deep_k: int | None = None):
        """Same selection as :meth:`select_batch` (ties aside), as pairs ordered by token,
        without a top-B·k over all B·m values (which costs about as much as the rest of
        the step) and without sorting the winners.

        Candidates: each row's top ``per_row`` (default 2k) pre-activations, and for the
        ``deep_rows`` rows (default B/16) whose last candidate is largest (the rows most
        likely to hold more winners: high-norm tokens) their top ``deep_k`` (default 8k).
        B/16, not fewer: a trained BatchTopK on real activations (bench/quality.py, m =
        32d, 2M tokens) had 132-142 rows of a 4096-row batch with more than 2k winners,
        so at B/32 every step fell back to the full top-B·k and ran at half TopK's speed
        (real data, select alone: 0.80 s at B/32, 0.20 s at B/16, 0.23 s at B/8).
        The threshold τ, the B·k-th largest candidate, is found by bisection on the
        float bits (:func:`_nth_largest`, a few cheap passes over the ~B·2k candidates);
        since every row's candidates are sorted, the winners are the first c_r
        candidates of each row (c_r: the candidates > τ, plus ties at τ in row order up
        to B·k), laid out row after row. Exact, because every value left out is at most
        its row's last candidate, and the selection is only used when all those bounds
        are <= τ; otherwise ``lax.cond`` runs :meth:`select_batch` (rare: more than
        deep_rows rows each with more than 2k winners). ReLU commutes with top-k, so it
        is applied to candidates. (Per-row top-k alone would not do: a row may hold more
        than k of the winners.)
        """
        b, m, n = pre.shape[0], self.m, pre.shape[0] * self.k
        kr = min(m, max(per_row or 2 * self.k, self.k))             # >= B·k candidates
        if kr >= m:
            return _by_token(*self.select_batch(pre))
        cv, ci = jax.lax.top_k(pre, kr)                              # [B, kr] sorted
        cv = jax.nn.relu(cv)
        last = cv[:, -1]
        r = min(b - 1, deep_rows if deep_rows is not None else max(1, b // 16))
        k2 = min(m, deep_k or 8 * self.k)
        if r < 1 or k2 <= kr:                                        # one tier only
            tau = _nth_largest((cv,), n)
            fast = _first_per_row(cv, ci, None, None, None, tau, n)
            return jax.lax.cond(jnp.all(last <= tau), lambda: fast,
                                lambda: _by_token(*self.select_batch(pre)))
        bound, deep = jax.lax.top_k(last, r + 1)
        deep, bound = deep[:r], bound[r]                              # rows left: last <= bound
        cv2, ci2 = jax.lax.top_k(pre[deep], k2)                       # [r, k2]
        cv2 = jax.nn.relu(cv2)
        is_deep = jnp.zeros((b,), bool).at[deep].set(True)
        tau = _nth_largest((jnp.where(is_deep[:, None], -1.0, cv), cv2), n)
        fast = _first_per_row(cv, ci, cv2, ci2, deep, tau, n)
        ok = (bound <= tau) & (jnp.all(cv2[:, -1] <= tau) | (k2 >= m))
        return jax.lax.cond(ok, lambda: fast, lambda: _by_token(*self.select_batch(pre)))

    def encode(self, x):
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold[...])

    def _dense_z(self, vals, rows, cols, b):
        vals = jax.lax.stop_gradient(vals)
        return jnp.zeros((b, self.m), vals.dtype).at[rows, cols].set(vals)

    def _train_select(self, x, pre_sg):
        """Batch top-B·k on the stop-gradient pre, as [k, B] chunks of pairs; values
        with the sparse encoder backward. Pairs come ordered by token: the row gathers
        and scatter-adds of the sparse decode and its backward then walk memory in order
        (about 20% less CPU time for them at B=4096, d=1024 than in selection order)."""
        _, rows, cols = self.select_batch_fast(pre_sg)                # ordered by token
        rows, cols = rows.reshape(self.k, -1), cols.reshape(self.k, -1)
        return jax.nn.relu(self._sparse_pre(x, pre_sg, rows, cols)), rows, cols

    def _train_recon(self, x, pre):
        vals, rows, cols = self._train_select(x, pre)
        b = x.shape[0]
        x_hat = pair_decode(self.W_dec[...], vals, rows, cols, b) + self.b_dec[...]
        z = self._dense_z(vals.reshape(-1), rows.reshape(-1), cols.reshape(-1), b)
        return x_hat, z, (vals, cols)

    def loss(self, x, dead_mask=None, train: bool = True, sparsity_scale=1.0):
        """Train: batch top-B·k with sparse encoder backward and sparse decode.
        Eval: threshold encode, dense decode."""
        pre = self.pre_acts(x)
        pairs = None
        if train:
            pre = jax.lax.stop_gradient(pre)
            x_hat, z, pairs = self._train_recon(x, pre)
        else:
            z = pre * (pre > self.threshold[...])
            x_hat = self.decode(z)
        mse = _sq_err(x, x_hat)
        aux = self._aux(pre, x - x_hat, dead_mask, x if train else None)
        loss = mse + self.aux_coeff * aux
        return loss, self._metrics(loss, x, x_hat, z, mse, aux, jnp.zeros(()), pairs)

    def update_stats(self, z: jax.Array) -> None:
        """threshold <- EMA of the smallest positive selected activation (first: copy).

        ``z`` may be the dense latents or just the selected values
        (``metrics["active_vals"]``): only its positive entries matter."""
        z = jax.lax.stop_gradient(z)
        has = jnp.any(z > 0)
        min_pos = jnp.min(jnp.where(z > 0, z, jnp.inf))
        t = self.threshold[...]
        mom = self.threshold_momentum
        new = jnp.where(t > 0, mom * t + (1 - mom) * min_pos, min_pos)
        self.threshold[...] = jnp.where(has, new, t).astype(t.dtype)


class MatryoshkaSAE(BatchTopKSAE):
    """Matryoshka BatchTopK (Bussmann et al. 2025): nested dictionary prefixes.

    Latents ``[:p]`` for every prefix size p must reconstruct x on their own, which
    pushes general features to the front and stops absorption by later specific ones.
    Loss = mean over prefixes of their MSEs (+ AuxK on the full reconstruction).
    """

    architecture = "matryoshka"

    def __init__(self, d, m, *, rngs, matryoshka_prefixes: Sequence[int] | None = None, **kw):
        super().__init__(d, m, rngs=rngs, **kw)
        self.prefixes = tuple(int(p) for p in
                              (matryoshka_prefixes or default_prefixes(m, self.k)))

    def _groups(self, cols):
        return jnp.searchsorted(jnp.asarray(self.prefixes, jnp.int32), cols, side="right")

    def _prefix_recons(self, x, pre, train):
        """[B, G, d] reconstructions of every prefix (b_dec included) and z."""
        b, g = x.shape[0], len(self.prefixes)
        W = self.W_dec[...]
        if train:
            vals, rows, cols = self._train_select(x, pre)
            parts = pair_decode(W, vals, rows * g + self._groups(cols), cols,
                                b * g).reshape(b, g, -1)
            z = self._dense_z(vals.reshape(-1), rows.reshape(-1), cols.reshape(-1), b)
            pairs = (vals, cols)
        else:
            pairs = None
            z = pre * (pre > self.threshold[...])
            bounds = (0,) + self.prefixes
            parts = jnp.stack([z[:, lo:hi] @ W[lo:hi] for lo, hi in zip(bounds, bounds[1:])], 1)
        return jnp.cumsum(parts, axis=1) + self.b_dec[...], z, pairs

    def loss(self, x, dead_mask=None, train: bool = True, sparsity_scale=1.0):
        pre = self.pre_acts(x)
        if train:
            pre = jax.lax.stop_gradient(pre)
        recons, z, pairs = self._prefix_recons(x, pre, train)
        prefix_mse = jnp.mean(jnp.sum((x[:, None, :] - recons) ** 2, axis=-1), axis=0)
        x_hat = recons[:, -1]
        aux = self._aux(pre, x - x_hat, dead_mask, x if train else None)
        loss = jnp.mean(prefix_mse) + self.aux_coeff * aux
        metrics = self._metrics(loss, x, x_hat, z, prefix_mse[-1], aux, jnp.zeros(()), pairs)
        metrics.update({f"mse_prefix_{p}": prefix_mse[i] for i, p in enumerate(self.prefixes)})
        return loss, metrics


class JumpReLUSAE(SAE):
    """JumpReLU (Rajamanoharan et al. 2024): z = pre * H(pre - θ), θ = exp(log_threshold).

    The Heaviside step has zero gradient almost everywhere, so θ learns through a
    straight-through estimator with a rectangle kernel of width ``bandwidth``; the L0
    penalty (``l0_coeff``) uses the same estimator.

    Sparsity is set by ``target_l0`` (default: k). Adam moves each log-threshold by about
    lr per step, far slower than the encoder changes the scale of pre early in training,
    so a fixed penalty lands anywhere (L0 in the hundreds, or collapsing to a few). Here
    the penalty and the STE set the thresholds *relative to each other*, and a controller
    sets their common level: after every step all log-thresholds shift by
    ``threshold_rate · clip(log(L0_batch / target_l0), ±1)`` (the batch L0 is measured
    anyway). θ starts where the L0 on training rows equals target_l0
    (:func:`musicsae_jax.calibration.init_thresholds`; ``jumprelu_init_threshold`` fixes
    it instead). ``target_l0=0`` turns the controller off (the paper's recipe: L0 set by
    ``l0_coeff`` alone).
    """

    architecture = "jumprelu"

    @staticmethod
    def default_encoder_scale(d: int, m: int) -> float:
        """1: the thresholds are set from the training rows' pre-activations anyway."""
        return 1.0

    def __init__(self, d, m, *, rngs, k: int = 32, target_l0: float | None = None,
                 l0_coeff: float = 1e-3, threshold_rate: float = 0.05,
                 jumprelu_bandwidth: float = 0.05,
                 jumprelu_init_threshold: float | None = None, **kw):
        super().__init__(d, m, rngs=rngs, **kw)
        self.target_l0 = float(k if target_l0 is None else target_l0)
        self.init_threshold = jumprelu_init_threshold
        self.min_threshold = 1e-3
        init = jumprelu_init_threshold or self.min_threshold
        self.log_threshold = nnx.Param(jnp.full((m,), np.log(init), jnp.float32))
        self.l0_coeff = float(l0_coeff)
        self.threshold_rate = float(threshold_rate)
        self.bandwidth = float(jumprelu_bandwidth)

    def encode(self, x):
        return jumprelu(self.pre_acts(x), jnp.exp(self.log_threshold[...]), self.bandwidth)

    def loss(self, x, dead_mask=None, train: bool = True, sparsity_scale=1.0):
        pre = self.pre_acts(x)
        theta = jnp.exp(self.log_threshold[...])
        z = jumprelu(pre, theta, self.bandwidth)
        x_hat = self.decode(z)
        mse = _sq_err(x, x_hat)
        sparsity = jnp.mean(jnp.sum(step_fn(pre, theta, self.bandwidth), axis=-1))
        loss = mse + self.l0_coeff * sparsity
        return loss, self._metrics(loss, x, x_hat, z, mse, jnp.zeros(()), sparsity)

    def update_stats(self, z: jax.Array) -> None:
        """Shift every log-threshold towards ``target_l0`` from this batch's L0 (z: the
        dense latents); called after the optimizer step, like the BatchTopK EMA."""
        if not self.target_l0 > 0:
            return
        l0 = jnp.mean(jnp.sum(jax.lax.stop_gradient(z) > 0, axis=-1).astype(jnp.float32))
        err = jnp.clip(jnp.log((l0 + 0.5) / (self.target_l0 + 0.5)), -1.0, 1.0)
        lt = self.log_threshold[...]
        self.log_threshold[...] = (lt + self.threshold_rate * err).astype(lt.dtype)


_CLASSES = {"relu": SAE, "topk": TopKSAE, "batchtopk": BatchTopKSAE,
            "jumprelu": JumpReLUSAE, "matryoshka": MatryoshkaSAE}


# --------------------------------------------------------------------------------------
# Construction from a config
# --------------------------------------------------------------------------------------


def make_sae(cfg, d: int, rngs: nnx.Rngs) -> SAE:
    """Build the SAE named by ``cfg.architecture`` for inputs of width d."""
    c = resolve_config(cfg, d)
    cls = _CLASSES[c.pop("architecture")]
    m = c.pop("m")
    c.pop("expansion")
    return cls(int(d), m, rngs=rngs, **c)
