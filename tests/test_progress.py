"""Progress: the rate and ETA leave out warm-up; log files get plain meter lines."""
import time

from musicsae_jax import progress


def test_eta_leaves_out_warm_up(capsys):
  bar = progress.Progress(6, "work", "item", warmup=1, interactive=False, log_every=0.0)
  time.sleep(0.5)                           # the first item is slow (compilation)
  bar.update(1)
  for _ in range(5):
    time.sleep(0.02)
    bar.update(1, loss="1.0")
  bar.close()
  lines = capsys.readouterr().err.splitlines()
  assert lines[-1].startswith("work: 6/6 item") and "loss=1.0" in lines[-1]
  # 5 timed items in ~0.1 s: well above 10 items/s; with the warm-up it would be ~10/s.
  rate = float(lines[-1].split("item/s")[0].rsplit(",", 1)[1])
  assert rate > 20, lines[-1]
  assert "warming" not in "".join(lines)    # nothing printed before timing starts


def test_silent_and_single_item_progress_print_nothing_but_lines(capsys):
  progress.Progress(5, "x", disable=True, interactive=False).write("hidden")
  one = progress.Progress(1, "y", interactive=False)
  one.update(1)
  one.write("shown")
  assert capsys.readouterr().err.splitlines() == ["shown"]


def test_phase_lines(capsys):
  with progress.phase("loading model"):
    pass
  err = capsys.readouterr().err.splitlines()
  assert err[0] == "loading model ..." and err[1].startswith("loading model: done in ")


def test_heartbeat_speaks_only_while_a_long_step_runs():
  """A line every `every` seconds during a slow step; none for a quick one; none after."""
  import time
  lines = []
  with progress.heartbeat("probe emotion on sae:lm.layer.3", lines.append, every=0.05):
    time.sleep(0.18)
  n = len(lines)
  assert n >= 2 and all(ln.startswith("probe emotion on sae:lm.layer.3: still running, ")
                        for ln in lines), lines
  time.sleep(0.12)
  assert len(lines) == n                                     # stopped with the step
  quick = []
  with progress.heartbeat("quick", quick.append, every=0.5):
    pass
  assert quick == []
