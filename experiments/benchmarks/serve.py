"""`rmjax serve` throughput and latency at client concurrency 1 / 8 / 32 vs offline scoring of
the same texts.

Arms, the same (prompt, response) items in each:
  offline   `Scorer.score` on all items in this process (what `rmjax score` runs, warm: the
            second call, so load and compile are not counted)
  serve@C   a real `rmjax serve` process on a free port, C client threads (one keep-alive HTTP
            connection each) sending `--per_request` items per POST /v1/score until all items
            are scored; per-request latency p50 / p99, items/s over the wall time, and the
            server's forwards in that arm (from /health: how many, rows per forward, the share
            of padded tokens that were real)
The server's rewards are checked against the offline ones (max abs difference). Items: both
responses of each pair of `--data` (default synthetic:N; e.g. shared:hh_rlhf for real lengths).
Without --workdir / --model a tiny BT run is trained into a temp dir first (2 steps). Prints one
JSON object last.

  python -m experiments.benchmarks.serve [--workdir W | --model hf:DIR] [--data SPEC] [--items 512]
      [--per_request 1] [--concurrency 1,8,32] [--batch_size 16] [--max_length N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from rmjax.data.specs import load_pairs
from rmjax.inference.embed import bucket_length
from rmjax.tasks.runs import load_scorer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_workdir(root: str) -> str:
  wd = os.path.join(root, "bt")
  subprocess.run([sys.executable, "-m", "rmjax", "train", "--config", "configs/bt.py:tiny",
                  "--workdir", wd, "--config.train.steps=2", "--config.train.eval_every=0",
                  "--config.train.checkpoint_every=2", "--config.data.source=synthetic:32",
                  "--config.data.eval_source=synthetic:8", "--config.train.progress=False",
                  "--config.train.tensorboard=False"], cwd=REPO, check=True,
                 stdout=subprocess.DEVNULL)
  return wd


def items_of(spec: str, n: int) -> list:
  examples, _ = load_pairs(spec, seed=0, limit=(n + 1) // 2)
  out = []
  for ex in examples:
    prompt = [{"role": r, "content": c} for r, c in ex.prompt]
    out += [{"prompt": prompt, "response": ex.chosen}, {"prompt": prompt, "response": ex.rejected}]
  return out[:n]


def start_server(source_flags: list, batch_size: int):
  proc = subprocess.Popen([sys.executable, "-m", "rmjax", "serve", *source_flags, "--port", "0",
                           "--batch_size", str(batch_size)],
                          cwd=REPO, stdout=subprocess.PIPE, text=True)
  line = proc.stdout.readline()
  if " on http://" not in line:
    raise SystemExit(f"rmjax serve did not start: {line!r}")
  return proc, int(line.rsplit(":", 1)[1])


def post(conn, items) -> list:
  conn.request("POST", "/v1/score", body=json.dumps({"items": items}),
               headers={"Content-Type": "application/json"})
  resp = conn.getresponse()
  body = json.loads(resp.read())
  if resp.status != 200:
    raise RuntimeError(f"{resp.status}: {body}")
  return [r["reward"] for r in body["results"]]


def get(port: int, path: str) -> dict:
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
  conn.request("GET", path)
  out = json.loads(conn.getresponse().read())
  conn.close()
  return out


def forwards(before: dict, after: dict) -> dict:
  """The server's forwards between two /health answers."""
  d = {k: after.get(k, 0) - before.get(k, 0) for k in ("forwards", "rows", "tokens", "padded_tokens")}
  return {"forwards": d["forwards"], "rows_per_forward": round(d["rows"] / max(d["forwards"], 1), 2),
          "real_token_share": round(d["tokens"] / max(d["padded_tokens"], 1), 3)}


