"""bridge.capture.extract: rows per frame, resume after an interruption, workers, bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import configs.tiny
from bridge.models import capture_sites
from bridge.capture import record, extract as X
from bridge.models import audiocraft_musicgen, backends
from bridge.sources import prompts
from musicsae_jax import store

torch.set_num_threads(1)
SITES = ("lm.layer.0", "lm.layer.3", "t5.hidden", "t5.pooled", "audio.descriptors")


def small_config(**extract):
  c = configs.tiny.get_config()
  c.dataset = "t"
  c.extract.per_label = 2          # 8 prompts
  c.extract.duration = 0.3         # 15 frames
  c.extract.batch_size = 2         # 4 batches
  c.extract.sites = SITES
  c.extract.save_audio = False
  c.extract.update(extract)
  return c


def site_rows(ds, site):
  """All committed rows of a site ordered by (prompt_id, frame), whatever wrote them."""
  s = ds.site(site)
  acts, idx = s.read_rows(np.arange(s.num_rows)), s.read_index()
  order = np.lexsort((idx[:, 1], idx[:, 0]))
  return acts[order], idx[order]


def assert_same_store(a, b):
  assert sorted(a.completed_prompts()) == sorted(b.completed_prompts())
  for site in SITES:
    xa, ia = site_rows(a, site)
    xb, ib = site_rows(b, site)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(xa, xb, err_msg=site)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
  return X.extract(small_config(), str(tmp_path_factory.mktemp("full")), log=lambda s: None)


def test_rows_are_prompts_times_frames(full):
  assert full.completed_prompts() == set(range(8))
  for site in ("lm.layer.0", "lm.layer.3", "audio.descriptors"):
    acts, idx = site_rows(full, site)
    assert acts.shape[0] == 8 * 15
    assert idx[:15].tolist() == [[0, f] for f in range(15)]
  assert full.site("t5.pooled").num_rows == 8
  assert full.site("lm.layer.3").d == 64 and full.site("t5.hidden").d == 32
  assert full.site("audio.descriptors").d == len(X.audio_descriptors.FRAME_DESCRIPTORS)
  p = full.prompts
  assert p[0]["labels"]["emotion"] == "happy" and p[0]["seed"] == p[1]["seed"] != p[2]["seed"]
  m = full.manifest
  assert m["model"]["d_model"] == 64 and m["generation"]["frames_per_prompt"] == 15
  assert m["generation"]["audio_descriptors"][0] == "rms_db"
  acts, _ = site_rows(full, "lm.layer.3")
  assert np.abs(acts[1:15] - acts[:14]).max(1).min() > 1e-3   # frames really differ


def test_rows_match_a_direct_capture_of_the_same_batch(full):
  """Store rows for batch 1 == generate_with_capture of that batch with its seed."""
  c = small_config()
  model = X.build_model(c.model)
  X._set_generation(model, c.extract, backends.model_info(model))
  texts = [full.prompts[i]["text"] for i in (2, 3)]
  cap = record.generate_with_capture(model, texts, ["lm.layer.3"], seed=full.prompts[2]["seed"])
  acts, idx = site_rows(full, "lm.layer.3")
  np.testing.assert_array_equal(acts[idx[:, 0] == 2], cap.acts["lm.layer.3"][0])


def test_resume_after_interruption_equals_uninterrupted(full, tmp_path):
  c = small_config()

  def boom(b):
    if b == 1:
      raise KeyboardInterrupt("killed after 2 batches")
  with pytest.raises(KeyboardInterrupt):
    X.extract(c, str(tmp_path), on_batch=boom, log=lambda s: None)
  partial = store.open_dataset(X.dataset_path(c, str(tmp_path)))
  assert partial.completed_prompts() == {0, 1, 2, 3}
  seen = []
  X.extract(c, str(tmp_path), on_batch=seen.append, log=lambda s: None)
  assert seen == [2, 3]                                   # only the missing batches ran
  assert_same_store(store.open_dataset(X.dataset_path(c, str(tmp_path))), full)


def test_two_workers_equal_one(full, tmp_path):
  c = small_config()
  for w in (1, 0):
    X.extract(c, str(tmp_path), worker_index=w, num_workers=2, log=lambda s: None)
  assert_same_store(store.open_dataset(X.dataset_path(c, str(tmp_path))), full)


def _with_model(**change):
  c = small_config()
  for k, v in change.items():
    if k == "tiny":
      c.model.tiny.update(v)
    else:
      c.model[k] = v
  return c


@pytest.mark.parametrize("config,match", [
    (lambda: small_config(duration=0.2), "generation.duration: 0.3 != 0.2"),
    (lambda: _with_model(seed=1), "model.seed: 0 != 1"),
    (lambda: _with_model(tiny=dict(num_heads=2)), "model.tiny.num_heads: 4 != 2"),
    (lambda: small_config(dtype="bfloat16"), "sites.lm.layer.0.dtype: 'float32' != 'bfloat16'"),
    (lambda: small_config(save_audio=True), "generation.save_audio: False != True"),
])
def test_reopening_with_another_config_is_refused(full, config, match):
  workdir = os.path.dirname(os.path.dirname(full.path))
  with pytest.raises(X.ExtractError, match="different config.*" + match.replace(".", r"\.")
                     + ".*--overwrite"):
    X.extract(config(), workdir, log=lambda s: None)


def test_resume_with_a_missing_shard_is_refused(full, tmp_path):
  import shutil
  path = X.dataset_path(small_config(), str(tmp_path))
  shutil.copytree(full.path, path)
  shard = os.path.join(path, "sites", "lm.layer.3", "acts", "c", "0", "0")
  os.remove(shard)
  with pytest.raises(X.ExtractError, match=f"{shard}: missing shard file.*--overwrite"):
    X.extract(small_config(), str(tmp_path), log=lambda s: None)


def test_leftover_creating_dir_of_a_killed_worker_is_removed(tmp_path):
  c = small_config(max_prompts=2)
  path = X.dataset_path(c, str(tmp_path))
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  stale = f"{path}.creating-{__import__('socket').gethostname()}-{p.pid}"
  os.makedirs(stale)
  X.extract(c, str(tmp_path), log=lambda s: None)
  assert not os.path.exists(stale)
  assert store.verify(path)["problems"] == []


@pytest.mark.parametrize("change,err,match", [
    (dict(sites=("lm.layer.9",)), capture_sites.UnknownSiteError, "layer 9 out of range"),
    (dict(sites=("lm.attn.1",)), capture_sites.UnknownSiteError, "unknown site 'lm.attn.1'"),
    (dict(top_k=1000), X.ExtractError, "top_k=1000 exceeds the codebook size 256"),
])
def test_bad_config_raises(tmp_path, change, err, match):
  with pytest.raises(err, match=match):
    X.extract(small_config(**change), str(tmp_path), log=lambda s: None)


def test_empty_prompt_file_and_unknown_model(tmp_path):
  (tmp_path / "p.txt").write_text("\n")
  with pytest.raises(prompts.PromptFileError, match="p.txt: empty prompt file"):
    X.extract(small_config(prompts=str(tmp_path / "p.txt")), str(tmp_path), log=lambda s: None)
  c = small_config()
  c.model.name = "facebook/musicgen-gigantic"
  with pytest.raises(audiocraft_musicgen.ModelLoadError, match="unknown MusicGen model"):
    X.extract(c, str(tmp_path), log=lambda s: None)


def test_command_line_writes_a_zarr3_store_with_audio(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, "-m", "launch.extract", "--config=configs/tiny.py",
         f"--workdir={tmp_path}", "--config.extract.per_label=1", "--config.extract.duration=0.2",
         "--config.extract.batch_size=4", "--config.dataset=cli"]
  r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "loading model" in r.stderr and "frames/s" in r.stderr
  ds_dir = tmp_path / "activations" / "cli"
  assert len(list((ds_dir / "audio").glob("*.wav"))) == 4
  import tensorstore as ts  # any zarr3 reader opens the arrays
  meta = json.loads((ds_dir / "sites" / "lm.layer.1" / "acts" / "zarr.json").read_text())
  assert meta["zarr_format"] == 3
  arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file",
                 "path": str(ds_dir / "sites" / "lm.layer.1" / "acts")}}).result()
  assert arr.shape == (4 * 10, 64)


def test_every_extract_field_is_identity_or_declared_resumable():
  """A new extract.* field must be classified: part of the dataset's identity (compared on
  resume) or one that cannot change what is stored."""
  from bridge import config_defaults
  fields = set(config_defaults.extract())
  assert fields == X.IDENTITY_FIELDS | X.RESUMABLE_FIELDS, fields ^ (X.IDENTITY_FIELDS |
                                                                     X.RESUMABLE_FIELDS)
  assert not X.IDENTITY_FIELDS & X.RESUMABLE_FIELDS


def test_resuming_with_save_audio_changed_is_refused(tmp_path):
  """Audio for every prompt or for none: a resume that would stop (or start) writing audio
  halfway is refused naming the field, and writes nothing."""
  wd = str(tmp_path)
  stop = RuntimeError("stop")

  def interrupt(b):
    if b == 1:
      raise stop
  with pytest.raises(RuntimeError):
    X.extract(small_config(save_audio=True), wd, on_batch=interrupt, log=lambda s: None)
  path = X.dataset_path(small_config(), wd)
  before = sorted(os.listdir(os.path.join(path, "audio")))
  with pytest.raises(X.ExtractError, match=r"generation\.save_audio: True != False.*--overwrite"):
    X.extract(small_config(save_audio=False), wd, log=lambda s: None)
  assert sorted(os.listdir(os.path.join(path, "audio"))) == before
  ds = X.extract(small_config(save_audio=True), wd, log=lambda s: None)   # same: resumes
  assert len(os.listdir(os.path.join(path, "audio"))) == len(ds.prompts) == 8
