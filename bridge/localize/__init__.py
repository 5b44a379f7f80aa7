"""Where does a concept or a feature live in MusicGen? Downstream SAE fidelity, layer
ablation and activation patching, all on teacher-forced next-token distributions.

  stage.py           the `launch.localize` stage: runs the studies, writes reports/<run>/
  interventions.py   teacher-forced distributions under edits of one LM site (shared)
  fidelity.py        splice the SAE's reconstruction in, measure the loss
  layer_ablation.py  zero / mean / resample each block's contribution
  patching.py        patch run A's activations into run B, per site
  audio_pairs.py     pairs of audio clips that differ in one labelled concept
"""
