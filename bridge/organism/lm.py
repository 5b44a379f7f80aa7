"""Train the organism's MusicGen LM (audiocraft's LMModel) on codec tokens, conditioned on
caption text through its T5 conditioner, the way audiocraft's MusicGenSolver does:
attributes -> classifier-free-guidance dropout and attribute dropout -> tokenize ->
condition tensors -> `compute_predictions` over the delay pattern -> cross entropy per
codebook on the pattern's valid positions, averaged over codebooks; AdamW, warmup then
cosine decay, gradient clipping. The T5 stays frozen (audiocraft's `finetune=False`); its
output projection into the LM width trains with the LM.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


def attributes(captions):
  """audiocraft ConditioningAttributes with the 'description' text of each caption."""
  from audiocraft.modules.conditioners import ConditioningAttributes
  return [ConditioningAttributes(text={"description": c}) for c in captions]


def _forward(lm, codes: torch.Tensor, captions, *, dropout: bool):
  attrs = attributes(captions)
  if dropout:
    attrs = lm.att_dropout(lm.cfg_dropout(attrs))
  tokenized = lm.condition_provider.tokenize(attrs)
  cond = lm.condition_provider(tokenized)
  out = lm.compute_predictions(codes, [], cond)
  return out.logits, out.mask


def cross_entropy(logits, targets, mask):
  """audiocraft MusicGenSolver._compute_cross_entropy: (mean over codebooks, per codebook)."""
  K = targets.shape[1]
  ce, per = torch.zeros([]), []
  for k in range(K):
    m = mask[:, k].reshape(-1)
    q = F.cross_entropy(logits[:, k].reshape(-1, logits.shape[-1])[m], targets[:, k].reshape(-1)[m])
    ce = ce + q
    per.append(float(q.detach()))
  return ce / K, per


def _lr(step: int, cfg) -> float:
  warm = max(1, int(cfg.warmup_steps))
  if step < warm:
    return float(cfg.lr) * (step + 1) / warm
  t = (step - warm) / max(1, int(cfg.steps) - warm)
  return float(cfg.lr) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@torch.no_grad()
def mean_cross_entropy(lm, codes: np.ndarray, captions, *, batch_size: int = 32) -> float:
  """Teacher-forced cross entropy (nats per token, mean over codebooks' valid positions as in
  `cross_entropy`) with each clip's own caption, in eval mode (no dropout)."""
  was = lm.training
  lm.eval()
  tot, n = 0.0, 0
  for s in range(0, len(codes), batch_size):
    x = torch.from_numpy(codes[s:s + batch_size])
    logits, mask = _forward(lm, x, list(captions[s:s + batch_size]), dropout=False)
    ce, _ = cross_entropy(logits, x, mask)
    tot += float(ce) * len(x)
    n += len(x)
  lm.train(was)
  return tot / max(1, n)


