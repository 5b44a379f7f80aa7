"""The activation store: round trips, crash safety, several writers, clear errors."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from musicsae_jax import store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batch(b: int, d: int = 12):
  """Deterministic rows of 'prompt' b: an uneven number of frames per prompt."""
  rng = np.random.default_rng(b)
  n = int(rng.integers(1, 40))
  acts = rng.standard_normal((n, d)).astype(np.float32)
  index = np.stack([np.full(n, b), np.arange(n)], 1).astype(np.int32)
  return acts, index


def expected(bs, d=12):
  parts = [batch(b, d) for b in bs]
  return np.concatenate([a for a, _ in parts]), np.concatenate([i for _, i in parts])


def small_sites(dtype="float32"):
  return {"lm.layer.1": store.SiteSpec(d=12, dtype=dtype, chunk_rows=16, shard_chunks=4)}


def make(tmp_path, n_prompts=30, dtype="float32", **kw):
  return store.create(str(tmp_path / "ds"), small_sites(dtype),
                      prompts=[{"text": f"p{i}", "labels": {"emotion": "sad"}} for i in range(n_prompts)],
                      model={"name": "tiny"}, **kw)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_exact(tmp_path, dtype):
  ds = make(tmp_path, dtype=dtype)
  acts, index = expected(range(10))
  if dtype == "bfloat16":     # bf16 round trip is exact for values that are bf16 already
    acts = acts.astype(store.SiteSpec(d=1, dtype="bfloat16").np_dtype)
  with ds.writer() as w:
    w.append("lm.layer.1", acts, index)
    w.commit(range(10))
  site = store.open_dataset(ds.path).site("lm.layer.1")
  assert site.num_rows == len(acts)
  got = site.read_all()
  assert got.dtype == acts.dtype
  np.testing.assert_array_equal(got.astype(np.float32), acts.astype(np.float32))
  np.testing.assert_array_equal(site.read_index(), index)


def test_uneven_appends_equal_one_write(tmp_path):
  acts, index = expected(range(12))
  one = store.create(str(tmp_path / "one"), small_sites())
  with one.writer() as w:
    w.append("lm.layer.1", acts, index)
  many = store.create(str(tmp_path / "many"), small_sites())
  with many.writer() as w:
    for cut in np.array_split(np.arange(len(acts)), [1, 2, 17, 50, 51, 90]):
      w.append("lm.layer.1", acts[cut], index[cut])
      w.flush()       # force a commit per batch: partial shards rewritten many times
  a, b = one.site("lm.layer.1"), store.open_dataset(many.path).site("lm.layer.1")
  np.testing.assert_array_equal(a.read_all(), b.read_all())
  np.testing.assert_array_equal(a.read_index(), b.read_index())
  # the files are zarr3 that another reader opens (not only ours)
  zarr = pytest.importorskip("zarr")
  z = zarr.open_array(os.path.join(many.path, "sites", "lm.layer.1", "acts"), mode="r")
  np.testing.assert_array_equal(np.asarray(z[:]), acts)


def test_reads_blocks_rows_and_iterator(tmp_path):
  ds = make(tmp_path)
  acts, index = expected(range(8))
  with ds.writer() as w:
    w.append("lm.layer.1", acts, index)
  site = ds.site("lm.layer.1")
  assert site.num_blocks == -(-len(acts) // 16)
  for i in reversed(range(site.num_blocks)):
    a, ix = site.read_block(i)
    start, stop = site.block_rows(i)
    np.testing.assert_array_equal(a, acts[start:stop])
    np.testing.assert_array_equal(ix, index[start:stop])
  rows = np.random.default_rng(0).permutation(len(acts))[:40]
  np.testing.assert_array_equal(site.read_rows(rows), acts[rows])
  np.testing.assert_array_equal(site.read_index(rows), index[rows])
  np.testing.assert_array_equal(np.concatenate([a for a, _ in site.iter_blocks()]), acts)


def test_uncommitted_rows_are_invisible_and_resume_continues(tmp_path):
  ds = make(tmp_path)
  w = ds.writer(flush_seconds=1e9)
  a0, i0 = batch(0)
  w.append("lm.layer.1", a0, i0)
  w.commit([0])
  w.flush()
  a1, i1 = batch(1)
  w.append("lm.layer.1", a1, i1)   # never flushed: the process "dies" here
  w.commit([1])
  w._release()
  ds = store.open_dataset(ds.path)
  assert ds.completed_prompts() == {0}
  assert ds.site("lm.layer.1").num_rows == len(a0)
  with ds.writer() as w:
    w.append("lm.layer.1", a1, i1)
    w.commit([1])
  acts, index = expected([0, 1])
  np.testing.assert_array_equal(ds.site("lm.layer.1").read_all(), acts)


WRITER = textwrap.dedent("""
  import os, sys, time
  import numpy as np
  sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
  from musicsae_jax import store
  from test_store import batch
  path, worker, n_prompts, die_at_commit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
  ds = store.open_dataset(path)
  if die_at_commit >= 0:           # crash after the rows are written, before the commit lands
    real = store._write_json_atomic
    calls = [0]
    def dying(p, obj):
      if calls[0] == die_at_commit:
        os._exit(3)
      calls[0] += 1
      real(p, obj)
    store._write_json_atomic = dying
  with ds.writer(worker) as w:
    done = w.completed_prompts()
    for b in range(worker, n_prompts, ds.num_workers):
      if b in done:
        continue
      a, i = batch(b)
      w.append("lm.layer.1", a, i)
      w.commit([b])
      w.flush()
  print("finished", flush=True)
