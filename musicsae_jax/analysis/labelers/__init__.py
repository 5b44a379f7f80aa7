"""Feature labels with scores: `words` (prompt-text lift), `clap` (zero-shot descriptors),
`llm` (explanations from an OpenAI-compatible endpoint), each scored by detection.

The flow (`launch.analyze` runs it; `analysis.labelers` selects the labelers):
1. `pipeline.analyze` writes features.json and, when clap or llm is selected,
   `label_examples.json` (`write_request`): per feature the snippets to label from and the
   held-out ones to score on (`examples.choose`), the shared random snippets, and the texts
   CLAP must embed (the descriptor vocabulary and the word labels).
2. The bridge embeds them with CLAP in a torch process (`python -m bridge.measures.clap_labels
   REPORT_DIR` -> `clap_embeddings.npz` + `.json`; a one-line skip without weights).
3. `write_labels` ranks the vocabulary (`clap.rank`), asks the LLM (`llm`), has the bridge
   embed the LLM labels (`--label_texts`), scores every label by every scorer available
   (CLAP AUROC, LLM balanced accuracy) by detection on held-out snippets (`scoring`), writes
   `labels.json` and puts the `labels` section into report.html.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import numpy as np

from musicsae_jax import config_defaults, files
from musicsae_jax.analysis.labelers import clap, descriptors as desc_lib, examples, llm, scoring
from musicsae_jax.analysis.stats import AnalysisError

LABELERS = ("words", "clap", "llm")
FORMAT_VERSION = 2
REQUEST, EMBEDDINGS, OUTPUT = "label_examples.json", "clap_embeddings", "labels.json"
LABEL_TEXTS, LABEL_TEXT_EMBEDDINGS = "label_texts.json", "clap_label_texts"
DEFAULT_VOCABULARY = os.path.join(os.path.dirname(__file__), "vocabulary.txt")


def resolve(a: dict) -> dict:
  """`analysis.labelers` (checked) and `analysis.labeling` merged with its defaults."""
  names = a.get("labelers", LABELERS)
  names = (names,) if isinstance(names, str) else tuple(names)
  bad = [n for n in names if n not in LABELERS]
  if bad:
    raise AnalysisError(f"analysis.labelers={names}: unknown {bad}; choose from {LABELERS}")
  s = config_defaults.labeling().to_dict()
  given = dict(a.get("labeling") or {})
  unknown = sorted(set(given) - set(s))
  if unknown:
    raise AnalysisError(f"unknown analysis.labeling fields {unknown}; known: {sorted(s)}")
  s.update(given)
  s["labelers"] = names
  modes = (s["llm_detection"],) if isinstance(s["llm_detection"], str) else tuple(s["llm_detection"])
  bad = [m for m in modes if m not in llm.DETECTION_MODES]
  if not modes or bad:
    raise AnalysisError(f"analysis.labeling.llm_detection={modes}: choose one or more of "
                        f"{tuple(llm.DETECTION_MODES)}")
  s["llm_detection"] = modes
  return s


def vocabulary(path: str) -> list[str]:
  """Descriptors of a vocabulary file: one a line, '#' comments, blank lines skipped."""
  path = path or DEFAULT_VOCABULARY
  if not os.path.isfile(path):
    raise AnalysisError(f"analysis.labeling.vocabulary={path!r}: no such file (one descriptor a line)")
  with open(path) as f:
    words = [ln.split("#", 1)[0].strip() for ln in f]
  words = list(dict.fromkeys(w for w in words if w))
  if len(words) < 2:
    raise AnalysisError(f"analysis.labeling.vocabulary={path!r}: needs at least 2 descriptors")
  return words


def write_request(out_dir: str, st, features: list[dict], s: dict, *, frame_rate: float | None,
                  dataset_path: str, site: str, descriptors=None) -> str | None:
  """label_examples.json for `features` (features.json entries): its path, or None when no
  labeler needs it or there are no audio frames to cut (a text site, no saved audio: then
  the file holds {"skipped": reason} for `write_labels`). `descriptors`: (the store's
  audio.descriptors site, its names): each snippet's z-scores go into the request for the
  LLM (labelers.descriptors)."""
  path = os.path.join(out_dir, REQUEST)
  for stale in (path, os.path.join(out_dir, EMBEDDINGS + ".json"),
                os.path.join(out_dir, LABEL_TEXT_EMBEDDINGS + ".json")):
    if os.path.exists(stale):
      os.remove(stale)
  if "clap" not in s["labelers"] and "llm" not in s["labelers"]:
    return None
  audio_dir = os.path.join(dataset_path, "audio")
  why = (f"site {site!r} has no audio frames (labels from audio need an lm.layer.* site)"
         if not site.startswith("lm.layer.") or not frame_rate else
         f"{audio_dir} not found (extract with --config.extract.save_audio=True)"
         if not os.path.isdir(audio_dir) else None)
  if why:
    files.write_json(path, {"skipped": why}, indent=None)
    return None
  feats = features[: int(s["max_features"])]
  req = examples.choose(st, [f["id"] for f in feats], frame_rate=frame_rate,
                        examples=int(s["examples"]), contrast=int(s["contrast"]),
                        random_snippets=int(s["random_snippets"]),
                        snippet_seconds=float(s["snippet_seconds"]), seed=int(s["seed"]))
  if descriptors is not None:
    source, names = descriptors
    z = desc_lib.zscores(desc_lib.snippet_means(source, req["snippets"],
                                                getattr(st, "row_span", None)), req["random"])
    req["descriptors"] = {"names": list(names), "reference": "z-score of the snippet's mean "
                          "over frames against the shared random snippets",
                          "z": [[None if not np.isfinite(v) else round(float(v), 3) for v in r]
                                for r in z]}
  vocab = vocabulary(s["vocabulary"])
  word_labels = sorted({f["heuristic_label"] for f in feats if f.get("heuristic_label")})
  req.update({"dataset_path": dataset_path, "audio_dir": audio_dir,
              "vocabulary": {"path": s["vocabulary"] or DEFAULT_VOCABULARY,
                                                     "words": vocab},
              "clap": {"model": s["clap"] if "clap" in s["labelers"] else "",
                       "template": s["template"], "texts": vocab + word_labels}})
  files.write_json(path, req, indent=None)
  return path


def request_digest(out_dir: str) -> str:
  """SHA-256 of label_examples.json: the embeddings name the request they answer."""
  with open(os.path.join(out_dir, REQUEST), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _load_embeddings(out_dir: str, req: dict) -> tuple[dict | None, str]:
  meta_path = os.path.join(out_dir, EMBEDDINGS + ".json")
  if not req["clap"]["model"]:
    return None, "not selected (analysis.labelers)"
  if not os.path.exists(meta_path):
    return None, f"no {EMBEDDINGS}.json (run python -m bridge.measures.clap_labels {out_dir})"
  with open(meta_path) as f:
    meta = json.load(f)
  if "skipped" in meta:
    return None, meta["skipped"]
  with np.load(os.path.join(out_dir, EMBEDDINGS + ".npz")) as z:
    emb = {"audio": z["audio"].astype(np.float64), "text": z["text"].astype(np.float64)}
  if meta.get("request_sha256") != request_digest(out_dir):
    return None, f"{EMBEDDINGS}.npz is older than {REQUEST} (rerun python -m bridge.measures.clap_labels)"
  texts = req["clap"]["texts"]
  if emb["audio"].shape[0] != len(req["snippets"]) or emb["text"].shape[0] != len(texts):
    return None, f"{EMBEDDINGS}.npz does not match {REQUEST} (rerun python -m bridge.measures.clap_labels)"
  emb["text_index"] = {t: i for i, t in enumerate(texts)}
  emb["model"] = meta.get("model", "")
  return emb, emb["model"]


def _label_vectors(out_dir: str, req: dict, emb: dict, texts: list[str],
                   embed_label_texts: Callable[[str], None] | None) -> tuple[dict, str]:
  """CLAP text vectors of `texts` ({text: vector}) and, when some are missing, why.

  Texts outside the request (LLM labels, known only after the CLAP pass) are listed in
  label_texts.json and embedded by `embed_label_texts(out_dir)` (launch.analyze runs
  `python -m bridge.measures.clap_labels REPORT_DIR --label_texts`); embeddings already on disk for
  the same request and model are reused."""
  vecs = {t: emb["text"][emb["text_index"][t]] for t in texts if t in emb["text_index"]}
  missing = sorted(set(texts) - set(vecs))
  if not missing:
    return vecs, ""
  meta_path = os.path.join(out_dir, LABEL_TEXT_EMBEDDINGS + ".json")
  digest = request_digest(out_dir)

  def load() -> tuple[dict, str]:
    if not os.path.exists(meta_path):
      return {}, f"no {LABEL_TEXT_EMBEDDINGS}.json (python -m bridge.measures.clap_labels {out_dir} --label_texts)"
    with open(meta_path) as f:
      meta = json.load(f)
    if "skipped" in meta:
      return {}, meta["skipped"]
    if meta.get("request_sha256") != digest or meta.get("model") != emb["model"]:
      return {}, f"{LABEL_TEXT_EMBEDDINGS}.npz answers another {REQUEST} or model"
    with np.load(os.path.join(out_dir, LABEL_TEXT_EMBEDDINGS + ".npz")) as z:
      text = z["text"].astype(np.float64)
    got = {t: text[i] for i, t in enumerate(meta["texts"])}
    return got, ("" if all(t in got for t in missing) else
                 f"{LABEL_TEXT_EMBEDDINGS}.npz lacks some labels "
                 f"(python -m bridge.measures.clap_labels {out_dir} --label_texts)")

  got, why = load()
  if why:
    files.write_json(os.path.join(out_dir, LABEL_TEXTS), {"texts": missing})
    if embed_label_texts is not None:
      embed_label_texts(out_dir)
      got, why = load()
  vecs.update({t: got[t] for t in missing if t in got})
  return vecs, why


def write_labels(out_dir: str, s: dict, workdir: str, log: Callable[[str], None] = print,
                 embed_label_texts: Callable[[str], None] | None = None) -> str:
  """labels.json (and the report section) from features.json, label_examples.json and the
  CLAP embeddings; returns the path. Every label is scored by every scorer available (CLAP:
  AUROC, LLM: balanced accuracy); `embed_label_texts(out_dir)` embeds label texts CLAP has
  not seen (see `_label_vectors`)."""
  with open(os.path.join(out_dir, "features.json")) as f:
    feats_json = json.load(f)
  features = feats_json["features"][: int(s["max_features"])]
  req, no_req = None, "not selected (analysis.labelers)"
  if os.path.exists(os.path.join(out_dir, REQUEST)):
    with open(os.path.join(out_dir, REQUEST)) as f:
      req = json.load(f)
    if "skipped" in req:
      req, no_req = None, req["skipped"]
  status, emb, client = {}, None, None
  status["words"] = ({"status": "ok", "what": "words over-represented in the top prompts' text "
                     "(features.json heuristic_label)"} if "words" in s["labelers"]
                     else {"skipped": "not selected (analysis.labelers)"})
  if "clap" in s["labelers"] and req is not None:
    emb, what = _load_embeddings(out_dir, req)
    status["clap"] = {"status": "ok", "model": what} if emb else {"skipped": what}
  else:
    status["clap"] = {"skipped": no_req if "clap" in s["labelers"] else "not selected (analysis.labelers)"}
  if "llm" in s["labelers"] and req is not None:
    client, what = llm.Client.from_env(os.path.join(workdir, "cache", "llm"),
                                       timeout=s["llm_timeout"], retries=s["llm_retries"],
                                       backoff=s["llm_backoff"])
    status["llm"] = {"status": "ok", "model": what} if client else {"skipped": what}
  else:
    status["llm"] = {"skipped": no_req if "llm" in s["labelers"] else "not selected (analysis.labelers)"}
  for name, st in status.items():
    if "skipped" in st and name in s["labelers"]:
      log(f"labels: {name} skipped: {st['skipped']}")

  vocab = req["vocabulary"]["words"] if req else []
  per_req = {e["id"]: e for e in req["features"]} if req else {}
  snip_words = None
  if emb:
    vec = lambda t: emb["text"][emb["text_index"][t]]          # noqa: E731
    vocab_text = np.stack([vec(w) for w in vocab])
    snip_words = clap.snippet_words(emb["audio"], req["random"], vocab_text, vocab)
  audio = (llm.SnippetAudio(req["audio_dir"], req["frame_rate"], req["snippets"])
           if client and s["llm_audio"] else None)

  # 1. the labels
  todo = []
  for feat in features:
    ex = per_req.get(feat["id"])
    entry = {"id": feat["id"], "labels": []}
    idx = (lambda k, ex=ex: [e["snippet"] for e in ex[k]])     # noqa: E731
    if "words" in s["labelers"] and feat.get("heuristic_label"):
      entry["labels"].append({"source": "words", "label": feat["heuristic_label"]})
    if emb and ex:
      cands = clap.rank(emb["audio"], idx("explain"), req["random"], vocab_text, vocab,
                        int(s["top_words"]))
      entry["clap_candidates"] = cands
      if cands:
        entry["labels"].append({"source": "clap", "label": cands[0]["word"],
                                "margin": cands[0]["margin"], "z": cands[0]["z"]})
    if client and ex and ex["explain"]:
      entry["labels"].append({"source": "llm", "label": _explain(
          client, feat, ex, entry, req, feats_json, snip_words, audio)})
    todo.append((feat, ex, entry))

  # 2. CLAP text vectors of every label (LLM labels: a second bridge pass)
  rng = np.random.default_rng(int(s["seed"]))
  controls = {f["id"]: (vocab[int(rng.integers(len(vocab)))] if vocab and per_req.get(f["id"])
                        else None) for f in features}
  vecs, no_vec = {}, ""
  if emb:
    texts = [lab_["label"] for _, _, e in todo for lab_ in e["labels"]]
    vecs, no_vec = _label_vectors(out_dir, req, emb, texts + [w for w in controls.values() if w],
                                  embed_label_texts)
    if no_vec:
      log(f"labels: CLAP scores of some labels skipped: {no_vec}")

  # 3. detection: every label by every scorer, and a random vocabulary word as control
  scorers = (["clap"] if emb else []) + ([f"llm_{m}" for m in s["llm_detection"]] if client else [])
  if client and "blind" in s["llm_detection"] and not snip_words:
    log("labels: llm_blind sees no CLAP descriptors (no CLAP embeddings)" +
        ("" if req and req.get("descriptors") else
         " and no acoustic descriptors (no audio.descriptors site): expect chance"))
  control = {sc: [] for sc in scorers}
  out_feats = []
  for feat, ex, entry in todo:
    held = _held_out(ex, feat["id"], s) if ex else []
    labs = entry["labels"] + ([{"source": "control_random_word", "label": controls[feat["id"]]}]
                              if ex and controls[feat["id"]] else [])
    for lab_ in labs:
      lab_["scores"], lab_["detection"] = {}, {}
      for sc in (scorers if ex else []):
        if sc == "clap":
          v = vecs.get(lab_["label"])
          det = (clap.detection(emb["audio"], v, [e["snippet"] for e in ex["heldout_pos"]],
                                [e["snippet"] for e in ex["heldout_neg"]])
                 if v is not None else {"scorer": "clap", "skipped": no_vec})
          score = det.get("auroc")
        else:
          det = _llm_detect(client, lab_["label"], held, ex, req, feats_json, snip_words,
                            mode=sc[len("llm_"):])
          score = det.get("balanced_accuracy")
        lab_["scores"][sc], lab_["detection"][sc] = score, det
    if ex and controls[feat["id"]]:
      ctrl = labs[-1]
      entry["control"] = {"label": ctrl["label"], "scores": ctrl["scores"]}
      for sc in scorers:
        control[sc].append(ctrl["scores"].get(sc))
    out_feats.append(entry)

  dist = {}
  for sc in scorers:
    d = {}
    for src in LABELERS:
      scores = [l_["scores"].get(sc) for e in out_feats for l_ in e["labels"] if l_["source"] == src]
      if scores:
        d[src] = scoring.distribution(scores)
    if control[sc]:
      d["control_random_word"] = scoring.distribution(control[sc])
    dist[sc] = d
  out = {"format_version": FORMAT_VERSION,
         **{k: feats_json.get(k) for k in ("run", "step", "dataset", "site")},
         "labelers": status, "settings": {k: v for k, v in s.items()},
         "vocabulary": ({"path": req["vocabulary"]["path"], "size": len(vocab)} if req else None),
         "scorers": {"clap": "CLAP detection AUROC on held-out snippets (label text vs audio)",
                     **{f"llm_{m}": "LLM detection balanced accuracy on held-out snippets; "
                                    "the LLM saw " + _saw(req or {}, snip_words, m)[4:]
                        for m in llm.DETECTION_MODES if m in s["llm_detection"]}},
         "detection": dist, "features": out_feats}
  if client:
    out["llm_requests"] = {"sent": client.requests, "cached": client.cache_hits}
  path = os.path.join(out_dir, OUTPUT)
  files.write_json(path, out)
  for sc, d_sc in dist.items():
    for src, d in d_sc.items():
      if d.get("n"):
        log(f"labels {src} scored by {sc}: detection median {d['quantiles']['0.5']:.3f} over "
            f"{d['n']} features ({100 * d['above_0.5']:.0f}% above 0.5)")
  from musicsae_jax.analysis import browser, report
  report.update_labels(out_dir)
  browser.update_labels(out_dir, out)
  return path


def _describer(ex, req, feats_json, snip_words, with_text: bool = True):
  prompts = _prompts(feats_json, req)
  fr, snips = req["frame_rate"], req["snippets"]
  d = req.get("descriptors")
  sounds = (lambda i: desc_lib.summary(  # noqa: E731
      [np.nan if v is None else v for v in d["z"][i]], d["names"])) if d else (lambda i: None)
  return lambda e, act: llm.describe(e, prompts, fr, snips[e["snippet"]],  # noqa: E731
                                     snip_words[e["snippet"]] if snip_words else None, act,
                                     with_text=with_text, sounds=sounds(e["snippet"]))


def _explain(client, feat, ex, entry, req, feats_json, snip_words, audio) -> str:
  """The LLM's explanation from the explain/contrast snippets (and their audio, if asked)."""
  desc = _describer(ex, req, feats_json, snip_words)
  context = [f"Firing rate {feat.get('firing_rate', 0):.4f} of frames."]
  if feat.get("heuristic_label"):
    context.append(f"Words over-represented in its top prompts: {feat['heuristic_label']}.")
  if entry.get("clap_candidates"):
    context.append("CLAP descriptors closest to its snippets (margin over random audio): " +
                   ", ".join(f"{c['word']} ({c['margin']:+.3f})" for c in entry["clap_candidates"]))
  if feat.get("acoustic"):
    context.append("Correlation with acoustic descriptors over frames: " +
                   ", ".join(f"{c['descriptor']} r={c['r']:+.2f}" for c in feat["acoustic"]))
  clips = None
  if audio is not None:
    clips = ([audio.wav_base64(e["snippet"]) for e in ex["explain"]],
             [audio.wav_base64(e["snippet"]) for e in ex["contrast"]])
  return llm.clean_label(client.chat(llm.explain_messages(
      feat, [desc(e, True) for e in ex["explain"]], [desc(e, True) for e in ex["contrast"]],
      context, audio=clips)))


