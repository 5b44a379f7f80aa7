"""bench/quality.py's train / validation / test split: whole documents, disjoint, and the
validation split is exactly what the project's trainer holds out of the store it reads."""
import importlib.util
import os

import numpy as np
import pytest

from musicsae_jax import data as data_lib
from musicsae_jax import store
from musicsae_jax import train as train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quality():
  spec = importlib.util.spec_from_file_location("bench_quality",
                                                os.path.join(ROOT, "bench", "quality.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_three_way_split_is_a_disjoint_partition_of_documents(quality):
  ids = np.repeat(np.arange(150), 7)
  s = quality.three_way_split(ids, 0.1, 0.1, 0)
  parts = [set(s[k].tolist()) for k in ("train", "val", "test")]
  assert all(parts) and sum(map(len, parts)) == 150
  assert set.union(*parts) == set(range(150))
  assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
  assert len(parts[2]) == 15 and len(parts[1]) == round(0.1 * 135)
  assert set(s["dev"].tolist()) == parts[0] | parts[1]
  again = quality.three_way_split(ids[::-1], 0.1, 0.1, 0)     # deterministic, order-free
  assert all(np.array_equal(s[k], again[k]) for k in s)
  other = quality.three_way_split(ids, 0.1, 0.1, 1)
  assert not np.array_equal(s["test"], other["test"])


def test_split_rows_follow_documents_and_val_is_the_trainers_hold_out(quality, tmp_path):
  rng = np.random.default_rng(0)
  lengths = rng.integers(5, 60, size=40)                     # uneven documents
  doc = np.repeat(np.arange(40), lengths).astype(np.int32)
  pos = np.concatenate([np.arange(n) for n in lengths]).astype(np.int32)
  acts = rng.normal(size=(len(doc), 8)).astype(np.float32)
  acts[:, 0] = doc                                           # each row names its document
  np.savez(tmp_path / "minilm_acts.npz", acts=acts, index=np.stack([doc, pos], 1),
           names=np.array([f"doc{i}" for i in range(40)]))
  path, meta = quality.write_split(str(tmp_path), 0.1)
  sp = np.load(path)
  rows = {k: sp[f"{k}_rows"] for k in ("train", "val", "test")}
  all_rows = np.concatenate(list(rows.values()))
  assert len(all_rows) == len(doc) and len(np.unique(all_rows)) == len(doc)
  docs = {k: set(doc[v].tolist()) for k, v in rows.items()}
  assert all(docs.values())
  assert not (docs["train"] & docs["val"] or docs["train"] & docs["test"]
              or docs["val"] & docs["test"])
  for k, v in rows.items():                                  # whole documents only
    assert np.isin(doc, list(docs[k])).sum() == len(v)
  assert sorted(docs["test"]) == meta["test_doc_ids"]
  # The store our trainer reads holds train + validation, never a test row...
  site = store.open_dataset(data_lib.dataset_path(str(tmp_path), quality.DATASET)).site(
      quality.SITE)
  stored = np.asarray(site.read_rows(np.arange(site.read_index().shape[0])), np.float32)
  assert set(stored[:, 0].astype(int).tolist()) == docs["train"] | docs["val"]
  # ...and the trainer's own hold-out of that store is exactly the validation rows.
  t = train_lib.default_config()
  index = site.read_index()
  held = data_lib.split_prompts(index[:, 0], t.eval_fraction, t.data_seed)
  held_rows = data_lib.eval_rows(site, held, None, t.data_seed)
  assert set(stored[held_rows, 0].astype(int).tolist()) == docs["val"]
  assert len(held_rows) == len(rows["val"])


def test_tuned_is_chosen_on_validation_never_on_test(quality):
  def row(trainer, mult, val, test):
    return {"trainer": trainer, "m": 8, "budget_tokens": 1, "lr_mult": mult, "val_fvu": val,
            "fvu": test}
  rows = [row("sae_lens", 1.0, 0.30, 0.30), row("sae_lens", 2.0, 0.20, 0.40),
          row("sae_lens", 4.0, 0.25, 0.10), row("musicsae_jax topk", 1.0, 0.2, 0.2),
          row("musicsae_jax topk", 0.5, 0.1, 0.3), {"trainer": "sae_lens", "error": "x"}]
  defaults, tuned = quality.select(rows)
  assert [(r["trainer"], r["lr_mult"]) for r in defaults] == [
      ("musicsae_jax topk", 1.0), ("sae_lens", 1.0)]
  best = {r["trainer"]: r for r in tuned}
  assert best["sae_lens"]["lr_mult"] == 2.0 and not best["sae_lens"]["tuned_at_edge"]
  assert best["musicsae_jax topk"]["lr_mult"] == 0.5 and best["musicsae_jax topk"]["tuned_at_edge"]