""")


def run_writer(path, worker=0, n=30, die_at_commit=-1, wait=True):
  code = WRITER.format(root=ROOT, tests=os.path.join(ROOT, "tests"))
  args = [sys.executable, "-c", code, path, str(worker), str(n), str(die_at_commit)]
  if not wait:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  return subprocess.run(args, capture_output=True, text=True, timeout=120)


def check_prefix(ds, n):
  """Committed rows are exactly the completed prompts' rows, in order, nothing extra."""
  done = sorted(ds.completed_prompts())
  assert done == list(range(len(done)))
  site = ds.site("lm.layer.1")
  if done:
    acts, index = expected(done)
    np.testing.assert_array_equal(site.read_all(), acts)
    np.testing.assert_array_equal(site.read_index(), index)
  else:
    assert site.num_rows == 0
  return len(done)


def test_crash_between_write_and_commit_then_resume(tmp_path):
  ds = make(tmp_path)
  r = run_writer(ds.path, die_at_commit=7)
  assert r.returncode == 3, r.stderr
  assert check_prefix(store.open_dataset(ds.path), 30) == 7
  # the arrays hold rows past the commit (written, never published) ...
  r = run_writer(ds.path)
  assert r.returncode == 0, r.stderr
  ds = store.open_dataset(ds.path)
  assert check_prefix(ds, 30) == 30   # ... and the resumed run neither loses nor duplicates


def test_killed_mid_write_then_resume(tmp_path):
  ds = make(tmp_path, n_prompts=400)
  p = run_writer(ds.path, n=400, wait=False)
  deadline = time.time() + 60
  while time.time() < deadline:        # wait until some commits exist, then SIGKILL
    if os.path.exists(os.path.join(ds.path, "commits", "worker-0.json")):
      if len(store.open_dataset(ds.path).completed_prompts()) >= 5:
        break
    time.sleep(0.02)
  p.send_signal(signal.SIGKILL)
  p.wait()
  n_done = check_prefix(store.open_dataset(ds.path), 400)
  assert 5 <= n_done < 400
  r = run_writer(ds.path, n=400)
  assert r.returncode == 0, r.stderr
  assert check_prefix(store.open_dataset(ds.path), 400) == 400


def test_two_writer_processes_fill_one_dataset(tmp_path):
  ds = make(tmp_path, num_workers=2)
  procs = [run_writer(ds.path, worker=w, wait=False) for w in (0, 1)]
  for p in procs:
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
  ds = store.open_dataset(ds.path)
  assert ds.completed_prompts() == set(range(30))
  site = ds.site("lm.layer.1")
  acts, index = expected(list(range(0, 30, 2)) + list(range(1, 30, 2)))
  np.testing.assert_array_equal(site.read_all(), acts)
  np.testing.assert_array_equal(site.read_index(), index)
  assert os.path.isdir(os.path.join(ds.path, "sites", "lm.layer.1", "part-1", "acts"))


def test_same_worker_twice_is_refused(tmp_path):
  ds = make(tmp_path)
  with ds.writer(0):
    with pytest.raises(store.LockedError, match="worker 0"):
      ds.writer(0)


