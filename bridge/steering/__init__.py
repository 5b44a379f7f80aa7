"""Steering MusicGen with exported directions, and the experiment that measures it.

  hooks.py       steering context managers (add a direction, clamp / transplant SAE
                 features, steer the text) and loading exported directions
  experiment.py  the `launch.steer` experiment: baselines, methods x strengths, controls
  controls.py    control directions of the same norm (gaussian, decoder rows, covariance)
  stats.py       paired statistics, rank p against controls, the verdict per feature
"""
