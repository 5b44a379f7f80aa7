"""Feature labelers: CLAP ranking on a planted association, detection scores against
sklearn, the LLM client against a local stub server (payload, retry, cache, every label
scored by both scorers, snippets as audio)."""
import base64
import http.server
import io
import json
import os
import threading

import numpy as np
import pytest

from musicsae_jax.analysis import labelers
from musicsae_jax.analysis.labelers import llm, scoring

E, FRAMES, P = 16, 100, 40
VOCAB = ["guitar", "drums", "piano", "calm", "fast", "noise"]
FIRES = {0: range(0, 10), 1: range(10, 20)}            # feature -> prompts where it fires
TEXTS = ["guitar tune"] * 10 + ["drum beat"] * 10 + ["quiet song"] * 20


class FakeStats:
  """What examples.choose reads from FeatureStats: counts, prompt maxima, top frames."""

  def __init__(self, m=3):
    self.prompt_count = np.full(P, FRAMES)
    self.prompt_max = np.zeros((P, m), np.float32)
    for f, ps in FIRES.items():
      self.prompt_max[list(ps), f] = 1.0 + np.arange(len(ps))[::-1]

  def top_frames(self, f):
    return [(float(self.prompt_max[p, f]), p, 37) for p in np.argsort(-self.prompt_max[:, f])
            if self.prompt_max[p, f] > 0]


class FakeDescriptors:
  """What descriptors.snippet_means reads from the store's audio.descriptors site: one row
  per (prompt, frame), shuffled; the drum prompts (feature 1) are 6 dB louder."""

  def __init__(self, seed=0):
    rng = np.random.default_rng(seed)
    self.index = np.stack(np.meshgrid(np.arange(P), np.arange(FRAMES), indexing="ij"), -1).reshape(-1, 2)
    self.index = self.index[rng.permutation(len(self.index))]
    self.x = rng.normal(size=(len(self.index), 2))
    self.x[np.isin(self.index[:, 0], list(FIRES[1])), 0] += 6.0
    self.d = 2

  def read_index(self, rows=None):
    return self.index if rows is None else self.index[rows]

  def read_rows(self, rows):
    return self.x[rows]


def _workspace(tmp_path, labelers_=("words", "clap"), descriptors=None, **labeling):
  ds = tmp_path / "activations" / "toy"
  (ds / "audio").mkdir(parents=True)
  with open(ds / "prompts.jsonl", "w") as f:
    for i, t in enumerate(TEXTS):
      f.write(json.dumps({"prompt_id": i, "text": t, "labels": {}, "seed": 0}) + "\n")
  (tmp_path / "vocab.txt").write_text("# test vocabulary\n" + "\n".join(VOCAB) + "\n")
  out = tmp_path / "reports" / "toy"
  out.mkdir(parents=True)
  feats = [{"id": f, "firing_rate": 0.1, "heuristic_label": TEXTS[FIRES[f][0]],
            "acoustic": [{"descriptor": "rms_db", "r": 0.5}]} for f in FIRES]
  with open(out / "features.json", "w") as f:
    json.dump({"run": "toy", "step": 1, "features": feats}, f)
  s = labelers.resolve({"labelers": labelers_, "labeling": {
      "clap": "test", "vocabulary": str(tmp_path / "vocab.txt"), "examples": 4, "contrast": 4,
      "random_snippets": 16, "llm_backoff": 0.01, "llm_retries": 2, **labeling}})
  labelers.write_request(str(out), FakeStats(), feats, s, frame_rate=50.0,
                         dataset_path=str(ds), site="lm.layer.3", descriptors=descriptors)
  return out, s