# ---- bad input ---------------------------------------------------------------------


def test_exists_without_overwrite(tmp_path):
  make(tmp_path)
  with pytest.raises(store.StoreExistsError, match="already exists.*overwrite"):
    make(tmp_path)
  ds = make(tmp_path, overwrite=True)
  assert ds.site("lm.layer.1").num_rows == 0


def test_wrong_width_dtype_index_and_site(tmp_path):
  ds = make(tmp_path)
  with ds.writer() as w:
    with pytest.raises(store.ShapeError, match=r"width 12 \(\[n, 12\]\), got shape \(3, 5\)"):
      w.append("lm.layer.1", np.zeros((3, 5), np.float32), np.zeros((3, 2), np.int32))
    with pytest.raises(store.ShapeError, match="stores float32; got int64"):
      w.append("lm.layer.1", np.zeros((3, 12), np.int64), np.zeros((3, 2), np.int32))
    with pytest.raises(store.ShapeError, match="index must be integer"):
      w.append("lm.layer.1", np.zeros((3, 12), np.float32), np.zeros((3,), np.int32))
    with pytest.raises(store.ShapeError, match="prompt_id out of range"):
      w.append("lm.layer.1", np.zeros((1, 12), np.float32), np.array([[99, 0]]))
    with pytest.raises(store.UnknownSiteError, match="unknown site 'lm.layer.9'.*lm.layer.1"):
      w.append("lm.layer.9", np.zeros((1, 12), np.float32), np.zeros((1, 2), np.int32))
  with pytest.raises(store.UnknownSiteError, match="unknown site"):
    ds.site("t5.hidden")
  with pytest.raises(store.ShapeError, match="dtype must be one of"):
    store.create(str(tmp_path / "x"), {"a": store.SiteSpec(d=4, dtype="float16")})


def test_missing_and_corrupt_manifest(tmp_path):
  with pytest.raises(store.ManifestError, match="no such dataset"):
    store.open_dataset(str(tmp_path / "nope"))
  ds = make(tmp_path)
  mpath = os.path.join(ds.path, "manifest.json")
  with open(mpath, "w") as f:
    f.write("{not json")
  with pytest.raises(store.ManifestError, match="manifest.json: corrupt"):
    store.open_dataset(ds.path)
  with open(mpath, "w") as f:
    json.dump({"format": "something-else"}, f)
  with pytest.raises(store.ManifestError, match="not an activation-store manifest"):
    store.open_dataset(ds.path)
  os.remove(mpath)
  with pytest.raises(store.ManifestError, match="missing manifest.json"):
    store.open_dataset(ds.path)


def test_reading_past_the_end(tmp_path):
  ds = make(tmp_path)
  acts, index = expected([0])
  with ds.writer() as w:
    w.append("lm.layer.1", acts, index)
  site = ds.site("lm.layer.1")
  with pytest.raises(store.RowRangeError, match=f"has {len(acts)} committed rows, asked for row {len(acts)}"):
    site.read_rows([0, len(acts)])
  with pytest.raises(store.RowRangeError, match="blocks, asked for block"):
    site.read_block(site.num_blocks)


def test_chunking_defaults_target_a_few_mb():
  spec = store.SiteSpec(d=1536, dtype="bfloat16").resolved()
  assert 2 << 20 <= spec.chunk_rows * 1536 * 2 <= 4 << 20
  assert spec.shard_rows == 16 * spec.chunk_rows


# ---- integrity: damage is detected, never read as zeros ----------------------------


def _two_worker_dataset(tmp_path):
  ds = make(tmp_path, num_workers=2)
  for wk in (0, 1):
    with ds.writer(wk) as w:
      for b in range(wk, 12, 2):
        a, i = batch(b)
        w.append("lm.layer.1", a, i)
        w.commit([b])
  return store.open_dataset(ds.path)


def test_missing_shard_fails_naming_the_file(tmp_path):
  ds = _two_worker_dataset(tmp_path)
  assert store.verify(ds.path)["problems"] == []
  shard = os.path.join(ds.path, "sites", "lm.layer.1", "part-1", "acts", "c", "0", "0")
  os.remove(shard)
  site = store.open_dataset(ds.path).site("lm.layer.1")
  with pytest.raises(store.MissingDataError, match=f"{shard}: missing shard file"):
    site.read_all()
  with pytest.raises(store.MissingDataError, match="part-1"):
    site.read_rows([int(site.part_start[1])])
  with pytest.raises(store.MissingDataError):
    site.read_index()
  problems = store.verify(ds.path)["problems"]
  assert len(problems) == 1 and shard in problems[0]


