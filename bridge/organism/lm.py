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


def train(lm, codes: np.ndarray, captions: list[str], cfg, *,
          log: Callable[[str], None] = print) -> dict:
  """Train `lm` in place on codes [N, K, T] with their captions. cfg: steps, batch_size,
  lr, warmup_steps, weight_decay, max_norm, seed."""
  from musicsae_jax.progress import Progress
  params = [p for p in lm.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=float(cfg.lr), betas=(0.9, 0.95),
                          weight_decay=float(cfg.weight_decay))
  gen = np.random.default_rng([int(cfg.seed), 0x1A4])
  steps, bs = int(cfg.steps), int(cfg.batch_size)
  lm.train()
  t0, hist = time.time(), []
  bar = Progress(steps, "organism lm", unit="steps", warmup=2, log_every=20.0)
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
  bar.close()
  lm.eval()
  return {"steps": steps, "seconds": time.time() - t0,
          "final_ce": float(np.mean(hist[-max(1, steps // 10):]))}


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
