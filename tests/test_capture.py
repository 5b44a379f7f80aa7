"""bridge.capture.record: every step recorded, conditional half, frame alignment, two paths agree."""
import numpy as np
import pytest
import torch

from bridge.models import capture_sites
from bridge.capture import record
from bridge.models import audiocraft_musicgen

torch.set_num_threads(1)
TEXTS = ["happy piano song for a summer picnic", "sad slow cello", "calm"]
LAYER_TOL = 1e-5  # hooks vs one batched forward: same math, different kernels (~1e-6 seen)


@pytest.fixture(scope="module")
def tiny():
  m = audiocraft_musicgen.build_tiny_musicgen(seed=0)
  m.set_generation_params(duration=0.4, top_k=50)  # 20 frames, 23 decoding steps
  return m


@pytest.fixture(scope="module")
def gen(tiny):
  return record.generate_with_capture(tiny, TEXTS, ["lm.layer.0", "lm.layer.3", "t5.hidden",
                                                     "t5.pooled", "cond.proj"],
                                       keep="both", seed=7)


def test_every_step_is_recorded_not_overwritten(tiny):
  """The overwrite-bug regression: one entry per decoding step, and the steps differ."""
  with record.LayerRecorder(tiny.lm, [2]) as rec:
    tokens = record.generate_tokens(tiny, TEXTS[:2], seed=1)
  T = tokens.shape[-1]
  assert T == 20 and len(rec.calls[2]) == T + 3           # delay pattern: T + max_delay steps
  steps = torch.stack(rec.calls[2])                        # [steps, 2B, D]
  assert steps.shape == (T + 3, 4, 64)
  diffs = (steps[1:] - steps[:-1]).abs().amax(dim=(1, 2))
  assert (diffs > 1e-3).all()                              # no two consecutive steps equal
  assert not tiny.lm.transformer.layers[2]._forward_hooks  # hooks removed on exit


def test_rows_are_one_per_frame_conditional_half(gen):
  for site in ("lm.layer.0", "lm.layer.3", "lm.layer.3.uncond"):
    assert [a.shape for a in gen.acts[site]] == [(20, 64)] * 3
  idx = gen.index("lm.layer.3", [10, 11, 12])
  assert idx.shape == (60, 2) and idx[:20, 0].tolist() == [10] * 20
  assert idx[:20, 1].tolist() == list(range(20))
  cond, uncond = gen.acts["lm.layer.3"][0], gen.acts["lm.layer.3.uncond"][0]
  assert np.abs(cond - uncond).max() > 1e-2               # the halves really differ


def test_cond_rows_equal_a_conditional_only_forward(tiny, gen):
  """Rows [:B] of the CFG batch == a plain forward of the LM with only the text conditions."""
  from audiocraft.modules.conditioners import ConditioningAttributes
  lm, tokens = tiny.lm, gen.tokens
  T = tokens.shape[-1]
  seq, _, _ = lm.pattern_provider.get_pattern(T).build_pattern_sequence(
      tokens, lm.special_token_id, keep_only_valid_steps=False)
  out = {}
  h = lm.transformer.layers[3].register_forward_hook(lambda m, a, o: out.setdefault("x", o))
  try:
    with torch.no_grad():
      attrs = [ConditioningAttributes(text={"description": t}) for t in TEXTS]
      ct = lm.condition_provider(lm.condition_provider.tokenize(attrs))
      lm(seq[..., :T], [], condition_tensors=ct)
  finally:
    h.remove()
  for b in range(3):
    np.testing.assert_allclose(gen.acts["lm.layer.3"][b], out["x"][b].numpy(), atol=LAYER_TOL)


@pytest.mark.parametrize("two_step", [False, True])
def test_hooked_capture_equals_teacher_forced(tiny, two_step):
  tiny.set_generation_params(duration=0.4, top_k=50, two_step_cfg=two_step)
  try:
    sites = ["lm.layer.0", "lm.layer.3", "lm.layer.1.attn", "lm.layer.2.cross_attn",
             "t5.hidden", "t5.pooled", "cond.proj"]
    g = record.generate_with_capture(tiny, TEXTS, sites, keep="both", seed=3)
    f = record.teacher_forced_capture(tiny, TEXTS, g.tokens, sites, keep="both")
  finally:
    tiny.set_generation_params(duration=0.4, top_k=50)
  assert set(g.acts) == set(f.acts)
  for s in g.acts:
    for a, b in zip(g.acts[s], f.acts[s]):
      assert a.shape == b.shape
      np.testing.assert_allclose(a, b, atol=LAYER_TOL, err_msg=s)


def test_t5_sites_match_a_direct_t5_call(tiny, gen):
  cond = audiocraft_musicgen.text_conditioner(tiny)
  inputs = cond.t5_tokenizer(TEXTS, return_tensors="pt", padding=True)
  with torch.no_grad():
    hidden = cond.t5(**inputs).last_hidden_state
    proj = cond.output_proj(hidden)
  for b in range(3):
    valid = inputs["attention_mask"][b].bool()
    np.testing.assert_allclose(gen.acts["t5.hidden"][b], hidden[b][valid].numpy(), atol=1e-5)
    np.testing.assert_allclose(gen.acts["t5.pooled"][b][0], hidden[b][valid].mean(0).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(gen.acts["cond.proj"][b], proj[b][valid].numpy(), atol=1e-5)
    assert len(gen.acts["t5.hidden"][b]) == int(valid.sum())


def test_bad_sites_raise():
  with pytest.raises(capture_sites.UnknownSiteError, match="layer 4 out of range.*4 layers"):
    capture_sites.parse_sites(["lm.layer.4"], 4)
  with pytest.raises(capture_sites.UnknownSiteError, match="unknown site 'lm.resid'"):
    capture_sites.parse_sites(["lm.resid"], 4)
  with pytest.raises(capture_sites.UnknownSiteError, match="no capture sites"):
    capture_sites.parse_sites([], 4)
  assert capture_sites.parse_sites(["t5.pooled", "lm.layer.1", "t5.pooled"], 4) == ["t5.pooled",
                                                                              "lm.layer.1"]