def _plant_embeddings(out):
  """Audio of the prompts where feature 0 (1) fires lies near 'guitar' ('drums')."""
  req = json.load(open(out / "label_examples.json"))
  rng = np.random.default_rng(0)
  unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)   # noqa: E731
  text = unit(rng.normal(size=(len(req["clap"]["texts"]), E)))
  planted = {p: text[VOCAB.index(w)] for f, w in ((0, "guitar"), (1, "drums")) for p in FIRES[f]}
  audio = unit(np.stack([planted.get(pid, 0) + 0.7 * unit(rng.normal(size=E))
                         for pid, _, _ in req["snippets"]]))
  np.savez(out / "clap_embeddings.npz", audio=audio, text=text)
  json.dump({"model": "planted", "request_sha256": labelers.request_digest(str(out))},
            open(out / "clap_embeddings.json", "w"))
  return text


def _plant_label_texts(out, text, calls):
  """What `bridge.measures.clap_labels --label_texts` writes: a label naming guitar (drums) lies on
  'guitar' ('drums'), any other on a random direction."""
  calls.append(json.load(open(out / "label_texts.json"))["texts"])
  rng = np.random.default_rng(1)
  vec = lambda t: next((text[VOCAB.index(w)] for w in ("guitar", "drums") if w in t),  # noqa: E731
                       None)
  rows = [vec(t) if vec(t) is not None else rng.normal(size=E) for t in calls[-1]]
  np.savez(out / "clap_label_texts.npz", text=np.stack(rows) / np.linalg.norm(rows, axis=1)[:, None])
  json.dump({"model": "planted", "texts": calls[-1],
             "request_sha256": labelers.request_digest(str(out))},
            open(out / "clap_label_texts.json", "w"))


def test_clap_ranking_recovers_a_planted_association(tmp_path):
  out, s = _workspace(tmp_path)
  req = json.load(open(out / "label_examples.json"))
  f0 = req["features"][0]
  assert {e["prompt_id"] for e in f0["explain"]}.isdisjoint(e["prompt_id"] for e in f0["heldout_pos"])
  assert not {e["prompt_id"] for e in f0["heldout_neg"] + f0["contrast"]} & set(FIRES[0])  # silent
  assert req["snippets"][f0["explain"][0]["snippet"]] == [0, 0, FRAMES]  # strongest; 2 s = the whole clip
  _plant_embeddings(out)
  labelers.write_labels(str(out), s, str(tmp_path), log=lambda m: None)
  res = json.load(open(out / "labels.json"))
  assert res["labelers"]["clap"] == {"status": "ok", "model": "planted"}
  for feat, word in zip(res["features"], ("guitar", "drums")):
    clap = next(lab for lab in feat["labels"] if lab["source"] == "clap")
    assert clap["label"] == word and clap["margin"] > 0.3 and clap["z"] > 2  # random audio is 1/4 planted
    assert clap["scores"] == {"clap": clap["detection"]["clap"]["auroc"]} == {"clap": 1.0}  # held out
    assert [lab["source"] for lab in feat["labels"]] == ["words", "clap"]
    assert set(feat["control"]["scores"]) == {"clap"}
  assert res["detection"]["clap"]["clap"]["n"] == 2 and res["detection"]["clap"]["words"]["n"] == 2
  assert res["detection"]["clap"]["control_random_word"]["n"] == 2 and not any(k.startswith("llm") for k in res["detection"])
  page = open(out / "report.html").read()
  assert '<section id="labels">' in page and "guitar" in page
  labelers.write_labels(str(out), s, str(tmp_path), log=lambda m: None)    # replaced, not added
  assert open(out / "report.html").read().count('<section id="labels">') == 1


def test_detection_scores_equal_sklearn():
  metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(1)
  for n_pos, n_neg in ((5, 7), (30, 12)):
    pos, neg = rng.integers(0, 4, n_pos) + 0.5, rng.integers(0, 4, n_neg).astype(float)  # ties
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    assert scoring.auroc(pos, neg) == pytest.approx(metrics.roc_auc_score(y, np.r_[pos, neg]), abs=1e-12)
    pred = rng.integers(0, 2, n_pos + n_neg)
    assert scoring.balanced_accuracy(y, pred) == pytest.approx(
        metrics.balanced_accuracy_score(y, pred), abs=1e-12)
  assert scoring.auroc([], [1.0]) is None and scoring.balanced_accuracy([1, 1], [0, 1]) is None
  d = scoring.distribution([0.5, 1.0, None, 0.75])
  assert d["n"] == 3 and d["quantiles"]["0.5"] == 0.75 and d["above_0.5"] == pytest.approx(2 / 3)