def test_all_zero_chunks_are_stored(tmp_path):
  """A chunk equal to the fill value must still have a file, or it would read as missing."""
  ds = make(tmp_path)
  with ds.writer() as w:
    w.append("lm.layer.1", np.zeros((40, 12), np.float32), np.zeros((40, 2), np.int32))
  site = store.open_dataset(ds.path).site("lm.layer.1")
  np.testing.assert_array_equal(site.read_all(), 0)


def test_verify_catches_corrupt_rows_and_the_cli_reports_them(tmp_path):
  ds = _two_worker_dataset(tmp_path)
  cli = [sys.executable, "-m", "musicsae_jax.store", "verify", ds.path]
  r = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=60)
  assert r.returncode == 0 and "OK" in r.stdout, r.stderr
  # overwrite committed rows behind the store's back (same shape, different values)
  import tensorstore as ts
  arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(
      ds.path, "sites", "lm.layer.1", "part-0", "acts")}}).result()
  arr[3:4].write(np.full((1, 12), 7.0, np.float32)).result()
  r = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=60)
  assert r.returncode == 1
  assert "acts rows 0..15 of site 'lm.layer.1' worker 0 do not match their checksum" in r.stderr


def test_duplicate_prompts_and_non_finite_rows_are_refused(tmp_path):
  ds = make(tmp_path, num_workers=2)
  a, i = batch(0)
  with ds.writer(0) as w:
    w.append("lm.layer.1", a, i)
    w.commit([0])
    with pytest.raises(store.DuplicatePromptError, match=r"prompt\(s\) \[0\]"):
      w.append("lm.layer.1", a, i)            # completed, not yet flushed
  with ds.writer(1) as w:                      # committed by another worker
    with pytest.raises(store.DuplicatePromptError, match="already committed"):
      w.append("lm.layer.1", a, i)
    with pytest.raises(store.DuplicatePromptError):
      w.commit([0])
    bad = batch(1)[0].copy()
    bad[2, 3] = np.nan
    with pytest.raises(store.NonFiniteError, match="1 of .* rows hold NaN/Inf .*prompt 1, frame 2"):
      w.append("lm.layer.1", bad, batch(1)[1])
  assert store.verify(ds.path)["problems"] == []


def test_verify_flags_non_finite_and_duplicate_rows_written_around_the_checks(tmp_path):
  ds = make(tmp_path)
  a, i = batch(0)
  a = a.copy()
  a[0, 0] = np.inf
  with ds.writer() as w:
    w._check_new = lambda *args: None        # an older writer without the checks
    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(np, "isfinite", lambda x: np.ones(np.shape(x), bool))
      w.append("lm.layer.1", a, i)
      w.append("lm.layer.1", a, i)
    w.commit([0])
  problems = store.verify(ds.path)["problems"]
  assert any("rows hold NaN/Inf" in p for p in problems), problems
  assert any("stored more than once" in p for p in problems), problems


def test_leftovers_of_killed_writers_and_creators_are_removed(tmp_path):
  ds = make(tmp_path)
  tmp = os.path.join(ds.path, "commits", "worker-0.json.tmp-99999999")
  with open(tmp, "w") as f:
    f.write("{half")
  with ds.writer():
    pass
  assert not os.path.exists(tmp)
  path = str(tmp_path / "new")
  dead = p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  stale = f"{path}.creating-{__import__('socket').gethostname()}-{dead.pid}"
  live = store.creating_path(path)              # this process: alive, kept
  os.makedirs(stale)
  os.makedirs(live)
  assert store.remove_stale_creating(path) == [stale]
  assert os.path.isdir(live) and not os.path.exists(stale)


def _flip(path, offset, nbytes=1):
  """Flip one bit (nbytes=1) or invert nbytes bytes of a file in place."""
  b = bytearray(open(path, "rb").read())
  for k in range(nbytes):
    b[offset + k] ^= 0x01 if nbytes == 1 else 0xFF
  open(path, "wb").write(bytes(b))


