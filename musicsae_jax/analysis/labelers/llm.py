"""LLM explanations of features and LLM detection scoring, over plain HTTP.

Any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, Ollama, llama.cpp server, a
hosted API), set by environment variables:
  MUSICSAE_LLM_URL      base URL, e.g. http://localhost:8000/v1 (or the full
                        .../chat/completions URL); unset: the LLM labeler is skipped
  MUSICSAE_LLM_MODEL    the served model name (required with a URL)
  MUSICSAE_LLM_API_KEY  optional bearer token
Each response is cached on disk under the SHA-256 of its request (URL + JSON payload), so
a rerun sends nothing; 5xx, 429 and timeouts are retried with exponential backoff.
Examples reach the model as text: the prompt caption and labels, the time window, CLAP's
closest descriptors for the snippet and (for explanation) the activation. Detection has a
blind mode (`with_text=False`): no caption and no labels, so a label cannot be matched to
the snippets by reading the prompts (`DETECTION_MODES`). With
`analysis.labeling.llm_audio=True` (an audio-capable model) the explain request also carries
each example snippet as an OpenAI-style `input_audio` part (base64 WAV, the same cut the
CLAP labeler embeds).
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request

import numpy as np

from musicsae_jax import files

ENV_URL, ENV_MODEL, ENV_KEY = "MUSICSAE_LLM_URL", "MUSICSAE_LLM_MODEL", "MUSICSAE_LLM_API_KEY"
# analysis.labeling.llm_detection: what the detecting LLM sees of each held-out snippet
DETECTION_MODES = {
    "blind": "no caption, no labels",
    "with_captions": "its caption and prompt labels too (a label can be matched by reading)"}


class LLMError(RuntimeError):
  """The endpoint refused or kept failing (one line: URL and what came back)."""


class Client:
  """`chat(messages) -> str` with an on-disk cache and retries."""

  def __init__(self, url: str, model: str, api_key: str = "", *, cache_dir: str,
               timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
               temperature: float = 0.0, max_tokens: int = 256):
    url = url.rstrip("/")
    self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
    self.model, self.api_key, self.cache_dir = model, api_key, cache_dir
    self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
    self.temperature, self.max_tokens = temperature, max_tokens
    self.requests = self.cache_hits = 0

  @classmethod
  def from_env(cls, cache_dir: str, **kw) -> tuple["Client | None", str]:
    """(client, description) or (None, why the LLM labeler is skipped)."""
    url = os.environ.get(ENV_URL, "")
    if not url:
      return None, f"{ENV_URL} is not set (an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1)"
    model = os.environ.get(ENV_MODEL, "")
    if not model:
      raise LLMError(f"{ENV_URL} is set but {ENV_MODEL} is not: name the served model")
    c = cls(url, model, os.environ.get(ENV_KEY, ""), cache_dir=cache_dir, **kw)
    return c, f"{model} at {c.url}"

  def payload(self, messages: list[dict]) -> dict:
    return {"model": self.model, "messages": messages, "temperature": self.temperature,
            "max_tokens": self.max_tokens}

  def chat(self, messages: list[dict]) -> str:
    body = json.dumps(self.payload(messages), sort_keys=True)
    key = hashlib.sha256(f"{self.url}\n{body}".encode()).hexdigest()
    path = os.path.join(self.cache_dir, key[:2], key + ".json")
    if os.path.exists(path):
      self.cache_hits += 1
      with open(path) as f:
        return json.load(f)["content"]
    content = self._post(body)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    files.write_json(path, {"request": json.loads(body), "content": content}, indent=None)
    return content

  def _post(self, body: str) -> str:
    headers = {"Content-Type": "application/json"}
    if self.api_key:
      headers["Authorization"] = f"Bearer {self.api_key}"
    last = ""
    for attempt in range(self.retries + 1):
      if attempt:
        time.sleep(self.backoff * 2 ** (attempt - 1))
      self.requests += 1
      req = urllib.request.Request(self.url, data=body.encode(), headers=headers, method="POST")
      try:
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
          reply = json.loads(r.read().decode())
        return reply["choices"][0]["message"]["content"] or ""
      except urllib.error.HTTPError as e:
        last = f"HTTP {e.code} {e.reason}"
        if e.code < 500 and e.code != 429:
          raise LLMError(f"{self.url}: {last}: {e.read()[:200].decode(errors='replace')}") from e
      except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
        last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
      except (KeyError, IndexError, ValueError) as e:
        raise LLMError(f"{self.url}: not an OpenAI-compatible chat completion reply ({e!r})") from e
    raise LLMError(f"{self.url}: failed after {self.retries + 1} attempts (last: {last})")


# --- prompts ---------------------------------------------------------------------------------

SYSTEM = ("You explain features of a sparse autoencoder trained on a music generation model's "
          "activations. Each example is a short audio snippet of generated music, described "
          "in text.")


def describe(ex: dict, prompts: list[dict], frame_rate: float, window: list[int],
             clap_words: list[str] | None, with_activation: bool, with_text: bool = True,
             sounds: list[str] | None = None) -> str:
  """One example as a line of text; `with_text=False` leaves out the caption and labels;
  `sounds`: its acoustic descriptors furthest from typical (labelers.descriptors)."""
  p = prompts[ex["prompt_id"]]
  labels = ", ".join(f"{k}={v}" for k, v in (p.get("labels") or {}).items())
  t0, t1 = window[1] / frame_rate, (window[1] + window[2]) / frame_rate
  parts = ([f'caption "{p.get("text", "")}"'] + ([f"labels {labels}"] if labels else [])
           if with_text else [])
  parts.append(f"time {t0:.1f}-{t1:.1f} s")
  if sounds:
    parts.append("sounds: " + ", ".join(sounds))
  if clap_words:
    parts.append("CLAP hears: " + ", ".join(clap_words))
  if with_activation:
    weak = ex.get("clip_max", 0.0)
    parts.append(f"activation at most {weak:.3g} (a weak clip)" if weak > 0
                 else f"activation {ex['activation']:.3g}")
  return "; ".join(parts)


class SnippetAudio:
  """A snippet `[prompt_id, start_frame, num_frames]` as WAV bytes, cut from
  `<audio_dir>/<prompt_id:06d>.wav` exactly as bridge.measures.clap_labels cuts it for CLAP (mono
  mean of the channels, sample bounds rounded from the frame bounds)."""

  def __init__(self, audio_dir: str, frame_rate: float, snippets: list[list[int]]):
    self.audio_dir, self.frame_rate, self.snippets = audio_dir, float(frame_rate), snippets

  def cut(self, snippet: int) -> tuple[np.ndarray, int]:
    import soundfile as sf
    pid, start, length = self.snippets[snippet]
    path = os.path.join(self.audio_dir, f"{pid:06d}.wav")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: analysis.labeling.llm_audio needs the extracted "
                              f"audio (extract with --config.extract.save_audio=True)")
    y, rate = sf.read(path, dtype="float32", always_2d=True)
    a = int(round(start / self.frame_rate * rate))
    b = int(round((start + length) / self.frame_rate * rate))
    return y[a:max(b, a + 1)].mean(1), rate

  def wav_base64(self, snippet: int) -> str:
    import soundfile as sf
    y, rate = self.cut(snippet)
    buf = io.BytesIO()
    sf.write(buf, y, rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _audio_parts(title: str, clips: list[str]) -> list[dict]:
  parts = []
  for i, data in enumerate(clips):
    parts.append({"type": "text", "text": f"Audio of {title} snippet {i + 1}:"})
    parts.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
  return parts


def explain_messages(feature: dict, top: list[str], contrast: list[str], context: list[str],
                     audio: tuple[list[str], list[str]] | None = None) -> list[dict]:
  """The explain request; `audio`: base64 WAVs of the top and contrast snippets (in order),
  sent as `input_audio` content parts after the text."""
  lines = [f"Feature {feature['id']}."] + context
  lines += ["Snippets where it is most active:"] + [f"{i + 1}. {t}" for i, t in enumerate(top)]
  if contrast:
    lines += ["Snippets where it is silent or weakest:"]
    lines += [f"{i + 1}. {t}" for i, t in enumerate(contrast)]
  lines.append("In at most 8 words, what does this feature detect in the music? Reply with "
               "the description only.")
  content: str | list = "\n".join(lines)
  if audio is not None:
    content = ([{"type": "text", "text": content}] + _audio_parts("most active", audio[0]) +
               _audio_parts("silent or weakest", audio[1]))
  return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


def detect_messages(explanation: str, examples: list[str]) -> list[dict]:
  lines = [f'A feature is described as: "{explanation}".',
           "For each snippet below, answer 1 if the feature is likely active in it, else 0."]
  lines += [f"{i + 1}. {t}" for i, t in enumerate(examples)]
  lines.append(f"Reply with only a JSON list of {len(examples)} integers (0 or 1), in order.")
  return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def clean_label(text: str) -> str:
  line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
  return line.strip().strip('"\'').strip()[:120]


def parse_answers(text: str, n: int) -> list[int] | None:
  """The first JSON list of n 0/1 values in the reply, or None."""
  for m in re.finditer(r"\[[^\[\]]*\]", text):
    try:
      v = json.loads(m.group(0))
    except ValueError:
      continue
    if isinstance(v, list) and len(v) == n and all(x in (0, 1, True, False) for x in v):
      return [int(x) for x in v]
  return None