def _user_text(body):
  content = body["messages"][-1]["content"]
  return content if isinstance(content, str) else "\n".join(
      p["text"] for p in content if p["type"] == "text")


def _seen_words(line):
  """What a detect line offers the stub: the caption's words, else CLAP's descriptors."""
  if 'caption "' in line:
    return line.split('caption "', 1)[1].split('"', 1)[0].split()
  return line.split("CLAP hears: ", 1)[1].split(", ") if "CLAP hears: " in line else []


class _Stub(http.server.BaseHTTPRequestHandler):
  """An OpenAI-compatible chat endpoint: fails the first request with 500, then answers
  explanations with 'guitar sounds' and detection with 1 for snippets whose caption holds a
  word of the label (without a caption: whose CLAP descriptors do)."""
  seen: list = []
  fail_next = True

  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
    if type(self).fail_next:
      type(self).fail_next = False
      self.send_response(500)
      self.end_headers()
      return
    user = _user_text(body)
    if "JSON list" in user:
      words = user.split('described as: "', 1)[1].split('"', 1)[0].split()
      lines = [ln for ln in user.splitlines() if ln[:1].isdigit()]
      content = json.dumps([int(any(w in _seen_words(ln) for w in words)) for ln in lines])
    else:
      content = '"guitar sounds"\n'
    reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(reply)))
    self.end_headers()
    self.wfile.write(reply)

  def log_message(self, *args):
    pass


@pytest.fixture
def stub_server():
  _Stub.seen, _Stub.fail_next = [], True
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
  thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}/v1"
  server.shutdown()
  server.server_close()


def _detected(seen):
  """{label: number of detect requests} over the stub's requests."""
  labels = [_user_text(r["body"]).split('described as: "', 1)[1].split('"', 1)[0]
            for r in seen if "JSON list" in _user_text(r["body"])]
  return {lab: labels.count(lab) for lab in labels}


