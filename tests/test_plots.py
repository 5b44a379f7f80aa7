"""Run plots read as the numbers they show (matplotlib's offset notation hides them)."""
import numpy as np

from musicsae_jax import plots


def _rows(l0):
  return [{"kind": "train", "step": s, "loss": 1.0 / (s + 1), "mse": 0.5 / (s + 1), "l0": v,
           "fvu": 0.3, "dead_frac": 0.0, "lr": 1e-3} for s, v in enumerate(l0)]


def _yticks(ax):
  ax.figure.canvas.draw()
  labels = [t.get_text().replace("\u2212", "-") for t in ax.get_yticklabels() if t.get_text()]
  return ax.yaxis.get_offset_text().get_text(), [float(t) for t in labels]


def test_constant_l0_reads_as_its_value():
  """TopK's L0 is k up to float noise: the panel's ticks must say 16, with no offset."""
  fig = plots.training_figure(_rows(16 + np.tile([2e-6, -2e-6], 20)))
  ax = next(a for a in fig.axes if a.get_title() == "L0")
  offset, ticks = _yticks(ax)
  assert offset == "" and ticks and all(13 <= t <= 19 for t in ticks), (offset, ticks)
  assert 16.0 in ticks
  plots.pyplot().close(fig)


def test_a_moving_l0_keeps_plain_ticks():
  fig = plots.training_figure(_rows(np.linspace(1000.0, 1000.5, 40)))
  ax = next(a for a in fig.axes if a.get_title() == "L0")
  offset, ticks = _yticks(ax)
  assert offset == "" and min(ticks) >= 999 and max(ticks) <= 1001, (offset, ticks)
  plots.pyplot().close(fig)
