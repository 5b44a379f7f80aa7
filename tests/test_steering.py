"""Steering hooks on the tiny random MusicGen: exact edits, windows, alpha=0, clamping."""
import numpy as np
import pytest
import torch

from bridge.capture import record
from bridge.models import audiocraft_musicgen
from bridge.steering import hooks
from bridge.models.sae_torch import TorchSAE

LAYER, B, T = 1, 2, 10            # 10 frames -> 13 decoding passes (delay pattern)
TEXTS = ["happy upbeat pop", "sad slow piano"]


@pytest.fixture(scope="module")
def model():
  torch.set_num_threads(1)
  m = audiocraft_musicgen.build_tiny_musicgen(seed=0)
  m.set_generation_params(duration=T / 50, use_sampling=True, top_k=50, cfg_coef=3.0)
  return m


def gen(model, seed=0):
  return record.generate_tokens(model, TEXTS, seed=seed)


class Probe:
  """Forward hook recording what it sees (registered before/after a steerer)."""

  def __init__(self, module):
    self.outs = []
    self.h = module.register_forward_hook(lambda m, a, o: self.outs.append(o.detach().clone()))

  def remove(self):
    self.h.remove()


def layer(model):
  return model.lm.transformer.layers[LAYER]


def probed(model, make_steerer, seed=0):
  """Outputs of the layer before and after the steering hook, per call."""
  before = Probe(layer(model))
  with make_steerer():
    after = Probe(layer(model))
    tokens = gen(model, seed)
    after.remove()
  before.remove()
  return before.outs, after.outs, tokens


def test_adds_exactly_alpha_v_on_chosen_rows_and_steps(model):
  v = torch.randn(model.lm.dim)
  v /= v.norm()
  alpha, rel, (start, stop) = 0.5, 3.0, (3, 7)
  before, after, _ = probed(model, lambda: hooks.add_direction(
      model, LAYER, v, alpha, relative_to=rel, half="cond", steps=(start, stop)))
  assert len(before) == T + 3
  for i, (b, a) in enumerate(zip(before, after)):
    assert b.shape == (2 * B, 1, model.lm.dim)
    if start <= i < stop:
      assert torch.equal(a[:B], b[:B] + alpha * rel * v)
      assert not torch.equal(a[:B], b[:B])
    else:
      assert torch.equal(a[:B], b[:B])
    assert torch.equal(a[B:], b[B:])                       # unconditional half untouched


def test_uncond_half_and_both(model):
  v = torch.ones(model.lm.dim)
  before, after, _ = probed(model, lambda: hooks.add_direction(model, LAYER, v, 2.0, half="uncond"))
  for b, a in zip(before, after):
    assert torch.equal(a[:B], b[:B]) and torch.equal(a[B:], b[B:] + 2.0 * v)
  before, after, _ = probed(model, lambda: hooks.add_direction(model, LAYER, v, 2.0, half="both",
                                                                  steps=(None, 1)))
  assert torch.equal(after[0], before[0] + 2.0 * v)
  assert all(torch.equal(a, b) for a, b in zip(after[1:], before[1:]))


def test_alpha_zero_bit_identical_and_hooks_removed(model):
  n_hooks = len(layer(model)._forward_hooks)
  base = gen(model)
  v = torch.randn(model.lm.dim)
  with hooks.add_direction(model, LAYER, v, 0.0, half="both") as s, \
       hooks.add_text_direction(model, torch.randn(model.lm.dim), 0.0, half="both"):
    assert len(layer(model)._forward_hooks) == n_hooks + 1
    same = gen(model)
  assert s.calls == T + 3
  assert torch.equal(same, base)
  assert len(layer(model)._forward_hooks) == n_hooks
  assert not audiocraft_musicgen.text_conditioner(model).output_proj._forward_hooks
  with hooks.add_direction(model, LAYER, v, 50.0, half="both"):
    steered = gen(model)
  assert not torch.equal(steered, base)                    # the hook does act
  assert torch.equal(gen(model), base)                     # and is gone afterwards


def test_hooks_compose(model):
  v, w = torch.randn(model.lm.dim), torch.randn(model.lm.dim)
  before = Probe(layer(model))
  with hooks.add_direction(model, LAYER, v, 1.0), hooks.add_direction(model, LAYER, w, 2.0):
    after = Probe(layer(model))
    gen(model)
    after.remove()
  before.remove()
  for b, a in zip(before.outs, after.outs):
    assert torch.equal(a[:B], (b[:B] + v) + 2.0 * w) and torch.equal(a[B:], b[B:])