def test_llm_labels_through_a_stub_server_retry_and_cache(tmp_path, stub_server, monkeypatch):
  monkeypatch.setenv(llm.ENV_URL, stub_server)
  monkeypatch.setenv(llm.ENV_MODEL, "stub-model")
  monkeypatch.setenv(llm.ENV_KEY, "secret")
  out, s = _workspace(tmp_path, ("words", "clap", "llm"), llm_detection=("blind", "with_captions"))
  text, calls = _plant_embeddings(out), []
  labelers.write_labels(str(out), s, str(tmp_path), log=lambda m: None,
                        embed_label_texts=lambda d: _plant_label_texts(out, text, calls))
  seen = list(_Stub.seen)
  assert seen[0]["body"] == seen[1]["body"]                           # the 500 was retried
  first = seen[1]
  assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer secret"
  assert first["body"]["model"] == "stub-model" and first["body"]["temperature"] == 0.0
  user = first["body"]["messages"][-1]["content"]
  assert "most active" in user and 'caption "guitar tune"' in user and "activation" in user
  assert "silent or weakest" in user and 'caption "quiet song"' in user          # contrast examples
  assert "CLAP descriptors closest" in user and "guitar (+" in user   # CLAP top words
  assert "rms_db r=+0.50" in user
  detects = [_user_text(r["body"]) for r in seen if "JSON list" in _user_text(r["body"])]
  assert not any("activation" in d for d in detects)                  # held out, values hidden
  blind = [d for d in detects if 'caption "' not in d]                # blind: no caption ...
  assert blind and all("labels " not in d and "CLAP hears: " in d for d in blind)   # ... no labels
  assert len(blind) == len(detects) // 2                              # one of each mode per label
  # the LLM scores every source's label (identical requests are answered from the cache)
  assert {"guitar tune", "drum beat", "guitar", "drums", "guitar sounds"} <= set(_detected(seen))
  bodies = [json.dumps(r["body"], sort_keys=True) for r in seen[1:]]
  assert len(set(bodies)) == len(bodies)                              # each request sent once
  assert calls == [["guitar sounds"]]                                 # CLAP embeds the LLM label
  res = json.load(open(out / "labels.json"))
  assert res["labelers"]["llm"]["status"] == "ok"
  by = {(f["id"], lab["source"]): lab for f in res["features"] for lab in f["labels"]}
  assert by[0, "llm"]["label"] == "guitar sounds"
  assert set(by[0, "llm"]["scores"]) == {"clap", "llm_blind", "llm_with_captions"}
  assert by[0, "llm"]["scores"]["clap"] == by[0, "llm"]["scores"]["llm_with_captions"] == 1.0
  assert by[1, "llm"]["scores"]["llm_with_captions"] == 0.5           # 'guitar' never in drums
  assert "no caption, no labels" in by[0, "llm"]["detection"]["llm_blind"]["saw"]
  assert "no caption, no labels" in res["scorers"]["llm_blind"]
  assert "caption and prompt labels" in res["scorers"]["llm_with_captions"]
  # the blind score, recomputed here: a held-out snippet counts as detected when the label
  # shares a word with its 3 descriptors most above their similarity to the random snippets
  req, audio = json.load(open(out / "label_examples.json")), np.load(out / "clap_embeddings.npz")["audio"]
  rel = audio @ text[:len(VOCAB)].T - (audio[req["random"]] @ text[:len(VOCAB)].T).mean(0)
  top3 = [{VOCAB[j] for j in np.argsort(-r, kind="stable")[:3]} for r in rel]
  for f in (0, 1):
    ex = req["features"][f]
    hit = lambda e: bool(top3[e["snippet"]] & {"guitar", "sounds"})   # noqa: E731
    ref = scoring.balanced_accuracy([1] * len(ex["heldout_pos"]) + [0] * len(ex["heldout_neg"]),
                                    [hit(e) for e in ex["heldout_pos"] + ex["heldout_neg"]])
    assert by[f, "llm"]["scores"]["llm_blind"] == ref
  f1 = req["features"][1]
  assert by[1, "llm"]["scores"]["clap"] == scoring.auroc(             # its text lies on 'guitar'
      audio[[e["snippet"] for e in f1["heldout_pos"]]] @ text[VOCAB.index("guitar")],
      audio[[e["snippet"] for e in f1["heldout_neg"]]] @ text[VOCAB.index("guitar")])
  assert by[0, "words"]["scores"]["clap"] == by[0, "words"]["detection"]["clap"]["auroc"]
  assert by[0, "words"]["scores"]["llm_with_captions"] == 1.0
  assert by[1, "clap"]["scores"]["clap"] == 1.0
  assert by[1, "clap"]["scores"]["llm_with_captions"] == 0.5         # 'drums' is not in 'drum beat'
  assert by[1, "clap"]["detection"]["llm_blind"]["n_pos"] == 4
  for scorer in ("clap", "llm_blind", "llm_with_captions"):
    assert set(res["detection"][scorer]) == {"words", "clap", "llm", "control_random_word"}
    assert all(d["n"] == 2 for d in res["detection"][scorer].values())
  sent = len(seen)
  assert res["llm_requests"]["sent"] == sent and res["llm_requests"]["cached"] >= 0
  calls_made = sent - 1 + res["llm_requests"]["cached"]               # chat() calls
  page = open(out / "report.html").read()
  assert "<th>scorer</th>" in page and "llm_with_captions 1.00" in page and "clap 1.00" in page
  assert "llm_blind" in page
  labelers.write_labels(str(out), s, str(tmp_path), log=lambda m: None,   # rerun: from the cache
                        embed_label_texts=lambda d: _plant_label_texts(out, text, calls))
  assert len(_Stub.seen) == sent and len(calls) == 1                  # nothing sent, nothing embedded
  assert json.load(open(out / "labels.json"))["llm_requests"] == {"sent": 0, "cached": calls_made}
  assert json.load(open(out / "labels.json"))["features"] == res["features"]
  os.remove(out / "clap_label_texts.json")                            # no second CLAP pass:
  lines = []
  labelers.write_labels(str(out), s, str(tmp_path), log=lines.append)  # LLM labels lack a CLAP score
  lab = next(lab for lab in json.load(open(out / "labels.json"))["features"][0]["labels"]
             if lab["source"] == "llm")
  assert lab["scores"]["clap"] is None and lab["scores"]["llm_with_captions"] == 1.0
  assert "--label_texts" in lab["detection"]["clap"]["skipped"]
  assert any("--label_texts" in ln for ln in lines) and (out / "label_texts.json").exists()


