"""Thresholds set from data so a deployed SAE has the sparsity it was asked for.

BatchTopK and Matryoshka train with a batch-wide top-B·k but are deployed with one
threshold, ``z = pre * (pre > θ)``. The usual running estimate (an EMA of each batch's
smallest selected activation) is biased: batches of correlated rows, and a model that
moves while the average is taken, give a deployed L0 well below k. Instead θ is chosen
at every evaluation (so the final and best checkpoints carry it) on a sample of training
rows: the midpoint between the N·k-th and (N·k+1)-th largest ReLU'd pre-activations of N
rows, so the mean L0 over the sample is exactly k.

JumpReLU starts from the same kind of threshold (its target L0 instead of k), so training
begins at the requested sparsity instead of at L0 ≈ m/2.

The N·k-th largest value comes from each row's top-kr candidates (kr = 4·target, then
x4 while some row's last candidate is above θ, which would mean that row holds more
winners than it showed): exact, and never an [N, m] sort.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from musicsae_jax import data as data_lib
from musicsae_jax import sae as sae_lib

CALIBRATED = ("batchtopk", "matryoshka")


def threshold_for_l0(candidates: Callable[[int], np.ndarray], l0: float, m: int) -> float:
    """θ with mean_rows count(pre > θ) == l0 over the rows that ``candidates`` sees.

    ``candidates(kr)`` returns [N, kr]: each row's kr largest ReLU'd pre-activations,
    sorted descending. θ is the midpoint of the n-th and (n+1)-th largest values overall
    (n = round(N·l0)), or 0 when fewer than n values are positive.
    """
    kr = int(min(m, max(1, int(np.ceil(4 * l0)))))
    while True:
        c = np.asarray(candidates(kr), np.float64)
        n_rows = c.shape[0]
        n = int(round(n_rows * float(l0)))
        if n_rows == 0 or n <= 0:
            return 0.0
        flat = np.sort(c.reshape(-1))[::-1]
        hi = flat[n - 1]
        lo = flat[n] if n < flat.size else 0.0
        tau = 0.5 * (hi + lo) if lo > 0 else (0.5 * hi if hi > 0 else 0.0)
        if kr >= m or np.all(c[:, -1] <= tau):
            return float(tau)
        kr = min(m, 4 * kr)        # a row may hold more values above θ than it showed


def _row_candidates(pre: jax.Array, kr: int) -> jax.Array:
    return jax.nn.relu(jax.lax.top_k(pre, kr)[0])


def init_thresholds(model: sae_lib.SAE, x: np.ndarray, batch_size: int = 1024) -> float | None:
    """Set a data-driven starting threshold where the architecture wants one.

    JumpReLU with ``init_threshold=None``: every latent starts at the θ that gives L0 =
    target_l0 on ``x`` (training rows, already normalised). Returns θ, or None when
    nothing was set. The model is the freshly built one (not yet sharded).
    """
    if getattr(model, "architecture", None) != "jumprelu" or model.init_threshold is not None:
        return None
    x = np.asarray(x, np.float32)
    if not len(x):
        return None
    pre_cands = jax.jit(lambda mdl, xb, kr: _row_candidates(mdl.pre_acts(xb), kr),
                        static_argnums=2)

    def candidates(kr):
        return np.concatenate([np.asarray(pre_cands(model, jnp.asarray(x[i:i + batch_size]), kr))
                               for i in range(0, len(x), batch_size)])

    tau = threshold_for_l0(candidates, model.target_l0, model.m)
    tau = max(tau, model.min_threshold)
    model.log_threshold[...] = jnp.full((model.m,), np.log(tau), jnp.float32)
    return tau


def make_threshold_calibrator(sae_cfg: dict, graphdef, state_sh, batch_sh, replicated,
                              x_calib: np.ndarray, batch_size: int, mesh) -> Callable | None:
    """``calibrate(state) -> (state, θ)`` for BatchTopK/Matryoshka train states (None for
    the other architectures): sets the deployed threshold so the mean L0 over ``x_calib``
    (normalised training rows) is k. Works on sharded states of any mesh. ``sae_cfg`` is
    the resolved SAE config (:func:`musicsae_jax.sae.resolve_config`).
    """
    if sae_cfg["architecture"] not in CALIBRATED:
        return None
    k, m = int(sae_cfg["k"]), int(sae_cfg["m"])

    def cands(state, x, kr):
        mdl = nnx.merge(graphdef, state["params"], state["stats"])
        return _row_candidates(mdl.pre_acts(x), kr)

    cands_jit = {}

    def candidates(state, kr):
        if kr not in cands_jit:
            cands_jit[kr] = jax.jit(lambda s, x: cands(s, x, kr), in_shardings=(state_sh, batch_sh),
                                    out_shardings=replicated)
        parts = [np.asarray(jax.device_get(cands_jit[kr](state, xb)))[:nb]
                 for xb, nb in data_lib.eval_batches(x_calib, batch_size, mesh)]
        return np.concatenate(parts) if parts else np.zeros((0, kr), np.float32)

    def set_threshold(state, tau):
        mdl = nnx.merge(graphdef, state["params"], state["stats"])
        mdl.threshold[...] = tau.astype(mdl.threshold[...].dtype)
        _, _, stats = nnx.split(mdl, nnx.Param, ...)
        return {**state, "stats": stats}

    set_jit = jax.jit(set_threshold, in_shardings=(state_sh, None), out_shardings=state_sh,
                      donate_argnums=(0,))

    def calibrate(state):
        tau = threshold_for_l0(lambda kr: candidates(state, kr), k, m)
        return set_jit(state, jnp.float32(tau)), tau

    return calibrate