def _one_writer_dataset(tmp_path, codec="none"):
  ds = store.create(str(tmp_path / "ds"), {"lm.layer.1": store.SiteSpec(
      d=12, chunk_rows=16, shard_chunks=4, codec=codec)}, prompts=[f"p{i}" for i in range(12)])
  with ds.writer() as w:
    for b in range(12):
      w.append("lm.layer.1", *batch(b))
      w.commit([b])
  return store.open_dataset(ds.path)


@pytest.mark.parametrize("codec,nbytes,every_read", [
    ("none", 1, True), ("zstd", 1, True), ("none", 1, False), ("none", 8, False),
    ("zstd", 1, False)])
def test_every_read_checks_the_chunk_checksums(tmp_path, monkeypatch, codec, nbytes, every_read):
  """A flipped bit (or 8 flipped bytes) in a shard fails every kind of read of the rows it
  holds, naming the file and the rows, even after those rows were read once clean: by
  default because every read recomputes the checksum (no file is trusted: the flip lands
  at once, in the timestamp tick of the clean read), with check_every_read=False because
  the flip changes the file's identity."""
  import time
  monkeypatch.setattr(store.SiteReader, "_SETTLED_NS", 0)   # trust files at once
  ds = _one_writer_dataset(tmp_path, codec)
  site = ds.site("lm.layer.1")
  assert site.check_every_read                # the default
  site.check_every_read = every_read
  time.sleep(0.05)                           # past the timestamp tick of the last write
  site.read_block(0), site.read_block(1)     # read clean once
  if every_read:
    assert not site._verified                 # nothing is trusted
  else:
    assert (0, 0, 0) in site._verified and (0, 0, 16) in site._verified
    time.sleep(0.05)
  shard = os.path.join(ds.path, "sites", "lm.layer.1", "acts", "c", "0", "0")
  _flip(shard, 16 * 12 * 4 + 100 if codec == "none" else 40, nbytes)   # inside chunk 1 / 0
  rows = "rows 16..31" if codec == "none" else "rows 0..15"
  block = 1 if codec == "none" else 0
  want = f"{shard}: acts {rows} of site 'lm.layer.1' \\(worker 0\\)"
  for read in (lambda: site.read_block(block), lambda: site.read_all(),
               lambda: site.read_rows([16 * block + 3]),
               lambda: store.open_dataset(ds.path).site("lm.layer.1").read_block(block)):
    with pytest.raises(store.ChecksumError, match=want):
      read()
  acts, _ = expected(range(12))
  np.testing.assert_array_equal(site.read_rows([50, 40]), acts[[50, 40]])   # other chunks read
  index = os.path.join(ds.path, "sites", "lm.layer.1", "index", "c", "0", "0")
  if codec == "none":
    _flip(index, 16 * 2 * 4 * 2 + 4)                      # chunk 2 of the index
    with pytest.raises(store.ChecksumError, match=f"{index}: index rows 32..47"):
      site.read_index()
    with pytest.raises(store.ChecksumError, match=f"{index}: index rows 32..47"):
      site.read_index([33])


def test_a_shard_removed_after_a_clean_read_fails_the_next_read(tmp_path):
  ds = _one_writer_dataset(tmp_path)
  site = ds.site("lm.layer.1")
  site.read_block(0), site.read_rows([1]), site.read_index()     # all present and clean
  shard = os.path.join(ds.path, "sites", "lm.layer.1", "acts", "c", "0", "0")
  os.remove(shard)
  for read in (lambda: site.read_block(0), lambda: site.read_rows([1]),
               lambda: list(site.iter_blocks())):
    with pytest.raises(store.MissingDataError, match=f"{shard}: missing shard file holding "
                                                     f"committed rows 0..63"):
      read()


def test_verify_reports_a_missing_file_and_a_corrupt_chunk_of_one_site(tmp_path):
  ds = _one_writer_dataset(tmp_path)
  site_dir = os.path.join(ds.path, "sites", "lm.layer.1")
  gone = os.path.join(site_dir, "acts", "c", "0", "0")
  os.remove(gone)
  corrupt = os.path.join(site_dir, "acts", "c", "1", "0")   # rows 64.. (shard 1)
  _flip(corrupt, 100)
  problems = store.verify(ds.path)["problems"]
  assert len(problems) == 2, problems
  assert problems[0].startswith(f"{gone}: missing shard file holding committed rows 0..63")
  assert problems[1].startswith(f"{corrupt}: acts rows 64..79 of site 'lm.layer.1' worker 0 "
                                f"do not match their checksum")
  assert not any("no rows" in p for p in problems)