def test_llm_explain_request_carries_the_snippets_as_wav(tmp_path, stub_server, monkeypatch):
  sf = pytest.importorskip("soundfile")
  monkeypatch.setenv(llm.ENV_URL, stub_server)
  monkeypatch.setenv(llm.ENV_MODEL, "stub-model")
  out, s = _workspace(tmp_path, ("llm",), llm_audio=True, snippet_seconds=1.0)
  sr, clips = 8000, {}
  for pid in range(P):                          # 2 s clips (100 frames at 50 Hz), each its own ramp
    clips[pid] = (np.linspace(-0.5, 0.5, 2 * sr) * (pid + 1) / P).astype(np.float32)
    sf.write(str(tmp_path / "activations" / "toy" / "audio" / f"{pid:06d}.wav"), clips[pid], sr)
  labelers.write_labels(str(out), s, str(tmp_path), log=lambda m: None)
  req = json.load(open(out / "label_examples.json"))
  explain = [r["body"] for r in _Stub.seen[1:] if "JSON list" not in _user_text(r["body"])]
  assert len(explain) == 2
  for body, feat in zip(explain, req["features"]):
    parts = body["messages"][-1]["content"]
    assert parts[0]["type"] == "text" and "most active" in parts[0]["text"]
    audio = [p["input_audio"] for p in parts if p["type"] == "input_audio"]
    shown = feat["explain"] + feat["contrast"]
    assert len(audio) == len(shown) == 8 and all(a["format"] == "wav" for a in audio)
    for a, e in zip(audio, shown):
      y, rate = sf.read(io.BytesIO(base64.b64decode(a["data"])), dtype="float32")
      pid, start, length = req["snippets"][e["snippet"]]
      assert rate == sr and length == 50 and len(y) == sr                # 1 s snippets
      lo = int(round(start / 50 * sr))
      np.testing.assert_allclose(y, clips[pid][lo:lo + sr], atol=1 / 32768)  # 16-bit PCM


def test_llm_detection_is_blind_by_default_and_modes_are_checked():
  from musicsae_jax.analysis.stats import AnalysisError
  assert labelers.resolve({})["llm_detection"] == ("blind",)
  with pytest.raises(AnalysisError, match="analysis.labeling.llm_detection"):
    labelers.resolve({"labeling": {"llm_detection": ("peek",)}})
  p = [{"text": "sad piano", "labels": {"emotion": "sad"}}]
  line = llm.describe({"prompt_id": 0}, p, 50.0, [0, 50, 100], ["piano", "calm"], False,
                      with_text=False)
  assert line == "time 1.0-3.0 s; CLAP hears: piano, calm"          # nothing from the text


