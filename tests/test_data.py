"""Input pipeline: split by prompt, determinism, process split, normalisation, sharding."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from musicsae_jax import data as data_lib
from musicsae_jax import mesh as mesh_lib


def _source(n=4000, d=8, rows_per_prompt=37, chunk_rows=256, seed=0):
  """Column 0 carries the row id and column 1 the prompt id, so batches can be traced."""
  rng = np.random.default_rng(seed)
  acts = rng.normal(size=(n, d)).astype(np.float32) * 3.0
  rows = np.arange(n)
  acts[:, 0], acts[:, 1] = rows, rows // rows_per_prompt
  index = np.stack([rows // rows_per_prompt, rows % rows_per_prompt], 1)
  return data_lib.ArraySource(acts, index, chunk_rows)


def _pipe(src, mesh=None, **kw):
  kw = {"batch_size": 64, "seed": 3, "eval_prompts": [], "scale": 1.0,
        "shuffle_rows": 768, **kw}
  return data_lib.Pipeline(src, mesh=mesh or mesh_lib.make_mesh(), **kw)


def test_eval_split_is_by_prompt():
  src = _source()
  ev = data_lib.split_prompts(src.read_index()[:, 0], 0.2, seed=1)
  n_prompts = len(np.unique(src.index[:, 0]))
  assert len(ev) == round(0.2 * n_prompts)
  pipe = _pipe(src, eval_prompts=ev)
  seen = np.concatenate([pipe.local_batch_np(i)[:, 1]
                         for i in range(pipe.batches_in_epoch(0))])
  assert not np.isin(seen, ev).any()                         # no eval prompt in training
  x_eval = data_lib.load_eval(src, ev, None, 0, 1.0)
  assert np.isin(x_eval[:, 1], ev).all()                     # eval only from eval prompts
  assert len(x_eval) + pipe.num_train_rows == src.num_rows   # every row on one side
  assert set(np.unique(x_eval[:, 1])) == set(ev)
  # same seed, same split; another seed, another split
  np.testing.assert_array_equal(ev, data_lib.split_prompts(src.index[:, 0], 0.2, 1))
  assert not np.array_equal(ev, data_lib.split_prompts(src.index[:, 0], 0.2, 2))


def test_split_errors():
  with pytest.raises(data_lib.DataError, match="eval_fraction"):
    data_lib.split_prompts([0, 1, 2], 1.0, 0)
  with pytest.raises(data_lib.DataError, match="prompt"):
    data_lib.split_prompts([5, 5, 5], 0.1, 0)
  with pytest.raises(data_lib.DataError, match="batch_size"):
    _pipe(_source(n=100), batch_size=128)


def test_epoch_is_a_permutation_and_batches_are_pure_functions_of_step():
  src = _source()
  pipe = _pipe(src)
  nb = pipe.batches_in_epoch(0)
  rows = np.concatenate([pipe.local_batch_np(i)[:, 0] for i in range(nb)])
  assert len(np.unique(rows)) == len(rows) == nb * 64        # no row twice in an epoch
  assert not np.array_equal(rows[:64], np.sort(rows[:64]))   # shuffled
  fresh = _pipe(src)                                          # a "resumed" pipeline
  threaded = _pipe(src, read_threads=3, scale=1.7)            # parts filled in parallel
  scaled = _pipe(src, scale=1.7)
  for i in (nb + 5, 3, 0, nb - 1):                            # any order, any epoch
    np.testing.assert_array_equal(fresh.local_batch_np(i), pipe.local_batch_np(i))
    np.testing.assert_array_equal(threaded.local_batch_np(i), scaled.local_batch_np(i))
    np.testing.assert_array_equal(scaled.local_batch_np(i),
                                  pipe.local_batch_np(i) * np.float32(1.7))
  assert not np.array_equal(pipe.local_batch_np(nb)[:, 0], pipe.local_batch_np(0)[:, 0])
  it = pipe.iterate(start=7)                                  # prefetch thread, from step 7
  for i in range(7, 10):
    b = next(it)
    assert b.shape == (64, 8) and b.sharding.spec == P("data", None)
    np.testing.assert_array_equal(np.asarray(b), pipe.local_batch_np(i))
  it.close()


def test_each_process_reads_its_own_blocks():
  src = _source()
  mesh = mesh_lib.make_mesh()
  pipes = [_pipe(src, mesh, process_index=p, process_count=2) for p in range(2)]
  assert pipes[0].local_batch == 32
  blocks = [set(np.concatenate([g[1] for g in pp._groups(0, pp.pi)]).tolist()) for pp in pipes]
  assert not blocks[0] & blocks[1] and len(blocks[0] | blocks[1]) == src.num_blocks
  for pp, mine in zip(pipes, blocks):
    rows = pp.local_batch_np(2)[:, 0].astype(int)
    assert set((rows // src.chunk_rows).tolist()) <= mine


def test_normalisation_gives_mean_sq_norm_d():
  rng = np.random.default_rng(0)
  acts = (rng.normal(size=(4000, 16)) * rng.uniform(0.5, 4, 16) + 2).astype(np.float32)
  index = np.stack([np.arange(4000) // 40, np.arange(4000) % 40], 1)
  src = data_lib.ArraySource(acts, index, 256)
  sample = data_lib.sample_rows(src, [], 2000, seed=0)
  stats = data_lib.estimate_scale(sample)
  x = np.asarray(src.acts, np.float64) * stats["scale"]
  np.testing.assert_allclose(np.mean(np.sum(x * x, 1)), 16, rtol=0.05)
  np.testing.assert_allclose(np.mean(np.sum((sample * stats["scale"]) ** 2, 1)), 16, rtol=1e-5)
  with pytest.raises(data_lib.DataError):
    data_lib.estimate_scale(np.zeros((4, 3)))


def test_eval_batches_pad_and_shard():
  x = np.arange(50 * 4, dtype=np.float32).reshape(50, 4)
  got = list(data_lib.eval_batches(x, 16, mesh_lib.make_mesh()))
  assert [n for _, n in got] == [16, 16, 16, 2]
  assert all(b.shape == (16, 4) and b.sharding.spec == P("data", None) for b, _ in got)
  np.testing.assert_array_equal(np.asarray(got[-1][0])[:2], x[48:])


def test_fewer_blocks_than_data_streams_is_refused_with_one_line():
  src = _source(n=600, chunk_rows=512)                    # 2 blocks
  with pytest.raises(data_lib.DataError, match=r"2 block\(s\) \(stored chunks of 512 rows\) "
                                               r"for 4 data streams; set train.data_streams <= 2"):
    _pipe(src, streams=4)
  with pytest.raises(data_lib.DataError, match=r"data stream \d gets 88 training rows, fewer "
                                               "than its 128 per batch"):
    _pipe(src, streams=2, batch_size=256)                 # blocks of 512 and 88 rows
  assert _pipe(src, streams=2, batch_size=128).batches_in_epoch(0) == 88 // 64


def _distinct_prompts_per_batch(pipe, batches=20):
  return float(np.mean([len(np.unique(pipe.local_batch_np(i)[:, 1])) for i in range(batches)]))


def test_batches_mix_the_whole_dataset_at_bounded_memory():
  """A store written in prompt order (50 rows a prompt, 5 prompts a block): windows of an
  eighth of the data, read in 8 passes, mix as many prompts per batch as a full shuffle;
  the same windows read once (whole blocks only) mix a handful."""
  src = _source(n=20_000, rows_per_prompt=50, chunk_rows=256)
  full = _pipe(src, batch_size=256, shuffle_rows=1 << 20)
  bounded = _pipe(src, batch_size=256, shuffle_rows=2_500)
  blocks_only = _pipe(src, batch_size=256, shuffle_rows=2_500, max_passes=1)
  assert (full.passes, bounded.passes, blocks_only.passes) == (1, 8, 1)
  ref = _distinct_prompts_per_batch(full)
  assert ref > 150                                     # 400 prompts, batch 256
  assert _distinct_prompts_per_batch(bounded) >= 0.95 * ref
  assert _distinct_prompts_per_batch(blocks_only) < 0.5 * ref
  # Bounded: never more than ~3 windows per stream resident.
  for i in range(bounded.batches_in_epoch(0) + 3):
    bounded.local_batch_np(i)
    assert len(bounded._cache) <= 3
  rows = np.concatenate([bounded.local_batch_np(i)[:, 0]
                         for i in range(bounded.batches_in_epoch(0))])
  assert len(np.unique(rows)) == len(rows)            # still a permutation per epoch


def test_iterate_matches_direct_batches_and_counts_waiting():
  src = _source()
  pipe = _pipe(src)
  assert pipe.passes > 1
  it = pipe.iterate(5)
  for step in range(5, 9):
    np.testing.assert_array_equal(np.asarray(next(it)), _pipe(src).local_batch_np(step))
  it.close()
  assert pipe.wait_s >= 0.0


@pytest.mark.parametrize("damage,every_read,legacy", [
    ("remove", True, False), ("flip", True, False), ("flip", True, True),
    ("remove", False, False), ("flip", False, False)])
def test_a_shard_damaged_while_training_reads_fails_the_stream(tmp_path, monkeypatch, damage,
                                                              every_read, legacy):
  """A shard file removed (or one bit flipped in place) after the stream has read its rows
  clean: a later read of them, in a later window or epoch on a reader thread, stops the
  consumer with an error naming the file and the rows, instead of serving zeros or wrong
  rows. By default every read recomputes the checksum, so the flip is caught at once
  (same inode, same timestamp tick); with check_every_read=False it is caught because the
  file's identity changed. `legacy`: a store written before the algorithm was recorded."""
  import json
  import os
  import time
  from musicsae_jax import store
  monkeypatch.setattr(store.SiteReader, "_SETTLED_NS", 0)   # trust unchanged files at once
  ds = store.create(str(tmp_path / "ds"), {"s": store.SiteSpec(
      d=8, chunk_rows=64, shard_chunks=2, codec="none")}, prompts=[f"p{i}" for i in range(40)])
  rng = np.random.default_rng(0)
  with ds.writer() as w:
    for p in range(40):
      w.append("s", rng.normal(size=(32, 8)).astype(np.float32),
               np.stack([np.full(32, p), np.arange(32)], 1))
      w.commit([p])
  if legacy:                                  # as written before the algorithm was recorded
    rec_path = os.path.join(ds.path, "commits", "worker-0.json")
    rec = json.load(open(rec_path))
    del rec["checksum_algorithm"]
    json.dump(rec, open(rec_path, "w"))
  time.sleep(0.05)                            # past the timestamp tick of the last write
  site = store.open_dataset(ds.path).site("s")
  site.check_every_read = every_read
  reads = []
  real_read_block = site.read_block
  monkeypatch.setattr(site, "read_block", lambda i: (reads.append(i), real_read_block(i))[1])
  pipe = _pipe(site, shuffle_rows=256, read_threads=2)
  it = pipe.iterate(0)
  for _ in range(pipe.batches_in_epoch(0) + 1):     # every block read clean at least once
    next(it)
  assert 6 in reads and len(reads) >= site.num_blocks   # block 6: rows 384..447
  assert bool(site._verified) == (not every_read)   # only then are unchanged files trusted
  if not every_read:
    time.sleep(0.05)
  shard = os.path.join(ds.path, "sites", "s", "acts", "c", "3", "0")
  if damage == "remove":
    os.remove(shard)
    err, want = store.MissingDataError, f"{shard}: missing shard file holding committed rows 384..511"
  else:
    with open(shard, "r+b") as f:             # in place: same inode
      f.seek(200)                             # in chunk 0 of the shard: rows 384..447
      byte = f.read(1)[0]
      f.seek(200)
      f.write(bytes([byte ^ 0x10]))
    err, want = store.ChecksumError, f"{shard}: acts rows 384..447 of site 's' \\(worker 0\\)"
  with pytest.raises(err, match=want):
    for _ in range(3 * pipe.batches_in_epoch(0)):
      next(it)
  it.close()
