"""The `launch.probe_layers` stage: concepts across layers from a workspace.

Any store whose prompts.jsonl carries labels, plus the SAE of a trained run when there is
one: the probes and the table are musicsae_jax/analysis/layers.py's; this module adds
the run's SAE latents and best features (pipeline.py's selection), so that layers.py stays
free of the analysis pipeline (which itself uses layers.py for its report section).
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from musicsae_jax import store as store_lib
from musicsae_jax.analysis import labels as lab, layers, pipeline, stats
from musicsae_jax.analysis.stats import AnalysisError


def probe_layers(config, workdir: str, *, label_keys=(), sites=(), run: str | None = None,
                 log: Callable[[str], None] = print) -> dict:
  """Probe config.dataset's layers for every label (or `label_keys`) and write
  reports/<report name>/probes_by_layer.json + the `layers` section of its report.html.

  run: a trained run (runs/<run>) whose SAE latents are probed and whose best feature per
  label value is listed; None = config.run when runs/<config.run> exists; "" = none. The
  report goes to reports/<run or config.run>/.
  """
  a = pipeline.resolve(config)
  ds_path = os.path.join(workdir, "activations", a["dataset"])
  if not store_lib.exists(ds_path):
    raise AnalysisError(f"{ds_path}: no activation dataset {a['dataset']!r} (run launch.extract)")
  ds = store_lib.open_dataset(ds_path)
  if run is None:
    run = a["run"] if os.path.exists(os.path.join(workdir, "runs", a["run"] or "", "config.json")) else ""
  folds = int(a["probe_folds"])
  extra, sae_site, pm, has_rows = [], None, None, None
  if run:
    run_cfg, norm, params, step = pipeline.load_run(workdir, run, a["step"])
    sae_site = a["site"] or run_cfg.get("train", {}).get("site")
    if sae_site not in ds.sites:
      raise AnalysisError(f"run {run!r} was trained on {sae_site!r}, which is not in {ds_path}; "
                          f"store sites: {sorted(ds.sites)}")
    enc = stats.Encoder(stats.sae_from_params(params, run_cfg.get("sae")),
                        float(norm.get("scale", 1.0)), int(a["batch_rows"]))
    st = stats.feature_stats(ds.site(sae_site), enc, len(ds.prompts), top_n=1)
    pm, has_rows = st.prompt_mean, st.prompt_count > 0
    extra = [(f"sae:{sae_site}", pm, has_rows)]
    log(f"probe_layers: SAE of run {run} (step {step}) on {sae_site}")
  results, skipped = layers.probe_store(ds, label_keys=label_keys, sites=sites, folds=folds,
                                 l2=float(a["probe_l2"]), steps=int(a["probe_steps"]),
                                 shuffles=int(a["probe_shuffles"]), seed=int(a["seed"]),
                                 extra_inputs=extra, log=log)
  feats, rand = None, None
  if run:
    feats = {}
    labels = {}
    for key in results:
      values, y = lab.label_vector(ds.prompts, key)
      labels[key] = (values, np.where(has_rows, y, -1))
    x_site, _ = stats.prompt_means(ds.site(sae_site), len(ds.prompts))
    vocab = np.array([p.get("split") == pipeline.HELDOUT_VOCAB for p in ds.prompts], bool)
    splits = {}
    for key in results:
      values, y = lab.label_vector(ds.prompts, key)
      v = pipeline._validate_label(pm, np.where(has_rows, y, -1), values, a, vocab)  # pylint: disable=protected-access
      splits[key] = v["masks"]
      best = {}
      for k, val in enumerate(values):
        if v["tops"][val]:
          f = v["tops"][val][0]
          best[val] = {"id": f, **pipeline._feature_scores(v, k, f, float(a["alpha"]))}  # pylint: disable=protected-access
      feats[key] = best
    rand = layers.random_direction_features(x_site, labels, pm.shape[1], a, splits=splits)
  settings = {k: a[k] for k in ("probe_folds", "probe_l2", "probe_steps", "probe_shuffles", "seed")}
  tab = layers.table(results, feats, dataset=a["dataset"], run=run or None, settings=settings,
              skipped=skipped, random_directions=rand)
  return layers.write(tab, os.path.join(workdir, "reports", run or a["run"]))