def test_snippet_descriptors_against_a_direct_mean():
  """Per-snippet means of the descriptor rows (rows found through the index, in any order)
  equal a direct mean over the snippet's frames; z-scores against the random snippets."""
  from musicsae_jax.analysis.labelers import descriptors as desc
  src = FakeDescriptors()
  snippets = [[12, 30, 20], [25, 0, 10], [3, 95, 5]]
  got = desc.snippet_means(src, snippets)
  for (p, a, n), row in zip(snippets, got):
    sel = (src.index[:, 0] == p) & (src.index[:, 1] >= a) & (src.index[:, 1] < a + n)
    np.testing.assert_allclose(row, src.x[sel].mean(0), rtol=1e-12)
  span = np.array([[0, len(src.index) - 1]] * P)              # a row span: same answer
  np.testing.assert_allclose(desc.snippet_means(src, snippets, span), got, rtol=1e-12)
  z = desc.zscores(got, [1, 2])
  ref = got[[1, 2]]
  np.testing.assert_allclose(z, (got - ref.mean(0)) / ref.std(0, ddof=1), rtol=1e-12)
  assert desc.summary([0.2, -1.6, np.nan], ["a", "b", "c"], top=2) == ["b -1.6 sd", "a +0.2 sd"]


def test_blind_detection_sees_acoustic_descriptors(tmp_path, stub_server, monkeypatch):
  """With audio.descriptors, blind detect lines say how each snippet sounds (the drum
  snippets: rms louder than the random snippets), still with no caption or labels."""
  monkeypatch.setenv(llm.ENV_URL, stub_server)
  monkeypatch.setenv(llm.ENV_MODEL, "stub-model")
  _Stub.fail_next = False
  out, s = _workspace(tmp_path, ("llm",), descriptors=(FakeDescriptors(), ["rms_db", "noise"]))
  req = json.load(open(out / "label_examples.json"))
  assert req["descriptors"]["names"] == ["rms_db", "noise"]
  labelers.write_labels(str(out), s, str(tmp_path), log=lambda m: None)
  detects = [_user_text(r["body"]) for r in _Stub.seen if "JSON list" in _user_text(r["body"])]
  assert detects and not any('caption "' in d or "labels " in d for d in detects)
  drum = [ln for d in detects for ln in d.splitlines() if "sounds: rms_db +" in ln]
  assert drum and all("time " in ln for ln in drum)
  res = json.load(open(out / "labels.json"))
  saw = res["features"][1]["labels"][0]["detection"]["llm_blind"]["saw"]
  assert "acoustic descriptors" in saw and saw.endswith("no caption, no labels")


def test_llm_client_gives_up_with_one_line(tmp_path, stub_server):
  _Stub.fail_next = True
  client = llm.Client(stub_server + "/nowhere", "m", cache_dir=str(tmp_path), retries=0)
  with pytest.raises(llm.LLMError, match="failed after 1 attempts") as e:
    client.chat([{"role": "user", "content": "hi"}])
  assert "\n" not in str(e.value)
  assert labelers.resolve({"labelers": ("words",)})["labelers"] == ("words",)
  with pytest.raises(labelers.AnalysisError, match="unknown"):
    labelers.resolve({"labelers": ("words", "gpt")})


def test_without_audio_the_labels_say_why_and_keep_the_words(tmp_path):
  out, s = _workspace(tmp_path)
  os.rmdir(tmp_path / "activations" / "toy" / "audio")
  assert labelers.write_request(str(out), FakeStats(), [{"id": 0}], s, frame_rate=50.0,
                                dataset_path=str(tmp_path / "activations" / "toy"),
                                site="lm.layer.3") is None
  lines = []
  labelers.write_labels(str(out), s, str(tmp_path), log=lines.append)
  res = json.load(open(out / "labels.json"))
  assert "save_audio" in res["labelers"]["clap"]["skipped"] and lines == [
      f"labels: clap skipped: {res['labelers']['clap']['skipped']}"]
  assert [f["labels"] for f in res["features"]][0] == [
      {"source": "words", "label": "guitar tune", "scores": {}, "detection": {}}]