def _chunk_crcs(rows, chunk_rows=16):
  """zlib's CRC-32 of each chunk's bytes: the reference the store's ISA-L CRC must equal."""
  import zlib
  return [zlib.crc32(np.ascontiguousarray(rows[lo:lo + chunk_rows]).tobytes())
          for lo in range(0, len(rows), chunk_rows)]


def test_checksums_are_zlibs_crc32_of_each_chunk_across_flushes_and_resumed_writers(tmp_path):
  """Record checksums equal zlib's CRC-32 of each chunk's bytes, also for chunks filled by
  several flushes and by writers that resumed a partial chunk; the record names them."""
  ds = make(tmp_path)
  with ds.writer(flush_seconds=1e9) as w:
    for b in range(3):                      # three flushes into chunks 0..
      w.append("lm.layer.1", *batch(b))
      w.commit([b])
      w.flush()
  for b in range(3, 6):                     # each writer resumes a partial last chunk
    with ds.writer() as w:
      w.append("lm.layer.1", *batch(b))
      w.commit([b])
  record = json.load(open(os.path.join(ds.path, "commits", "worker-0.json")))
  assert record["checksum_algorithm"] == "crc32"
  acts, index = expected(range(6))
  assert len(acts) % 16                     # the last chunk is partial
  assert record["checksums"]["lm.layer.1"] == {"acts": _chunk_crcs(acts),
                                               "index": _chunk_crcs(index)}
  assert store.verify(ds.path)["problems"] == []


def test_a_store_written_before_the_algorithm_was_recorded_reads_verifies_and_appends(tmp_path):
  """A record as older versions wrote it (no checksum_algorithm): every read still checks
  its CRC-32s (a flipped bit fails a read naming file and rows) and appends continue them."""
  ds = make(tmp_path)
  with ds.writer() as w:
    for b in range(8):
      w.append("lm.layer.1", *batch(b))
      w.commit([b])
  p = os.path.join(ds.path, "commits", "worker-0.json")
  record = json.load(open(p))
  del record["checksum_algorithm"]
  json.dump(record, open(p, "w"))
  acts, _ = expected(range(8))
  assert store.verify(ds.path)["problems"] == []
  site = store.open_dataset(ds.path).site("lm.layer.1")
  np.testing.assert_array_equal(site.read_all(), acts)
  with store.open_dataset(ds.path).writer() as w:
    w.append("lm.layer.1", *batch(8))
    w.commit([8])
  acts, index = expected(range(9))
  record = json.load(open(p))
  assert record["checksums"]["lm.layer.1"] == {"acts": _chunk_crcs(acts),
                                               "index": _chunk_crcs(index)}
  assert store.verify(ds.path)["problems"] == []
  del record["checksum_algorithm"]             # old again, now damaged: still caught
  json.dump(record, open(p, "w"))
  site = store.open_dataset(ds.path).site("lm.layer.1")
  site.read_block(0)
  shard = os.path.join(ds.path, "sites", "lm.layer.1", "acts", "c", "0", "0")
  b = bytearray(open(shard, "rb").read())
  b[40] ^= 0x01                              # zstd: damages chunk 0
  open(shard, "wb").write(bytes(b))
  with pytest.raises(store.ChecksumError, match=f"{shard}: acts rows 0..15 of site 'lm.layer.1'"):
    site.read_block(0)


def test_an_unknown_checksum_algorithm_is_refused_naming_the_record(tmp_path):
  ds = make(tmp_path)
  with ds.writer() as w:
    w.append("lm.layer.1", *batch(0))
    w.commit([0])
  p = os.path.join(ds.path, "commits", "worker-0.json")
  record = json.load(open(p))
  record["checksum_algorithm"] = "sha1"
  json.dump(record, open(p, "w"))
  with pytest.raises(store.ManifestError, match=f"{p}: checksum_algorithm 'sha1'"):
    store.open_dataset(ds.path).site("lm.layer.1")
  with pytest.raises(store.ManifestError, match=f"{p}: checksum_algorithm 'sha1'"):
    store.open_dataset(ds.path).writer()
