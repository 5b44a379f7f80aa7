"""Which audio snippets each feature is labelled from and scored on (numpy only).

Per feature, from the streamed statistics of the analysis:
- activating clips: prompts holding one of the feature's scanned top frames, strongest
  first, one snippet per prompt centred on its strongest frame; alternate prompts go to
  `explain` (the labeller sees them) and `heldout_pos` (only the scorer sees them), so no
  prompt is in both;
- non-activating clips: prompts where the feature never fires (prompt max = 0), a random
  frame each; when too few clips are silent, the clips with the weakest maximum fill in
  (`clip_max` records it; the snippet's own activation is at most that). They are split
  into `contrast` (shown to the LLM labeller) and `heldout_neg`;
- `random`: snippets drawn uniformly over all prompts and frames, shared by every feature:
  the chance reference for "closer than chance".
A snippet is `[prompt_id, start_frame, num_frames]` (a window of `snippet_seconds` inside
the clip); identical windows are listed once, so the bridge embeds each clip window once.
"""
from __future__ import annotations

import numpy as np

FORMAT_VERSION = 1


class _Snippets:
  def __init__(self, counts: np.ndarray, window: int):
    self.counts, self.window = counts, window
    self.rows: list[list[int]] = []
    self._ids: dict[tuple, int] = {}

  def add(self, pid: int, frame: int) -> int:
    n = int(self.counts[pid])
    length = min(self.window, n)
    start = int(np.clip(frame - length // 2, 0, n - length))
    key = (int(pid), start, length)
    if key not in self._ids:
      self._ids[key] = len(self.rows)
      self.rows.append(list(key))
    return self._ids[key]


def choose(st, feature_ids: list[int], *, frame_rate: float, examples: int, contrast: int,
           random_snippets: int, snippet_seconds: float, seed: int) -> dict:
  """The example lists of `feature_ids` (see the module docstring); JSON-ready."""
  counts = np.asarray(st.prompt_count)
  window = max(1, int(round(snippet_seconds * frame_rate)))
  snip = _Snippets(counts, window)
  rng = np.random.default_rng(seed)
  with_rows = np.nonzero(counts > 0)[0]
  rand_p = rng.choice(with_rows, size=int(random_snippets), replace=True)
  random_ids = sorted({snip.add(int(p), int(rng.integers(counts[p]))) for p in rand_p})
  out = []
  for f in feature_ids:
    f = int(f)
    seen, act = set(), []
    for a, p, fr in st.top_frames(f):                    # strongest first
      a, p, fr = float(a), int(p), int(fr)
      if p not in seen:
        seen.add(p)
        act.append({"snippet": snip.add(p, fr), "prompt_id": p, "frame": fr, "activation": a})
    explain, heldout_pos = act[0::2][:examples], act[1::2][:examples]
    frng = np.random.default_rng([seed, f])
    pmax = np.asarray(st.prompt_max)[:, f]
    used = {e["prompt_id"] for e in explain + heldout_pos}
    cand = np.array([p for p in with_rows if p not in used], np.int64)
    silent = frng.permutation(cand[pmax[cand] <= 0])
    if len(silent) < 2 * contrast:                       # too few silent clips: the weakest
      weak = cand[pmax[cand] > 0]
      silent = np.concatenate([silent, weak[np.argsort(pmax[weak], kind="stable")]])
    neg = []
    for p in frng.permutation(silent[: 2 * contrast]):
      fr = int(frng.integers(counts[p]))
      neg.append({"snippet": snip.add(int(p), fr), "prompt_id": int(p), "frame": fr,
                  "activation": 0.0, "clip_max": float(pmax[p])})
    half = (len(neg) + 1) // 2
    out.append({"id": f, "explain": explain, "heldout_pos": heldout_pos,
                "contrast": neg[:half], "heldout_neg": neg[half:]})
  return {"format_version": FORMAT_VERSION, "frame_rate": float(frame_rate),
          "snippet_frames": window, "snippets": snip.rows, "random": random_ids, "features": out}
