"""Do automatic feature labels name the right value? Exact-match rates for the organism
scorecard, against the exact labels of the concept clips.

Only the word labeller can be graded offline: CLAP needs real weights (the tiny random
ClapModel scores at chance by construction) and the LLM needs a served model, so both are
listed under "excluded" with the reason. The word label is the one the analysis writes for
a label-selective feature (`labels.word_label` on the captions of its top prompts by mean
activation, `analysis.top_prompts` of them).

What "names" a value means is read off the captions themselves, not hand-written: a word
set S (one or two caption words) names value v of label k when every caption of a clip
with v contains S and more than half of the captions containing S have v. Values no word
set names (a key "C" is one letter and words() drops it; tempo is digits; chord "minor"
shares its word with mode "minor" unless "triad" comes with it) are listed as unnameable
and left out of the rates. A label matches when its words contain one of the value's sets.

Two rates, each with a chance baseline (the same labeller on captions shuffled across
clips, labels and targets unchanged; mean over `shuffles`, and p = (1 + #shuffles at or
above the observed rate) / (1 + shuffles)):
  - passing: each value whose best SAE feature passes the max-null (ground_truth), its
    feature's label against that value;
  - all: every live latent with a non-empty label against its best value (largest AUROC
    over all label values, per-prompt means over all clips), where that value is nameable.
"""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np

from musicsae_jax.analysis import labels as lab

EXCLUDED = {
    "clap": "needs real CLAP weights; the offline tiny random ClapModel scores at chance by "
            "construction",
    "llm": "needs an OpenAI-compatible endpoint (MUSICSAE_LLM_URL); none is served offline",
}


def naming_sets(prompts: list[dict], key: str, max_words: int = 2) -> dict[str, list[tuple]]:
  """{value: minimal word sets that name it} from the captions (see the module doc)."""
  values, y = lab.label_vector(prompts, key)
  cw = [lab.words(p.get("text", "")) for p in prompts]
  everywhere = set.intersection(*cw) if cw else set()
  out = {}
  for k, val in enumerate(values):
    rows = np.nonzero(y == k)[0]
    common = sorted(set.intersection(*[cw[i] for i in rows]) - everywhere) if len(rows) else []
    sets: list[tuple] = []
    for n in range(1, max_words + 1):
      for s in itertools.combinations(common, n):
        if any(set(t) <= set(s) for t in sets):
          continue                               # a smaller set already names it
        has = [i for i, w in enumerate(cw) if set(s) <= w]
        if has and np.mean(y[has] == k) > 0.5:
          sets.append(s)
    out[val] = sets
  return out


def names(label: str, sets: list[tuple]) -> bool:
  """Does the label (words joined by ' / ') contain one of the word sets?"""
  w = lab.words(label.replace("/", " "))
  return any(set(s) <= w for s in sets)


def word_labels(pm: np.ndarray, texts: list[str], feature_ids, top: int) -> list[str]:
  """The analysis's word label of each feature: word lift of its top prompts' captions."""
  corpus = Counter(w for t in texts for w in lab.words(t))
  out = []
  for f in feature_ids:
    order = np.argsort(-pm[:, f], kind="stable")[:top]
    out.append(lab.word_label([texts[p] for p in order], corpus, len(texts))[0])
  return out


def best_values(pm: np.ndarray, prompts: list[dict], keys) -> tuple[list[tuple], np.ndarray, np.ndarray]:
  """(every (key, value), best index [m], its AUROC [m]): the value each feature tracks best."""
  pairs, rows = [], []
  for key in keys:
    values, y = lab.label_vector(prompts, key)
    au = lab.selectivity(pm, y, values)["auroc"]
    pairs += [(key, v) for v in values]
    rows.append(au)
  A = np.nan_to_num(np.concatenate(rows, 0), nan=0.0)
  best = np.argmax(A, 0)
  return pairs, best, A[best, np.arange(A.shape[1])]


def _rate(hits) -> float | None:
  return float(np.mean(hits)) if len(hits) else None


