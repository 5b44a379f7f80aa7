"""The held-out-vocabulary split: a planted feature that reads the mood word scores high on
training-vocabulary prompts and at chance on prompts that describe the music without it,
while a planted content feature scores high on both (probes, selectivity, report)."""
import json
import os

import ml_collections
import numpy as np

from musicsae_jax import checkpoint as ckpt_lib, store
from musicsae_jax.analysis import analyze

EMOTIONS = ["calm", "energetic", "happy", "sad"]
TRAIN_PER, VOCAB_PER, FRAMES, D, M = 8, 4, 4, 8, 12   # 48 prompts


def _workspace(root):
  """lm.layer.0: x0 > 0 on every sad prompt (content), x1 > 0 on sad prompts that say
  "gloomy" (training vocabulary only: a word feature), x2..x5 an emotion one-hot (content).
  t5.pooled: an emotion one-hot on training-vocabulary prompts, 0 on the others (text that
  reads words only). Sizes match tests/test_report.py, so the probes' compile is shared."""
  rng = np.random.default_rng(1)
  prompts = []
  for i in range(4 * (TRAIN_PER + VOCAB_PER)):
    emo, vocab = EMOTIONS[i % 4], i >= 4 * TRAIN_PER
    text = (f"{emo} song {i}" if emo != "sad" else f"gloomy song {i}") if not vocab else \
        f"{['70', '150', '120', '60'][i % 4]} bpm piece {i}"
    prompts.append({"text": text, "labels": {"emotion": emo},
                    **({"split": "heldout_vocab"} if vocab else {})})
  P = len(prompts)
  ds_path = os.path.join(root, "activations", "ds")
  ds = store.create(ds_path, prompts=prompts, sites={
      "lm.layer.0": store.SiteSpec(d=D, chunk_rows=64), "t5.pooled": store.SiteSpec(d=6)})
  pid = np.repeat(np.arange(P), FRAMES)
  index = np.stack([pid, np.tile(np.arange(FRAMES), P)], 1).astype(np.int32)
  emo = pid % 4
  vocab = pid >= 4 * TRAIN_PER
  x = rng.normal(size=(len(pid), D)).astype(np.float32) * 0.3
  x[:, 0] = np.where(emo == 3, 2.0 + np.abs(x[:, 0]), -1.0)
  x[:, 1] = np.where((emo == 3) & ~vocab, 2.0 + np.abs(x[:, 1]), -1.0)
  x[:, 2:6] += 2.0 * np.eye(4)[emo]
  t5 = np.zeros((P, 6), np.float32)
  t5[:4 * TRAIN_PER] = rng.normal(size=(4 * TRAIN_PER, 6)) * 0.3
  t5[:4 * TRAIN_PER, :4] += 3.0 * np.eye(4)[np.arange(4 * TRAIN_PER) % 4]
  with ds.writer() as w:
    w.append("lm.layer.0", x, index)
    w.append("t5.pooled", t5, np.stack([np.arange(P), np.zeros(P)], 1).astype(np.int32))
    w.commit(range(P))
  W_enc = np.concatenate([np.eye(D), rng.normal(size=(D, M - D)) * 0.3], 1).astype(np.float32)
  params = {"W_enc": W_enc, "b_enc": np.zeros(M, np.float32), "W_dec": W_enc.T.copy(),
            "b_dec": np.zeros(D, np.float32)}
  ck = ckpt_lib.Checkpointer(os.path.join(root, "runs", "r", "checkpoints"), async_save=False)
  ck.save(1, {"params": params, "stats": {}}, None)
  ck.close()
  with open(os.path.join(root, "runs", "r", "config.json"), "w") as f:
    json.dump({"run": "r", "train": {"site": "lm.layer.0"}, "sae": {"architecture": "relu"}}, f)


def test_analyze_reports_both_splits(tmp_path):
  root = str(tmp_path)
  _workspace(root)
  c = ml_collections.ConfigDict({"run": "r", "dataset": "ds"})
  c.analysis = ml_collections.ConfigDict(dict(
      label_keys=("emotion",), probe_folds=2, probe_steps=30, probe_shuffles=2,
      cosine_permutations=20, null_permutations=200, rate_band=(1e-3, 0.5), top_per_label=3,
      max_features=4))
  paths = analyze(c, root, log=lambda _: None)
  em = json.load(open(paths["selectivity"]))["labels"]["emotion"]
  assert em["split"]["heldout_vocab_counts"] == [VOCAB_PER] * 4
  assert sum(em["split"]["train_counts"]) + sum(em["split"]["heldout_counts"]) == 4 * TRAIN_PER
  sad = {f["id"]: f for f in em["features"]["sad"]}
  content, word = sad[0], sad[1]                  # both chosen on training-vocabulary prompts
  assert content["auroc_train"] == word["auroc_train"] == 1.0
  assert content["auroc"] == word["auroc"] == 1.0                      # same vocabulary
  assert content["heldout_vocab"]["auroc"] == 1.0 and content["heldout_vocab"]["passes"]
  assert word["heldout_vocab"]["auroc"] == 0.5 and not word["heldout_vocab"]["passes"]
  assert "sad" in em["null_heldout_vocab"]["max_auroc_threshold"]
  rand = json.load(open(paths["probes_by_layer"]))["table"]["emotion"]["sae"]["random_directions"]
  assert rand["split"] == {k: em["split"][k] for k in rand["split"]}    # the features' partition
  assert len(rand["split"]["heldout_vocab_prompts"]) == 4 * VOCAB_PER
  pr = {r["name"]: r for r in json.load(open(paths["probes"]))["probes"]["emotion"]}
  t5, lm = pr["t5.pooled"], pr["lm.layer.0"]
  assert t5["n"] == 4 * TRAIN_PER and t5["heldout_vocab"]["n"] == 4 * VOCAB_PER
  assert t5["accuracy"] > 0.9 and t5["heldout_vocab"]["accuracy"] == 0.25  # words only: chance
  assert lm["accuracy"] > 0.9 and lm["heldout_vocab"]["accuracy"] > 0.9   # content
  html = open(paths["report"]).read()
  assert "<th>held-out vocabulary</th>" in html and "<th>AUROC held-out vocab</th>" in html
  assert 'alt="heatmap emotion (heldout_vocab)"' in html


def test_store_keeps_the_split_and_writes_none_when_absent(tmp_path):
  import pytest
  ds = store.create(str(tmp_path / "ds"), {"t5.pooled": store.SiteSpec(d=2)},
                    prompts=[{"text": "a"}, {"text": "b", "split": "heldout_vocab"}])
  assert "split" not in ds.prompts[0] and ds.prompts[1]["split"] == "heldout_vocab"
  with pytest.raises(store.StoreError, match="prompt 0: 'split' must be a string"):
    store.create(str(tmp_path / "bad"), {"t5.pooled": store.SiteSpec(d=2)},
                 prompts=[{"text": "a", "split": 1}])