def _held_out(ex: dict, feature_id: int, s: dict) -> list[tuple[dict, int]]:
  """Held-out (example, truth) pairs in a fixed shuffled order: the same for every label."""
  held = [(e, 1) for e in ex["heldout_pos"]] + [(e, 0) for e in ex["heldout_neg"]]
  order = np.random.default_rng([int(s["seed"]), feature_id]).permutation(len(held))
  return [held[i] for i in order]


def _llm_detect(client, label, held, ex, req, feats_json, snip_words, mode: str = "blind") -> dict:
  """Can the LLM tell the held-out activating snippets from the rest given `label` and what
  `mode` shows of each snippet (llm.DETECTION_MODES; blind: no caption, no labels)?"""
  det = {"scorer": f"llm_{mode}", "saw": _saw(req, snip_words, mode),
         "n_pos": len(ex["heldout_pos"]), "n_neg": len(ex["heldout_neg"])}
  if not held:
    return det
  desc = _describer(ex, req, feats_json, snip_words, with_text=mode != "blind")
  reply = client.chat(llm.detect_messages(label, [desc(e, False) for e, _ in held]))
  answers = llm.parse_answers(reply, len(held))
  truth = [t for _, t in held]
  if answers is None:
    det["error"] = f"no list of {len(held)} 0/1 answers in the reply: {reply[:120]!r}"
  else:
    det["balanced_accuracy"] = scoring.balanced_accuracy(truth, answers)
    det["auroc"] = scoring.auroc([a for a, t in zip(answers, truth) if t],
                                 [a for a, t in zip(answers, truth) if not t])
  return det


def _saw(req: dict, snip_words, mode: str) -> str:
  """What the detecting LLM saw of each snippet, in words (labels.json `saw`)."""
  got = ["time window"] + (["acoustic descriptors (z vs random snippets)"]
                           if req.get("descriptors") else [])
  got += ["CLAP's closest vocabulary descriptors"] if snip_words else []
  return "the label; per snippet: " + ", ".join(got) + "; " + llm.DETECTION_MODES[mode]


_PROMPTS_CACHE: dict = {}


def _prompts(feats_json: dict, req: dict) -> list[dict]:
  """The dataset's prompt table."""
  path = os.path.join(req["dataset_path"], "prompts.jsonl")
  if path not in _PROMPTS_CACHE:
    with open(path) as f:
      _PROMPTS_CACHE[path] = [json.loads(ln) for ln in f if ln.strip()]
  return _PROMPTS_CACHE[path]