def score(pm: np.ndarray, prompts: list[dict], features: dict, *, top: int, shuffles: int = 50,
          seed: int = 0) -> dict:
  """Exact-match rates of word labels (see the module doc).

  pm: [P, m] per-prompt SAE means; features: ground_truth's "labels" ({key: {value:
  {"sae": {id, passes, ...}}}}); top: prompts per label (analysis.top_prompts).
  """
  pm = np.asarray(pm, np.float64)
  texts = [p.get("text", "") for p in prompts]
  if not any(texts):
    return {"skipped": "the prompts have no captions to label from", "excluded": EXCLUDED}
  keys = list(features)
  sets = {k: naming_sets(prompts, k) for k in keys}
  nameable = {k: {v: bool(s) for v, s in d.items()} for k, d in sets.items()}

  passing = [(k, v, d["sae"]["id"]) for k, vals in features.items() for v, d in vals.items()
             if "sae" in d and d["sae"]["passes"]]
  pass_named = [(k, v, f) for k, v, f in passing if sets[k].get(v)]
  pairs, best, best_auroc = best_values(pm, prompts, keys)
  alive = np.nonzero(pm.max(0) > 0)[0]
  labels_true = word_labels(pm, texts, alive, top)
  all_feats = [(int(f), pairs[best[f]]) for f, l in zip(alive, labels_true)
               if l and sets[pairs[best[f]][0]].get(pairs[best[f]][1])]
  ids = sorted({f for _, _, f in pass_named} | {f for f, _ in all_feats})

  def rates(txts):
    lbl = dict(zip(ids, word_labels(pm, txts, ids, top)))
    hp = [names(lbl[f], sets[k][v]) for k, v, f in pass_named]
    ha = [names(lbl[f], sets[k][v]) for f, (k, v) in all_feats]
    return hp, ha, lbl

  hp, ha, lbl = rates(texts)
  rng = np.random.default_rng([int(seed), 0x1AB])
  null_p, null_a = [], []
  for _ in range(int(shuffles)):
    perm = rng.permutation(len(texts))
    sp, sa, _ = rates([texts[i] for i in perm])
    null_p.append(_rate(sp))
    null_a.append(_rate(sa))

  def summary(hits, null):
    obs = _rate(hits)
    null = [x for x in null if x is not None]
    return {"n": len(hits), "matches": int(sum(hits)), "rate": obs,
            "shuffled_mean": float(np.mean(null)) if null else None,
            "shuffled_max": float(np.max(null)) if null else None,
            "p": (float((1 + sum(x >= obs for x in null)) / (1 + len(null)))
                  if null and obs is not None else None)}

  per_label = {}
  for k in keys:
    h = [x for (kk, _, _), x in zip(pass_named, hp) if kk == k]
    a_ = [x for (_, (kk, _)), x in zip(all_feats, ha) if kk == k]
    per_label[k] = {"passing": {"n": len(h), "matches": int(sum(h))},
                    "all": {"n": len(a_), "matches": int(sum(a_))},
                    "nameable_values": sum(nameable[k].values()), "values": len(nameable[k])}
  return {
      "labeler": "words", "excluded": EXCLUDED, "top_prompts": int(top), "shuffles": int(shuffles),
      "naming_sets": {k: {v: [" ".join(s) for s in ss] for v, ss in d.items()} for k, d in sets.items()},
      "passing": {**summary(hp, null_p), "passing_values": len(passing),
                  "unnameable_passing": len(passing) - len(pass_named)},
      "all": {**summary(ha, null_a), "labelled_features": int(sum(bool(l) for l in labels_true)),
              "live_features": int(len(alive)),
              "best_value_unnameable": int(sum(bool(l) for l in labels_true)) - len(all_feats)},
      "per_label": per_label,
      "passing_features": [{"label": k, "value": v, "id": int(f), "word_label": lbl[f],
                            "match": bool(x)} for (k, v, f), x in zip(pass_named, hp)],
  }


# --- report --------------------------------------------------------------------------------

SECTION = "scorecard-labels"


def rates_png(res: dict) -> str:
  """Exact-match rate of word labels per set (passing / all) and label, observed vs the
  shuffled-caption baseline (mean)."""
  from musicsae_jax.analysis import report
  plt = report.plots.pyplot()
  fig, ax = plt.subplots(figsize=(4.2, 3.0))
  sets = ("passing", "all")
  obs = [res[s]["rate"] or 0.0 for s in sets]
  nul = [res[s]["shuffled_mean"] or 0.0 for s in sets]
  x = np.arange(len(sets))
  ax.bar(x - 0.2, obs, 0.4, label="word labels")
  ax.bar(x + 0.2, nul, 0.4, label="shuffled captions", color="grey")
  ax.set_xticks(x, [f"{s} (n={res[s]['n']})" for s in sets])
  ax.set_ylabel("exact-match rate")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return report._png(fig)   # pylint: disable=protected-access


def section(res: dict) -> str:
  import html
  from musicsae_jax.analysis import report
  if "skipped" in res:
    body = f"<p>{html.escape(res['skipped'])}</p>"
  else:
    def num(x, nd=2):
      return "–" if x is None else f"{x:.{nd}f}"

    def line(s):
      d = res[s]
      return (f"<b>{s}</b>: {d['matches']}/{d['n']} match ({num(d['rate'])}), shuffled captions "
              f"{num(d['shuffled_mean'])} (max {num(d['shuffled_max'])}), p = {num(d['p'], 3)}.")
    rows = "".join(f"<tr><td>{html.escape(f['label'])}</td><td>{html.escape(f['value'])}</td>"
                   f"<td>{f['id']}</td><td>{html.escape(f['word_label'])}</td>"
                   f"<td>{'yes' if f['match'] else 'no'}</td></tr>" for f in res["passing_features"])
    body = (f"<p>{line('passing')} {line('all')}</p>" + report.img(rates_png(res), "exact-match rates")
            + "<table><tr><th>label</th><th>value</th><th>feature</th><th>word label</th>"
            f"<th>names it</th></tr>{rows}</table>")
  excl = "; ".join(f"{k}: {v}" for k, v in res["excluded"].items())
  note = ("Word labels (the top prompts' caption words) against the exact labels: passing = "
          "each value's best SAE feature that passes the max-null; all = every labelled latent "
          "against its best value, where caption words can name it (naming_sets). Baseline: "
          f"the same labeller on captions shuffled across clips. Excluded: {html.escape(excl)}.")
  return report._section(SECTION, "Organism scorecard: do automatic labels name the right value?",  # pylint: disable=protected-access
                         note, body)