def train(lm, codes: np.ndarray, captions: list[str], cfg, *,
          val: tuple[np.ndarray, list[str]] | None = None,
          log: Callable[[str], None] = print) -> dict:
  """Train `lm` in place on codes [N, K, T] with their captions. cfg: steps, batch_size,
  lr, warmup_steps, weight_decay, max_norm, seed, val_every, patience.

  `val` (codes, captions), clips of the training split that the steps never see: scored
  every `val_every` steps; the LM ends with the weights of its best validation score
  (early stopping after `patience` scores without improvement). This selects on training
  data only, so the held-out metrics stay unbiased."""
  import copy
  from musicsae_jax.progress import Progress
  params = [p for p in lm.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=float(cfg.lr), betas=(0.9, 0.95),
                          weight_decay=float(cfg.weight_decay))
  gen = np.random.default_rng([int(cfg.seed), 0x1A4])
  steps, bs = int(cfg.steps), int(cfg.batch_size)
  every = int(cfg.get("val_every", 0)) if val is not None else 0
  patience = int(cfg.get("patience", 0))
  lm.train()
  t0, hist, curve = time.time(), [], []
  best = (math.inf, 0, None)
  bar = Progress(steps, "organism lm", unit="steps", warmup=2, log_every=20.0)
  done = steps
  for step in range(steps):
    for g in opt.param_groups:
      g["lr"] = _lr(step, cfg)
    idx = gen.integers(0, len(codes), bs)
    x = torch.from_numpy(codes[idx])
    logits, mask = _forward(lm, x, [captions[i] for i in idx], dropout=True)
    ce, _ = cross_entropy(logits, x, mask)
    opt.zero_grad(set_to_none=True)
    ce.backward()
    if float(cfg.max_norm) > 0:
      torch.nn.utils.clip_grad_norm_(params, float(cfg.max_norm))
    opt.step()
    hist.append(float(ce.detach()))
    bar.update(1, ce=f"{hist[-1]:.3f}")
    if every and ((step + 1) % every == 0 or step + 1 == steps):
      v = mean_cross_entropy(lm, val[0], val[1])
      curve.append({"step": step + 1, "train_batch_ce": float(np.mean(hist[-every:])),
                    "val_ce": v})
      if v < best[0]:
        best = (v, step + 1, copy.deepcopy(lm.state_dict()))
      elif patience and len(curve) - 1 - [c["step"] for c in curve].index(best[1]) >= patience:
        done = step + 1
        log(f"organism lm: validation CE has not improved for {patience} scores since step "
            f"{best[1]} ({best[0]:.3f}); stopping at step {done}")
        break
  bar.close()
  if best[2] is not None:
    lm.load_state_dict(best[2])
  lm.eval()
  out = {"steps": steps, "steps_run": done, "seconds": time.time() - t0,
         "final_batch_ce": float(np.mean(hist[-max(1, len(hist) // 10):]))}
  if curve:
    out.update(best_step=best[1], best_val_ce=best[0], val_clips=int(len(val[0])),
               curve=curve)
  return out


@torch.no_grad()
def evaluate(lm, codes: np.ndarray, captions: list[str], *, batch_size: int = 32,
             seed: int = 0) -> dict:
  """Teacher-forced token accuracy and perplexity on held-out clips, with three texts:
  `true` (each clip's own caption), `shuffled` (another held-out clip's caption) and
  `none` (the empty condition, as classifier-free guidance's unconditional half sees).
  `conditioning_gain_nats` = CE(shuffled) - CE(true): > 0 means the LM uses its text."""
  lm.eval()
  rng = np.random.default_rng([int(seed), 0x5F])
  perm = rng.permutation(len(captions))
  while len(captions) > 1 and np.any(perm == np.arange(len(captions))):
    perm = rng.permutation(len(captions))
  texts = {"true": list(captions), "shuffled": [captions[i] for i in perm],
           "none": [None] * len(captions)}
  out = {}
  for name, caps in texts.items():
    n_tok, nll, correct = 0, 0.0, 0
    per_k = np.zeros((2, codes.shape[1]))
    for s in range(0, len(codes), batch_size):
      x = torch.from_numpy(codes[s:s + batch_size])
      logits, mask = _forward(lm, x, caps[s:s + batch_size], dropout=False)
      lp = torch.log_softmax(logits.float(), -1)
      tok_nll = -lp.gather(-1, x[..., None])[..., 0]                  # [B, K, T]
      hit = (logits.argmax(-1) == x)
      m = mask
      nll += float(tok_nll[m].sum())
      correct += int(hit[m].sum())
      n_tok += int(m.sum())
      per_k[0] += tok_nll.masked_fill(~m, 0).sum((0, 2)).numpy()
      per_k[1] += m.sum((0, 2)).numpy()
    ce = nll / n_tok
    out[name] = {"cross_entropy": ce, "perplexity": math.exp(ce), "token_accuracy": correct / n_tok,
                 "perplexity_per_codebook": [math.exp(a / b) for a, b in zip(*per_k)],
                 "tokens": n_tok}
  out["conditioning_gain_nats"] = out["shuffled"]["cross_entropy"] - out["true"]["cross_entropy"]
  out["clips"] = int(len(codes))
  out["uniform_perplexity"] = int(lm.card)
  return out
