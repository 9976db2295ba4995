"""Does an exported tokenizer load and encode identically on transformers 4.x and 5.x? A manual
check (not collected by pytest: it needs a second environment), run once per change of
`rmjax.checkpoints.tokenizer_export`:

  python -m venv /tmp/clientenv && /tmp/clientenv/bin/pip install transformers==4.51.3
  python tests/tokenizer_compat.py --other /tmp/clientenv/bin/python OUT [OUT ...]

For each exported directory it loads `AutoTokenizer.from_pretrained(OUT)` in this interpreter
and in --other, encodes chat-rendered conversations (rendered by each side's own
`apply_chat_template`) plus raw texts, and compares the rendered text, the ids and the input
names. Prints one JSON object last; exit 1 on any difference.
"""

import argparse
import json
import subprocess
import sys

CHATS = [[{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo wörld ✓"},
          {"role": "assistant", "content": "Hi!\n\n  Indented   spaces\tand a tab."}]]
RAW = ["plain text, no template", " leading space", "emoji 🙂 and 中文"]


def encode(path: str) -> dict:
  import transformers  # noqa: PLC0415 -- the version under test
  tok = transformers.AutoTokenizer.from_pretrained(path)
  texts = [tok.apply_chat_template(c, tokenize=False) for c in CHATS] + RAW
  batch = tok(texts, add_special_tokens=False)
  return {"transformers": transformers.__version__, "class": type(tok).__name__,
          "texts": texts, "ids": batch["input_ids"], "keys": sorted(batch.keys()),
          "pad_token_id": tok.pad_token_id}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--other", help="python of the other transformers version")
  p.add_argument("--encode", action="store_true", help="(internal) print this side's encoding")
  p.add_argument("dirs", nargs="+")
  args = p.parse_args()
  if args.encode:
    print(json.dumps({d: encode(d) for d in args.dirs}))
    return 0
  here = {d: encode(d) for d in args.dirs}
  there = json.loads(subprocess.run([args.other, __file__, "--encode", *args.dirs], check=True,
                                    capture_output=True, text=True).stdout.splitlines()[-1])
  report, ok = {}, True
  for d in args.dirs:
    a, b = here[d], there[d]
    same = {k: a[k] == b[k] for k in ("texts", "ids", "keys", "pad_token_id")}
    ok &= all(same.values())
    report[d] = {"versions": [a["transformers"], b["transformers"]],
                 "classes": [a["class"], b["class"]], "identical": same,
                 "n_tokens": sum(map(len, a["ids"]))}
  print(json.dumps({"ok": ok, "dirs": report}))
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