def orthonormal_sae(d, m=8, seed=0):
  """ReLU SAE with orthonormal decoder rows, W_enc = W_dec.T, features 0 and 1 always on:
  re-encoding is then exact enough to check that only the chosen latents move."""
  g = torch.Generator().manual_seed(seed)
  q, _ = torch.linalg.qr(torch.randn(d, m, generator=g))
  b_enc = torch.zeros(m)
  b_enc[:2] = 50.0
  tensors = {"W_enc": q.contiguous(), "W_dec": q.T.contiguous(), "b_enc": b_enc,
             "b_dec": 0.1 * torch.randn(d, generator=g)}
  return TorchSAE(tensors, {"musicsae": {"architecture": "relu", "layer": LAYER}})


def test_clamp_changes_only_chosen_latents(model):
  sae = orthonormal_sae(model.lm.dim)
  feats = {0: 3.0, 1: ("scale", 0.0)}
  before, after, _ = probed(model, lambda: hooks.clamp_features(
      model, LAYER, sae, feats, half="cond", steps=(2, 9)))
  Wd = sae.W_dec[[0, 1]]
  for i, (b, a) in enumerate(zip(before, after)):
    assert torch.equal(a[B:], b[B:])
    if not 2 <= i < 9:
      assert torch.equal(a[:B], b[:B])
      continue
    diff = (a[:B] - b[:B]).reshape(-1, model.lm.dim)
    resid = diff - (diff @ Wd.T) @ Wd                      # outside span(chosen rows)
    assert resid.abs().max() < 1e-4
    zb, za = sae.encode(b[:B]), sae.encode(a[:B])
    assert torch.allclose(za[..., 0], torch.full_like(za[..., 0], 3.0), atol=1e-4)
    assert torch.allclose(za[..., 1], torch.zeros_like(za[..., 1]), atol=1e-4)
    assert torch.allclose(za[..., 2:], zb[..., 2:], atol=1e-4)
    assert (zb[..., 0] - 3.0).abs().max() > 1e-2           # the clamp did something


def test_clamp_noop_is_identity_up_to_roundoff(model):
  sae = orthonormal_sae(model.lm.dim)
  before, after, _ = probed(model, lambda: hooks.clamp_features(model, LAYER, sae,
                                                                   {0: ("scale", 1.0)}))
  for b, a in zip(before, after):
    assert torch.equal(a, b)


def test_text_direction_edits_cond_rows(model):
  proj = audiocraft_musicgen.text_conditioner(model).output_proj
  v = torch.randn(proj.out_features)
  before = Probe(proj)
  with hooks.add_text_direction(model, v, 1.5, half="cond"):
    after = Probe(proj)
    gen(model)
    after.remove()
  before.remove()
  (b,), (a,) = before.outs, after.outs
  n = b.shape[0] // 2
  assert torch.equal(a[:n], b[:n] + 1.5 * v) and torch.equal(a[n:], b[n:])


def test_bad_args(model):
  with pytest.raises(ValueError, match="half"):
    hooks.add_direction(model, LAYER, torch.zeros(model.lm.dim), 1.0, half="x")
  with pytest.raises(ValueError, match="width"):
    hooks.add_direction(model, LAYER, torch.zeros(3), 1.0)
  with pytest.raises(ValueError, match="layer"):
    hooks.add_direction(model, 99, torch.zeros(model.lm.dim), 1.0)
  with pytest.raises(ValueError, match="trained on layer"):
    hooks.clamp_features(model, 0, orthonormal_sae(model.lm.dim), {0: 1.0})


def test_two_step_cfg_edits_conditional_calls_only(model):
  v = torch.randn(model.lm.dim)
  model.set_generation_params(duration=T / 50, use_sampling=True, top_k=50, cfg_coef=3.0,
                              two_step_cfg=True)
  try:
    before, after, _ = probed(model, lambda: hooks.add_direction(model, LAYER, v, 1.0,
                                                                    half="cond", steps=(2, 5)))
  finally:
    model.set_generation_params(duration=T / 50, use_sampling=True, top_k=50, cfg_coef=3.0)
  assert len(before) == 2 * (T + 3) and before[0].shape[0] == B
  for c, (b, a) in enumerate(zip(before, after)):
    step, is_cond = c // 2, c % 2 == 0
    if is_cond and 2 <= step < 5:
      assert torch.equal(a, b + v)
    else:
      assert torch.equal(a, b)


def test_vector_cast_to_activation_dtype(model):
  s = hooks.add_direction(model, LAYER, torch.ones(model.lm.dim), 0.25, half="both")
  x = torch.zeros(4, 1, model.lm.dim, dtype=torch.float16)
  y = s._hook(None, (), x)
  assert y.dtype == torch.float16 and torch.equal(y, x + 0.25)


