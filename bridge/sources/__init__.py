"""Where inputs come from: prompt sets, audio datasets, and the synthesized ground-truth
concept set. No model code.

  prompts.py         the built-in emotion set and .txt / .jsonl / MusicCaps .csv loaders
  audio_datasets.py  audio dataset plugins (folder, MusicCaps, Song Describer, MTG-Jamendo, FMA)
  concepts.py        MIDI clips with exact music-theory labels (`launch.make_concepts`)
"""
