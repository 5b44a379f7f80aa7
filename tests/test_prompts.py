"""bridge.sources.prompts: the emotion set and the file loaders, with clear errors."""
import pytest

from bridge.sources import prompts as P


def test_emotion_set_is_large_diverse_labelled_and_deterministic():
  ps = P.emotion_prompts()
  assert ps == P.emotion_prompts()
  for emo in P.EMOTIONS:
    mine = [p for p in ps if p["labels"]["emotion"] == emo]
    assert len(mine) >= 100
    assert len({p["labels"]["instrument"] for p in mine}) >= 10
    assert len({p["labels"]["genre"] for p in mine}) >= 8
  assert len({p["text"] for p in ps}) == len(ps)
  assert set(ps[0]["labels"]) == {"emotion", "instrument", "genre", "intensity", "scene"}
  assert [p["labels"]["emotion"] for p in ps[:4]] == list(P.EMOTIONS)   # round-robin


def test_subsample_per_label_keeps_order():
  sub = P.subsample(P.emotion_prompts(), 3)
  assert len(sub) == 12 and sub == P.emotion_prompts()[:12]


def test_loaders(tmp_path):
  (tmp_path / "a.txt").write_text("# comment\nhappy piano\n\n  sad cello  \n")
  assert [p["text"] for p in P.load_prompts(str(tmp_path / "a.txt"))] == ["happy piano", "sad cello"]
  (tmp_path / "b.jsonl").write_text('{"text": "x", "labels": {"emotion": "calm"}}\n\n{"text": "y"}\n')
  assert P.load_prompts(str(tmp_path / "b.jsonl")) == [
      {"text": "x", "labels": {"emotion": "calm"}}, {"text": "y", "labels": {}}]
  (tmp_path / "c.csv").write_text(
      'ytid,aspect_list,caption\nabc,"[\'low quality\', \'piano\']","A mellow piano, slow."\n')
  assert P.load_prompts(str(tmp_path / "c.csv")) == [
      {"text": "A mellow piano, slow.", "labels": {"aspects": ["low quality", "piano"],
                                                   "ytid": "abc"}}]


@pytest.mark.parametrize("name,body,match", [
    ("e.txt", "\n# only a comment\n", r"e.txt: empty prompt file"),
    ("e.jsonl", "", r"e.jsonl: empty prompt file"),
    ("m.jsonl", '{"text": "ok"}\n{"text": \n', r"m.jsonl:2: not valid JSON"),
    ("n.jsonl", '{"labels": {}}\n', r'n.jsonl:1: expected an object with a non-empty "text"'),
    ("h.csv", "ytid,text\n1,a\n", r"h.csv:1: expected a header with a 'caption' column"),
    ("r.csv", "caption,aspect_list\nfine,\"['a']\"\nok,[broken\n", r"r.csv:3: aspect_list"),
    ("p.md", "x\n", r"p.md: unknown prompt source"),
])
def test_bad_files_name_file_and_line(tmp_path, name, body, match):
  (tmp_path / name).write_text(body)
  with pytest.raises(P.PromptFileError, match=match):
    P.load_prompts(str(tmp_path / name))


def test_missing_file():
  with pytest.raises(P.PromptFileError, match="not found"):
    P.load_prompts("/nonexistent/prompts.txt")


def test_heldout_vocabulary_prompts_share_no_emotion_words_with_training():
  ps = P.emotion_prompts()
  for emo in P.EMOTIONS:
    mine = [p for p in ps if p["labels"]["emotion"] == emo]
    held = [p for p in mine if p["split"] == P.HELDOUT_VOCAB]
    assert len(held) == 30 and [p["split"] for p in mine[:4]] == ["train"] * 3 + [P.HELDOUT_VOCAB]
    assert len({p["labels"]["instrument"] for p in held}) >= 8
  assert P.heldout_vocab_violations(ps) == []
  words = {w for p in ps if p["split"] == P.HELDOUT_VOCAB
           for w in p["text"].lower().replace(",", " ").replace(":", " ").split()}
  assert not words & set(P.EMOTIONS) and not words & {w for ws in P._MOOD_WORDS.values() for w in ws}
  # the check can fail: a synonym's inflection, and a word only the sad/calm scenes use
  bad = ps + [{"text": "Sorrowing cello in minor key", "labels": {"emotion": "sad"},
               "split": P.HELDOUT_VOCAB}]
  found = P.heldout_vocab_violations(bad)
  assert len(found) == 2 and "'sorrowing'" in found[0] and "'in'" in found[1]
  assert P.emotion_prompts(8, heldout_every=0) == [p for p in P.emotion_prompts(16)
                                                  if p["split"] == "train"][:32]


def test_jsonl_split_field(tmp_path):
  (tmp_path / "s.jsonl").write_text('{"text": "x", "split": "heldout_vocab"}\n{"text": "y"}\n')
  assert [p.get("split") for p in P.load_prompts(str(tmp_path / "s.jsonl"))] == ["heldout_vocab", None]
  (tmp_path / "t.jsonl").write_text('{"text": "x", "split": "test"}\n')
  with pytest.raises(P.PromptFileError, match=r't.jsonl:1: "split" must be'):
    P.load_prompts(str(tmp_path / "t.jsonl"))