def test_unsteered_reread_nll_and_replay(model):
  """The drift measure: per-prompt token NLL under the unsteered model, and the replayed
  feature on the same pass, equal to the established teacher-forced capture path."""
  from bridge.steering import experiment
  sae = orthonormal_sae(model.lm.dim)
  tokens = gen(model)
  rr = experiment.unsteered_reread(model, TEXTS, tokens, LAYER, sae, [0, 3])
  cap = record.teacher_forced_capture(model, TEXTS, tokens, [f"lm.layer.{LAYER}"])
  for b, rows in enumerate(cap.acts[f"lm.layer.{LAYER}"]):
    ref = sae.encode(torch.from_numpy(rows).float())[:, [0, 3]].mean(0)
    assert np.allclose(rr["replay"][b], ref.numpy(), atol=1e-4)
  alone = experiment.unsteered_reread(model, TEXTS[:1], tokens[:1], LAYER, None, [])
  assert abs(alone["nll"][0] - rr["nll"][0]) < 1e-4          # per prompt, batch-independent
  rand = torch.randint(0, model.lm.card, tokens.shape, generator=torch.Generator().manual_seed(0))
  noise = experiment.unsteered_reread(model, TEXTS, rand, LAYER, None, [])
  assert all(g < r for g, r in zip(rr["nll"], noise["nll"]))  # sampled codes are likelier
  with hooks.add_direction(model, LAYER, torch.randn(model.lm.dim), 20.0, half="both"):
    steered = gen(model)
  drift = experiment.unsteered_reread(model, TEXTS, steered, LAYER, None, [])
  assert np.mean(drift["nll"]) > np.mean(rr["nll"])           # a hard push is surprising


@pytest.mark.parametrize("schedule, weight", [
    ("every:3", lambda k: float(k % 3 == 0)),
    ("ramp:4", lambda k: min(1.0, (k + 1) / 4)),
])
def test_schedules_fire_on_the_right_steps(model, schedule, weight):
  v = torch.randn(model.lm.dim)
  start, stop = 2, 11
  before, after, _ = probed(model, lambda: hooks.add_direction(
      model, LAYER, v, 1.0, steps=(start, stop), schedule=schedule))
  for i, (b, a) in enumerate(zip(before, after)):
    w = weight(i - start) if start <= i < stop else 0.0
    assert torch.allclose(a[:B] - b[:B], (w * v).expand_as(b[:B]), atol=1e-6), (i, w)
    assert torch.equal(a[B:], b[B:])


def test_clamp_ramp_scales_the_sae_edit(model):
  sae = orthonormal_sae(model.lm.dim)
  full_b, full_a, _ = probed(model, lambda: hooks.clamp_features(model, LAYER, sae, {0: 3.0}))
  ramp_b, ramp_a, _ = probed(model, lambda: hooks.clamp_features(model, LAYER, sae, {0: 3.0},
                                                                    schedule="ramp:5"))
  assert torch.equal(ramp_b[0], full_b[0])                   # same first input (same seed)
  d_full, d_ramp = full_a[0] - full_b[0], ramp_a[0] - ramp_b[0]
  assert torch.allclose(d_ramp, d_full / 5, atol=1e-5)       # step 0 of a 5-step ramp: 1/5
  assert torch.equal(d_ramp[B:], torch.zeros_like(d_ramp[B:]))


def test_schedule_errors_and_alpha_zero_with_schedule(model):
  for bad in ("every", "every:0", "sometimes:3"):
    with pytest.raises(ValueError, match="schedule"):
      hooks.add_direction(model, LAYER, torch.zeros(model.lm.dim), 1.0, schedule=bad)
  base = gen(model)
  with hooks.add_direction(model, LAYER, torch.randn(model.lm.dim), 0.0, half="both",
                              schedule="ramp:3"):
    assert torch.equal(gen(model), base)


def test_transplant_reproduces_the_source_pattern(model):
  """Record features 0,1 on generations of other prompts, impose them: the SAE reads the
  source pattern back at every transplanted step, nothing outside their span moves."""
  sae = orthonormal_sae(model.lm.dim)
  _, pattern = hooks.record_features(model, ["dark ambient drone", "bright fast ska"],
                                        LAYER, sae, [0, 1], seed=1)
  assert pattern.shape == (B, T, 2)
  before, after, _ = probed(model, lambda: hooks.transplant_features(
      model, LAYER, sae, [0, 1], pattern))
  Wd = sae.W_dec[[0, 1]]
  for i, (b, a) in enumerate(zip(before, after)):
    assert torch.equal(a[B:], b[B:])
    if i >= T:                                               # beyond the pattern: untouched
      assert torch.equal(a, b)
      continue
    za = sae.encode(a[:B, 0])[:, [0, 1]]
    assert torch.allclose(za, pattern[:, i], atol=1e-4)      # the source pattern, step i
    diff = (a[:B] - b[:B]).reshape(-1, model.lm.dim)
    assert (diff - (diff @ Wd.T) @ Wd).abs().max() < 1e-4
  assert (pattern[:, :, 0] - sae.encode(before[0][:B, 0])[:, 0:1]).abs().max() > 1e-2
