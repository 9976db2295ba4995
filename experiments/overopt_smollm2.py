"""Gold-RM best-of-n study at SmolLM2-135M scale (configs/overopt.py:smollm2).

SmolLM2-135M-Instruct samples responses to the synthetic prompts ("Say something kind about
cats.") with rmjax.inference.generate; the synthetic gold reward (which scores any text:
sentiment words, topic, length) labels pairs with 25% label noise; K=5 heads train on cached frozen SmolLM2
embeddings; best-of-n curves for single / mean / UWO / WCO / LCB go to <workdir>/eval/.

  HF_HUB_OFFLINE=1 python experiments/overopt_smollm2.py --workdir /tmp/overopt_smollm2 \
      --label_prompts 400 --bon_prompts 16 --pool 16 --max_new_tokens 32

Prints one JSON object last. On 2 CPU cores use the reduced sizes above or smaller.
"""

import argparse
import json
import sys

from configs import overopt as overopt_config
from rmjax.tasks import overopt


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="/tmp/overopt_smollm2")
  ap.add_argument("--label_prompts", type=int, default=400)
  ap.add_argument("--eval_prompts", type=int, default=64)
  ap.add_argument("--bon_prompts", type=int, default=16)
  ap.add_argument("--pool", type=int, default=16)
  ap.add_argument("--max_new_tokens", type=int, default=32)
  ap.add_argument("--noise", type=float, default=0.25)
  ap.add_argument("--head_steps", type=int, default=400)
  a = ap.parse_args()
  c = overopt_config.get_config(f"smollm2,noise={a.noise},pool={a.pool}")
  o = c.overopt
  o.label_prompts, o.eval_prompts, o.bon_prompts = a.label_prompts, a.eval_prompts, a.bon_prompts
  o.pool, o.max_new_tokens = a.pool, a.max_new_tokens
  c.ensemble.head_steps = a.head_steps
  c.train.progress = True
  out = overopt.run(c, a.workdir)
  curves = json.load(open(out["curves"]["json"]))
  out["gold_by_n"] = {k: [round(x, 3) for x in v["gold"]] for k, v in curves["curves"].items()}
  out["ns"] = curves["ns"]
  out["member_corr_with_gold"] = curves["member_corr_with_gold"]
  out["gold_base_mean"] = curves["gold_base_mean"]
  print(json.dumps(out, default=float))


if __name__ == "__main__":
  sys.exit(main())
