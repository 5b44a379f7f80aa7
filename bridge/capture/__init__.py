"""Recording activations: hooks on MusicGen's sites during generation or a teacher-forced
pass, from text prompts or from audio, written into the activation store (extraction).

  record.py         the recorders and the two capture paths (generation, teacher-forced)
  from_audio.py     audio -> EnCodec codes -> one teacher-forced capture
  extract.py        the `launch.extract` stage: prompts -> capture -> the store (resumable)
  extract_audio.py  the audio source of extraction: dataset items -> windows -> captures
"""
