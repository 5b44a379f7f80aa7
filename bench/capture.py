"""Capture overhead and teacher-forced re-capture speed; prints one JSON object.

  python bench/capture.py                       # tiny random model, CPU
  python bench/capture.py --model=facebook/musicgen-small --device=cuda --duration=10

Reports generation time with vs without hooks (goal: <= 5% overhead) and frames/s of a
teacher-forced re-capture vs hooked generation for the same layers (goal: >= 5x).
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bridge.capture import record  # noqa: E402
from bridge.models import audiocraft_musicgen, backends  # noqa: E402


def _sync(device):
  if device.startswith("cuda"):
    torch.cuda.synchronize()


def main():
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--model", default="tiny", help="'tiny' (random, offline), a hub name or a dir")
  ap.add_argument("--device", default="cpu", help="torch device")
  ap.add_argument("--duration", type=float, default=2.0, help="seconds generated per prompt")
  ap.add_argument("--batch", type=int, default=8, help="prompts per generate call")
  ap.add_argument("--layers", default="all", help="'all' or comma-separated indices")
  ap.add_argument("--repeats", type=int, default=3, help="timed repetitions (median kept)")
  ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
  a = ap.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  model = (audiocraft_musicgen.build_tiny_musicgen(device=a.device) if a.model == "tiny"
           else audiocraft_musicgen.load_musicgen(a.model, device=a.device))
  info = backends.model_info(model)
  model.set_generation_params(duration=a.duration, top_k=min(250, info.card))
  layers = range(info.num_layers) if a.layers == "all" else [int(x) for x in a.layers.split(",")]
  sites = [f"lm.layer.{i}" for i in layers]
  texts = [f"prompt {i}: happy piano song" for i in range(a.batch)]
  record.generate_with_capture(model, texts, sites, seed=0)  # warm-up

  def once(fn):
    _sync(a.device)
    t = time.perf_counter()
    fn()
    _sync(a.device)
    return time.perf_counter() - t

  # Interleave plain/hooked runs so machine noise hits both alike.
  plain, hooked = [], []
  for r in range(a.repeats):
    plain.append(once(lambda: record.generate_tokens(model, texts, seed=r)))
    hooked.append(once(lambda: record.generate_with_capture(model, texts, sites, seed=r)))
  t_plain, t_hooked = statistics.median(plain), statistics.median(hooked)
  cap = record.generate_with_capture(model, texts, sites, seed=0)
  t_tf = statistics.median(
      once(lambda: record.teacher_forced_capture(model, texts, cap.tokens, sites))
      for _ in range(a.repeats))
  frames = a.batch * cap.tokens.shape[-1]
  print(json.dumps({
      "model": a.model, "device": a.device, "torch_threads": torch.get_num_threads(),
      "batch": a.batch, "duration_s": a.duration, "frames": frames, "layers": len(sites),
      "d_model": info.d_model, "repeats": a.repeats,
      "generate_s": round(t_plain, 4), "generate_hooked_s": round(t_hooked, 4),
      "hook_overhead_pct": round(100 * (t_hooked / t_plain - 1), 2),
      "hooked_frames_per_s": round(frames / t_hooked, 1),
      "teacher_forced_s": round(t_tf, 4),
      "teacher_forced_frames_per_s": round(frames / t_tf, 1),
      "teacher_forced_speedup": round(t_hooked / t_tf, 1),
  }, indent=1))


if __name__ == "__main__":
  main()