def load(port: int, items: list, concurrency: int, per_request: int) -> dict:
  """All items through `concurrency` client threads; rewards in item order and latencies."""
  chunks = [(i, items[i:i + per_request]) for i in range(0, len(items), per_request)]
  rewards, latencies, lock, it = [None] * len(items), [], threading.Lock(), iter(chunks)

  def worker():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    while True:
      with lock:
        job = next(it, None)
      if job is None:
        break
      t = time.perf_counter()
      got = post(conn, job[1])
      dt = time.perf_counter() - t
      with lock:
        latencies.append(dt)
        rewards[job[0]:job[0] + len(got)] = got
    conn.close()

  t0 = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    for f in [pool.submit(worker) for _ in range(concurrency)]:
      f.result()
  wall = time.perf_counter() - t0
  lat = sorted(latencies)
  return {"wall_s": round(wall, 3), "items_per_s": round(len(items) / wall, 2),
          "requests": len(lat), "p50_ms": round(1000 * statistics.median(lat), 2),
          "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2),
          "rewards": rewards}


def offline_share(lengths: list, batch_size: int) -> float:
  """Real / padded tokens of offline scoring: length-sorted rows in full batches, each padded to
  its longest row's bucket (`rmjax.inference.embed.batched_forward` on one device)."""
  lengths = sorted(lengths)
  padded = sum(batch_size * bucket_length(max(lengths[i:i + batch_size]))
               for i in range(0, len(lengths), batch_size))
  return round(sum(lengths) / max(padded, 1), 3)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", default=None)
  p.add_argument("--model", default=None, help="hf:DIR instead of --workdir")
  p.add_argument("--data", default="synthetic:512")
  p.add_argument("--items", type=int, default=512)
  p.add_argument("--per_request", type=int, default=1)
  p.add_argument("--concurrency", default="1,8,32")
  p.add_argument("--batch_size", type=int, default=16, help="rows per forward (both arms)")
  p.add_argument("--max_length", type=int, default=None, help="cut inputs to N tokens (both arms)")
  args = p.parse_args(argv)
  tmp = tempfile.mkdtemp(prefix="rmjax-serve-bench-")
  source = args.model or args.workdir or tiny_workdir(tmp)
  items = items_of(args.data, args.items)

  scorer = load_scorer(source, batch_size=args.batch_size, max_length=args.max_length)
  prompts, responses = [i["prompt"] for i in items], [i["response"] for i in items]
  scorer.score(prompts, responses, progress=False)  # compile every bucket these items reach
  t = time.perf_counter()
  offline = scorer.score(prompts, responses, progress=False)["reward"]
  offline_s = time.perf_counter() - t
  tokens = [len(r) for r in scorer.rows(prompts, responses)[0]]
  del scorer
  result = {"source": source, "data": args.data, "items": len(items),
            "tokens_mean": round(float(np.mean(tokens)), 1), "per_request": args.per_request, "batch_size": args.batch_size,
            "max_length": args.max_length,
            "offline": {"wall_s": round(offline_s, 3), "items_per_s": round(len(items) / offline_s, 2),
                        "real_token_share": offline_share(tokens, args.batch_size)},
            "serve": {}}
  flags = ["--model", source] if args.model else ["--workdir", source]
  if args.max_length:
    flags += ["--max_length", str(args.max_length)]
  proc, port = start_server(flags, args.batch_size)
  try:
    result["forward_cost_s"] = get(port, "/v1/model").get("forward_cost_s")
    load(port, items[:64], 8, args.per_request)  # warm connections and any late shape
    for c in (int(x) for x in args.concurrency.split(",")):
      before = get(port, "/health")
      r = load(port, items, c, args.per_request)
      r.update(forwards(before, get(port, "/health")))
      diff = float(np.max(np.abs(np.asarray(r.pop("rewards")) - offline)))
      r.update(vs_offline=round(r["items_per_s"] / result["offline"]["items_per_s"], 3),
               max_abs_diff=diff)
      result["serve"][str(c)] = r
      print(f"concurrency {c}: {r}", file=sys.stderr)
  finally:
    proc.send_signal(signal.SIGTERM)
    result["server_exit"] = proc.wait(timeout=120)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
