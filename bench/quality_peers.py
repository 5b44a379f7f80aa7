"""Train a peer library's TopK SAE at its defaults on given rows (run by bench/quality.py).

Runs in the peers' environment (torch, dictionary-learning, sae-lens), never in the
project's. Reads the activations .npz and a split .npz (train, validation and test row
ids, chosen by the caller: whole documents, disjoint), trains for `tokens // batch` steps
on freshly shuffled train rows each epoch (a full in-memory shuffle, the most favourable
input these libraries can get) at `--lr_mult` times the library's own default lr, and
prints one JSON line: FVU pooled over the validation rows (`val_fvu`, what a sweep
selects on) and over the test rows (`fvu`, what is reported), each against its own mean;
L0 and dead fraction on the test rows; `dead_frac_all`, never fires on any row (train,
validation and test; the measure that can tell a dead latent from a rare one at m = 32d);
acts/s of the training loop and this process's peak RSS.

What "defaults" means for each library (read from their sources):
- dictionary_learning `TopKTrainer`: lr 2e-4/sqrt(m/2^14), Adam(0.9, 0.999), clipping at 1,
  b_dec = geometric median of the first batch, AuxK 1/32 on latents dead for 10M tokens,
  warm-up 1000 steps, no decay. Its schedule asserts warmup_steps < steps, so warm-up is
  min(1000, steps // 10) here; inputs unnormalised (`normalize_activations=False`).
- SAELens `TopKTrainingSAE` + `SAETrainer`: lr 3e-4 constant, no warm-up, Adam(0.9, 0.999),
  clipping at 1 (lr_end = lr / 10 as the runner config sets it; unused when constant),
  decoder init norm 0.1, activations rescaled by decoder norm, AuxK
  coefficient 1 on latents dead for 1000 steps, b_dec zeros, `normalize_activations="none"`.
"""
import argparse
import json
import os
import resource
import time

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np
import torch


def batches(x: torch.Tensor, batch: int, seed: int):
  g = torch.Generator().manual_seed(seed)
  while True:
    perm = torch.randperm(len(x), generator=g)
    for i in range(0, len(perm) - batch + 1, batch):
      yield x[perm[i:i + batch]]


def _import(trainer: str) -> None:
  """Import outside the timed region. dictionary_learning's __init__ imports its LM
  activation buffer, which needs nnsight (not a declared dependency, not used here): a
  placeholder module lets the trainer import."""
  if trainer == "dictionary_learning":
    import sys
    import types
    sys.modules.setdefault("nnsight", types.SimpleNamespace(LanguageModel=None))
    import dictionary_learning.trainers.top_k  # noqa: F401
  else:
    import sae_lens.training.sae_trainer  # noqa: F401


def default_lr(trainer: str, m: int) -> float:
  """Each library's own default learning rate (read from its sources)."""
  return 2e-4 / (m / 2**14) ** 0.5 if trainer == "dictionary_learning" else 3e-4


def train_dictionary_learning(x, m, k, steps, batch, seed, lr):
  from dictionary_learning.trainers.top_k import TopKTrainer
  trainer = TopKTrainer(steps=steps, activation_dim=x.shape[1], dict_size=m, k=k, layer=0,
                        lm_name="all-MiniLM-L6-v2", warmup_steps=min(1000, steps // 10),
                        seed=seed, device="cpu", lr=lr)
  assert abs(trainer.lr - lr) <= 1e-12 * lr, (trainer.lr, lr)
  it = batches(x, batch, seed)
  for step in range(steps):
    trainer.update(step, next(it))
  ae = trainer.ae.eval()

  def encode(xb):
    return ae.encode(xb)

  return encode, ae.decode


def train_sae_lens(x, m, k, steps, batch, seed, lr):
  from sae_lens.config import SAETrainerConfig
  from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
  from sae_lens.training.sae_trainer import SAETrainer
  torch.manual_seed(seed)
  sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=m, k=k, device="cpu"))
  cfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch,
                         device="cpu", lr=lr, lr_end=lr / 10)   # the runner's default, lr / 10
  sae = SAETrainer(cfg, sae, batches(x, batch, seed)).fit().eval()
  return sae.encode, sae.decode


TRAINERS = {"dictionary_learning": train_dictionary_learning, "sae_lens": train_sae_lens}


def fired_counts(encode, x: torch.Tensor, m: int, batch: int = 4096) -> torch.Tensor:
  """How often each latent fires on the rows of x (float64 [m])."""
  fired = torch.zeros(m, dtype=torch.float64)
  with torch.no_grad():
    for i in range(0, len(x), batch):
      fired += (encode(x[i:i + batch]) != 0).sum(0, dtype=torch.float64)
  return fired


def evaluate(encode, decode, x: torch.Tensor, m: int, batch: int = 4096) -> dict:
  sse, fired, active = 0.0, torch.zeros(m, dtype=torch.float64), 0.0
  with torch.no_grad():
    for i in range(0, len(x), batch):
      xb = x[i:i + batch]
      z = encode(xb)
      sse += float(((xb - decode(z)) ** 2).sum(dtype=torch.float64))
      nz = (z != 0)
      fired += nz.sum(0, dtype=torch.float64)
      active += float(nz.sum())
  x64 = x.double()
  var = float(((x64 - x64.mean(0)) ** 2).sum())
  return {"fvu": sse / var, "l0": active / len(x), "dead_frac": float((fired == 0).double().mean()),
          "fired": fired}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--trainer", choices=sorted(TRAINERS), required=True)
  ap.add_argument("--acts", required=True)
  ap.add_argument("--split", required=True)
  ap.add_argument("--m", type=int, required=True)
  ap.add_argument("--k", type=int, default=32)
  ap.add_argument("--tokens", type=int, required=True)
  ap.add_argument("--batch", type=int, default=4096)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--threads", type=int, default=0)
  ap.add_argument("--lr_mult", type=float, default=1.0,
                  help="learning rate = this x the library's own default")
  args = ap.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  acts = np.load(args.acts)["acts"]
  split = np.load(args.split)
  rows = {name: torch.from_numpy(np.ascontiguousarray(acts[split[f"{name}_rows"]], np.float32))
          for name in ("train", "val", "test")}
  del acts
  steps = args.tokens // args.batch
  lr = args.lr_mult * default_lr(args.trainer, args.m)
  _import(args.trainer)
  t0 = time.time()
  encode, decode = TRAINERS[args.trainer](rows["train"], args.m, args.k, steps, args.batch,
                                          args.seed, lr)
  seconds = time.time() - t0
  val = evaluate(encode, decode, rows["val"], args.m)
  ev = evaluate(encode, decode, rows["test"], args.m)
  fired_all = (ev.pop("fired") + val["fired"] + fired_counts(encode, rows["train"], args.m))
  out = {"trainer": args.trainer, "m": args.m, "k": args.k, "steps": steps,
         "tokens": steps * args.batch, "lr": lr, "lr_mult": args.lr_mult,
         "val_fvu": val["fvu"], **ev,
         "dead_frac_all": float((fired_all == 0).double().mean()),
         "rows_all": sum(len(x) for x in rows.values()),
         "acts_per_s": steps * args.batch / seconds, "train_s": seconds,
         "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
  print(json.dumps(out))


if __name__ == "__main__":
  main()
