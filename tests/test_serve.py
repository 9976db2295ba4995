"""`rmjax serve` as a real process on a free localhost port, with a tiny trained BT workdir:
OpenRLHF's /get_reward and /v1/score equal `rmjax score`, bad requests get their 4xx with one
line, 32 concurrent requests are answered correctly, the token is required when set, and
SIGTERM under load answers what was received and exits 0. `rmjax.client` as TRL calls it; with
trl installed (the test extra), TRL's RewardTrainer on an export and a GRPOTrainer step rewarded
by the live server. The batcher's forward planning, without a server."""

import asyncio
import concurrent.futures
import dataclasses
import http.client
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from _cli import REPO, run_cli  # noqa: E402
from _util import k_label_classifier  # noqa: E402

from rmjax.client import RewardClient, RewardServerError  # noqa: E402
from rmjax.data.tokenize import ByteTokenizer  # noqa: E402
from rmjax.inference import server  # noqa: E402

pytestmark = pytest.mark.usefixtures("jax_compile_cache")
TOKEN = "test-token"
PROMPTS = ["hi", "tell me a story about cats", [
    {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"},
    {"role": "user", "content": "sure?"}]]
RESPONSES = ["hello there!", "no", "4, sorry"]
FAST = ["--config.train.steps=2", "--config.train.eval_every=0", "--config.train.checkpoint_every=2",
        "--config.data.source=synthetic:32", "--config.data.eval_source=synthetic:8",
        "--config.train.batch_size=8", "--config.train.progress=False",
        "--config.train.tensorboard=False", "--config.train.async_checkpoint=False"]


def formatted(prompt, response):
  """The whole conversation as OpenRLHF sends it (chat template applied)."""
  msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
  return ByteTokenizer().apply_chat_template(msgs + [{"role": "assistant", "content": response}])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A tiny BT run and `rmjax score`'s rewards for PROMPTS x RESPONSES."""
  root = tmp_path_factory.mktemp("serve")
  code, _, err = run_cli(["train", "--config", f"{REPO}/configs/bt.py:tiny", "--workdir",
                          root / "bt", *FAST])
  assert code == 0, err
  (root / "in.jsonl").write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n"
                                         for p, r in zip(PROMPTS, RESPONSES)))
  code, _, err = run_cli(["score", "--workdir", root / "bt", "--data", root / "in.jsonl",
                          "--out", root / "out.jsonl"])
  assert code == 0, err
  want = [json.loads(l)["reward"] for l in (root / "out.jsonl").read_text().splitlines()]
  return root / "bt", np.asarray(want)


def start(workdir, *flags):
  """`rmjax serve` on a free port: (process, port) once it answers /health. One batch size (8,
  the fake devices' count) and two length buckets: few programs to compile."""
  proc = subprocess.Popen([sys.executable, "-m", "rmjax", "serve", "--workdir", str(workdir),
                           "--port", "0", "--max_length", "64", "--batch_size", "8", *flags],
                          cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  line = proc.stdout.readline()
  assert " on http://127.0.0.1:" in line, (line, proc.communicate(timeout=30))
  port = int(line.rsplit(":", 1)[1])
  for _ in range(200):
    try:
      if request(port, "GET", "/health")[0] == 200:
        return proc, port
    except OSError:
      time.sleep(0.05)
  raise AssertionError("the server never answered /health")


def request(port, method, path, body=None, token=TOKEN, raw=None):
  """(status, JSON body, headers) of one request."""
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
  headers = {"Content-Type": "application/json"}
  if token:
    headers["Authorization"] = f"Bearer {token}"
  conn.request(method, path, body=raw if raw is not None else
               None if body is None else json.dumps(body), headers=headers)
  resp = conn.getresponse()
  out = resp.status, json.loads(resp.read()), dict(resp.getheaders())
  conn.close()
  return out


@pytest.fixture(scope="module")
def served(workdir):
  proc, port = start(workdir[0], "--token", TOKEN, "--max_bytes", "20000", "--max_items", "40")
  yield port
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 0


def test_get_reward_and_score_equal_rmjax_score(served, workdir):
  want = workdir[1]
  texts = [formatted(p, r) for p, r in zip(PROMPTS, RESPONSES)]
  stripped = [t.rstrip("\n") for t in texts]  # OpenRLHF's dataset drops the trailing newline
  status, out, _ = request(served, "POST", "/get_reward", {
      "query": texts + stripped, "prompts": PROMPTS + PROMPTS, "labels": [None] * 6})
  assert status == 200 and set(out) == {"rewards", "scores", "extra_logs"}
  np.testing.assert_allclose(out["rewards"], np.concatenate([want, want]), atol=1e-5)
  items = [{"prompt": p, "response": r, "id": i} for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES))]
  items[0] = {"messages": [{"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "hello there!"}], "id": 0}
  status, out, _ = request(served, "POST", "/v1/score", {"items": items})
  assert status == 200 and [r["id"] for r in out["results"]] == [0, 1, 2]
  np.testing.assert_allclose([r["reward"] for r in out["results"]], want, atol=1e-5)
  status, model, _ = request(served, "GET", "/v1/model")
  assert status == 200 and model["task"] == "bt" and model["max_length"] == 64


@pytest.mark.parametrize("path,body,raw,status,words", [
    ("/get_reward", None, '{"query": ["a"', 400, "malformed JSON"),
    ("/v1/score", {"items": [{"prompt": "hi", "response": 3}]}, None, 422, "expected a string"),
    ("/get_reward", {"query": "not a list"}, None, 422, "expected a list"),
    ("/get_reward", {"query": ["x" * 30000]}, None, 413, "over the limit of 20000"),
    ("/get_reward", {"query": ["x"] * 41}, None, 413, "over the limit of 40"),
    ("/v1/score", {"items": [{"prompt": "hi", "response": "x", "principles": ["p"]}]}, None, 422,
     "takes none"),
])
def test_bad_requests_get_one_line(served, path, body, raw, status, words):
  got, out, _ = request(served, "POST", path, body, raw=raw)
  assert got == status and words in out["detail"] and "\n" not in out["detail"], out


def test_token_required(served):
  status, out, headers = request(served, "POST", "/get_reward", {"query": ["x"]}, token=None)
  assert status == 401 and "token" in out["detail"] and headers.get("www-authenticate") == "Bearer"
  assert request(served, "GET", "/v1/model", token="wrong")[0] == 401
  assert request(served, "GET", "/health", token=None)[0] == 200
  with pytest.raises(RewardServerError, match="401"):
    RewardClient(f"http://127.0.0.1:{served}").score([{"prompt": "hi", "response": "x"}])


def test_32_concurrent_requests_and_trl_client(served, workdir):
  want = workdir[1]
  client = RewardClient(f"http://127.0.0.1:{served}", token=TOKEN)
  trl_prompts = [[{"role": "user", "content": "hi"}], "tell me a story about cats", PROMPTS[2]]
  trl_completions = [[{"role": "assistant", "content": "hello there!"}], "no", "4, sorry"]

  def one(i):
    k = i % 3
    if i % 2:
      return client.get_reward([formatted(PROMPTS[k], RESPONSES[k])])[0], want[k]
    rewards = client(prompts=trl_prompts, completions=trl_completions, completion_ids=None)
    return rewards, want

  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    got = list(pool.map(one, range(32)))
  for reward, expected in got:
    np.testing.assert_allclose(reward, expected, atol=1e-5)
  assert client.__name__ == "rmjax_reward"


def test_sigterm_under_load_drains_and_exits_0(workdir):
  proc, port = start(workdir[0])
  texts = [formatted(f"question {i} " + "y" * (i % 20), "an answer " * 3) for i in range(64)]
  n, conns = 12, []
  for _ in range(n):  # sent, not yet answered
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/get_reward", body=json.dumps({"query": texts}),
                 headers={"Content-Type": "application/json"})
    conns.append(conn)
  for _ in range(2000):  # every request received by a handler
    health = request(port, "GET", "/health", token=None)[1]
    if health["in_flight"] + health["served"] >= n:
      break
    time.sleep(0.005)
  proc.send_signal(signal.SIGTERM)
  answers = [json.loads(c.getresponse().read()) for c in conns]
  assert proc.wait(timeout=120) == 0, proc.stderr.read()
  assert health["in_flight"] > 0, health  # the signal came while requests were in flight
  assert all(len(a["rewards"]) == len(texts) for a in answers)
  assert all(np.allclose(a["rewards"], answers[0]["rewards"], atol=1e-5) for a in answers)


def test_ensemble_served_from_an_hf_dir_gives_members_mean_and_std(tmp_path):
  """--model hf:DIR of a 3-label classifier: /v1/score's records are `rmjax score`'s."""
  pytest.importorskip("torch")
  from rmjax.tasks.runs import load_scorer  # noqa: PLC0415
  k_label_classifier(tmp_path, k=3)
  scorer = load_scorer(f"hf:{tmp_path}")
  res = scorer.score(PROMPTS, RESPONSES, progress=False)
  want = [scorer.record(res, i) for i in range(len(PROMPTS))]
  proc = subprocess.Popen([sys.executable, "-m", "rmjax", "serve", "--model", f"hf:{tmp_path}",
                           "--port", "0", "--max_length", "64", "--batch_size", "8"], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  port = int(proc.stdout.readline().rsplit(":", 1)[1])
  client = RewardClient(f"http://127.0.0.1:{port}")
  got = client.score([{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)])
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 0
  for g, w in zip(got, want):
    assert set(g) == set(w) == {"reward", "mean", "std", "members"}
    np.testing.assert_allclose([g["reward"], g["std"], *g["members"]],
                               [w["reward"], w["std"], *w["members"]], atol=1e-5)


def test_full_queue_is_503_with_retry_after():
  async def main():
    batcher = server.Batcher(lambda rows, size: {"reward": np.arange(len(rows), dtype=float)},
                             server.Limits(max_queue=4), sizes=[4])
    runner = asyncio.create_task(batcher.run())
    await asyncio.sleep(0)
    first = asyncio.create_task(batcher.submit([[1]] * 3))
    await asyncio.sleep(0)
    with pytest.raises(server.RequestError) as e:
      await batcher.submit([[1]] * 2)
    assert e.value.status == 503 and e.value.headers == {"Retry-After": "1"}
    assert list((await first)["reward"]) == [0, 1, 2]
    runner.cancel()
    batcher.close()
  asyncio.run(main())


def test_batch_sizes_are_powers_of_two_up_to_the_batch():
  def scorer(batch_size, data):
    return types.SimpleNamespace(mesh=types.SimpleNamespace(shape={"data": data, "fsdp": 1}),
                                 batch_size=batch_size)
  assert server.batch_sizes(scorer(12, 2)) == [2, 4, 8, 12]
  assert server.batch_sizes(scorer(16, 1)) == [1, 2, 4, 8, 16]
  assert server.batch_sizes(scorer(8, 8)) == [8]


SIZES = [1, 2, 4, 8, 16]


def test_plan_runs_a_few_rows_in_the_smallest_batch_without_padding():
  assert server.plan([64], SIZES) == ([0], 1)
  assert server.plan([64] * 3, SIZES) == ([0, 1], 2)  # the third rides with the next arrivals
  assert server.plan([64] * 8, SIZES) == (list(range(8)), 8)
  assert server.plan([64] * 9, SIZES) == (list(range(8)), 8)  # not 9 rows padded to 16
  assert server.plan([64] * 40, SIZES) == (list(range(16)), 16)  # full batches, oldest first


def test_plan_keeps_lengths_apart_and_always_takes_the_oldest_row():
  # arrival order 64, 32, 64, 32, 32: the two long rows together, the short ones apart
  assert server.plan([64, 32, 64, 32, 32], [2, 4]) == ([0, 2], 2)
  assert server.plan([32, 32, 32], [2, 4]) == ([0, 1], 2)
  # a full batch's worth of long rows behind one short row: the short row first, alone (padded
  # to 256 it would cost 8x its own forward) ...
  assert server.plan([32] + [256] * 16, SIZES) == ([0], 1)
  # ... and then the long rows, the longest first, short ones left for a short forward
  assert server.plan([256] * 4 + [32] * 12 + [256] * 12, SIZES) == (
      [0, 1, 2, 3] + list(range(16, 28)), 16)
  # the oldest is in every forward, however long: no row waits behind younger ones for ever
  for buckets in ([512] + [32] * 40, [128, 32, 64, 32] * 5):
    assert 0 in server.plan(buckets, SIZES)[0]


def test_plan_follows_the_forward_cost():
  """Where a forward costs about the same whatever its batch (an accelerator's fixed cost per
  call), one full batch beats several small exact ones: the short row rides with the long."""
  fixed = server.ForwardCost(per_forward=1.0, per_token=1e-5)
  assert server.plan([32] + [256] * 16, SIZES, fixed) == (list(range(16)), 16)
  assert server.plan([64] * 9, SIZES, fixed) == (list(range(9)), 16)
  assert server.plan([64] * 3, SIZES, fixed) == ([0, 1, 2], 4)


def test_forward_cost_fit():
  true = server.ForwardCost(per_forward=0.01, per_token=2e-5, per_token_length=1e-8)
  timings = {(b, n): true(b, n) for b in SIZES for n in (32, 64, 128, 256)}
  got = server.ForwardCost.fit(timings)
  np.testing.assert_allclose([got.per_forward, got.per_token, got.per_token_length],
                             [0.01, 2e-5, 1e-8], rtol=1e-5)
  noisy = {**timings, (16, 256): -1.0}  # never a negative coefficient
  assert min(dataclasses.astuple(server.ForwardCost.fit(noisy))) >= 0
  assert server.ForwardCost.fit({}) == server.ForwardCost()  # padded tokens
  assert server.ForwardCost()(4, 64) == server.token_slots(4, 64) == 256


def _batcher(seen, sizes, fail=None, **limits):
  def forward(rows, size):
    seen.append(([r[0] for r in rows], size))
    if fail is not None and fail in [r[0] for r in rows]:
      raise ValueError("boom")
    return {"reward": np.asarray([float(r[0]) for r in rows]),
            "members": np.asarray([[r[0], -r[0]] for r in rows], np.float32)}
  return server.Batcher(forward, server.Limits(**{"max_wait": 0.0, **limits}), sizes=sizes)


def test_requests_share_forwards_and_span_them():
  """Rows queued while the model is busy go to the next forward together, whatever request
  they came in; a request whose rows span two forwards is answered when the second returns,
  its outputs in its order; a request given up is not run."""
  seen = []

  async def main():
    b = _batcher(seen, [1, 2, 4])
    a = asyncio.create_task(b.submit([[1], [2], [3]]))
    gone = asyncio.create_task(b.submit([[9] * 40]))
    c = asyncio.create_task(b.submit([[4], [5], [6]]))
    await asyncio.sleep(0)  # all three queued before the batcher first looks
    gone.cancel()
    runner = asyncio.create_task(b.run())
    got_a, got_c = await a, await c
    assert b.queued == 0 and b.stats["forwards"] == 2 and b.stats["rows"] == 6
    runner.cancel()
    b.close()
    return got_a, got_c
  got_a, got_c = asyncio.run(main())
  assert seen == [([1, 2, 3, 4], 4), ([5, 6], 2)]
  np.testing.assert_array_equal(got_a["reward"], [1, 2, 3])
  np.testing.assert_array_equal(got_c["reward"], [4, 5, 6])
  np.testing.assert_array_equal(got_c["members"], [[4, -4], [5, -5], [6, -6]])


def test_a_short_forward_waits_for_requests_being_tokenized():
  """A request read but still being tokenized when the batcher would run a forward short of
  a full batch joins that forward (within max_hold) instead of waiting for the next one."""
  seen = []

  async def main():
    b = _batcher(seen, [1, 2, 4], max_hold=600.0)
    gate = asyncio.Event()

    async def late(rows):
      with b.incoming():  # what the app does around a request's reading and tokenization
        await gate.wait()
      return await b.submit(rows)
    runner = asyncio.create_task(b.run())
    second = asyncio.create_task(late([[2]]))
    await asyncio.sleep(0)
    first = asyncio.create_task(b.submit([[1]]))
    for _ in range(50):
      await asyncio.sleep(0)
    assert seen == [] and b.pending == 1 and b.queued == 1
    gate.set()
    await first, await second
    runner.cancel()
    b.close()
  asyncio.run(main())
  assert seen == [([1, 2], 2)]


def test_a_failed_forward_fails_its_requests_only():
  seen = []

  async def main():
    b = _batcher(seen, [1, 2], fail=7)
    bad = asyncio.create_task(b.submit([[7], [7], [7]]))  # its third row is never run
    good = asyncio.create_task(b.submit([[1]]))
    runner = asyncio.create_task(b.run())
    with pytest.raises(ValueError, match="boom"):
      await bad
    ok = await good
    assert b.queued == 0
    runner.cancel()
    b.close()
    return ok
  assert list(asyncio.run(main())["reward"]) == [1]
  assert seen == [([7, 7], 2), ([1], 1)]


# ------------------------------------------------------------------ OpenRLHF's real client
@pytest.fixture
def openrlhf_agent():
  """OpenRLHF's remote-RM client module as installed (0.11: `openrlhf/utils/agent.py`,
  `SingleTurnAgentExecutor`), imported from its file without running the package __init__s
  (they import torch, deepspeed and ray; the client needs only aiohttp). Skipped without
  `pip install --no-deps openrlhf` or aiohttp."""
  spec = importlib.util.find_spec("openrlhf")
  if spec is None:
    pytest.skip("openrlhf not installed (pip install --no-deps openrlhf)")
  pytest.importorskip("aiohttp")
  root = os.path.dirname(spec.origin) if spec.origin else spec.submodule_search_locations[0]
  if not os.path.exists(os.path.join(root, "utils", "agent.py")):
    pytest.skip(f"this openrlhf keeps no utils/agent.py ({root})")
  saved = {k: v for k, v in sys.modules.items() if k == "openrlhf" or k.startswith("openrlhf.")}
  for name, path in (("openrlhf", root), ("openrlhf.utils", os.path.join(root, "utils"))):
    pkg = types.ModuleType(name)
    pkg.__path__ = [path]  # a bare package: its submodules import, its __init__ does not run
    sys.modules[name] = pkg
  try:
    yield importlib.import_module("openrlhf.utils.agent")
  finally:
    for k in [k for k in sys.modules if k == "openrlhf" or k.startswith("openrlhf.")]:
      del sys.modules[k]
    sys.modules.update(saved)


class _HFByteTokenizer:
  """The byte tokenizer as OpenRLHF calls an HF tokenizer (`return_tensors="pt"` rows)."""

  def __init__(self):
    self.tok = ByteTokenizer()

  def __call__(self, text, add_special_tokens=False, return_tensors=None):
    return {"input_ids": np.asarray([self.tok.encode(text, add_special_tokens)])}

  def decode(self, ids, skip_special_tokens=False):
    return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


class _Engine:
  """vLLM's place in OpenRLHF's rollout: 'generates' a fixed response ending in EOS."""

  def __init__(self, response):
    self.ids = ByteTokenizer().encode(response + "<|im_end|>")

  async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
    out = types.SimpleNamespace(token_ids=self.ids, finish_reason="stop", logprobs=None)
    return types.SimpleNamespace(outputs=[out])


def test_openrlhf_remote_rm_client_gets_rmjax_score_rewards(openrlhf_agent, workdir):
  """OpenRLHF's own client code against a live `rmjax serve`: its HTTP call
  (`_fetch_rewards_via_http`: POST {"query", "prompts", "labels"} -> reads "rewards" /
  "scores" / "extra_logs") and a whole single-turn rollout (`execute`: prompt tokenized,
  response 'generated' with its EOS, prompt + response decoded into the query, rewarded)
  give `rmjax score`'s rewards."""
  proc, port = start(workdir[0])  # OpenRLHF sends no Authorization header: no --token
  try:
    url = f"http://127.0.0.1:{port}/get_reward"
    ex = openrlhf_agent.SingleTurnAgentExecutor(url)
    tok = ByteTokenizer()
    prompts = [tok.apply_chat_template(
        [{"role": "user", "content": p}] if isinstance(p, str) else p,
        add_generation_prompt=True) for p in PROMPTS]
    queries = [p + r + "<|im_end|>" for p, r in zip(prompts, RESPONSES)]  # what it decodes
    got = asyncio.run(ex._fetch_rewards_via_http(queries, prompts, [None] * len(queries)))
    assert len(got) == 1 and set(got[0]) == {"rewards", "scores", "extra_logs"}, got
    np.testing.assert_allclose(got[0]["rewards"], workdir[1], atol=1e-5)
    np.testing.assert_allclose(got[0]["scores"], workdir[1], atol=1e-5)
    params = types.SimpleNamespace(max_tokens=64, logprobs=None)
    for k in range(len(PROMPTS)):
      out = asyncio.run(ex.execute(prompts[k], None, params, 256, _HFByteTokenizer(),
                                   _Engine(RESPONSES[k])))
      np.testing.assert_allclose(out["reward"], [workdir[1][k]], atol=1e-5)
      np.testing.assert_allclose(out["scores"], [workdir[1][k]], atol=1e-5)
  finally:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def test_armorm_served_equals_rmjax_score(tmp_path):
  """A tiny ArmoRM run served: /v1/score's reward, objectives and gate and /get_reward's reward
  equal `rmjax score` on it."""
  wd = tmp_path / "armo"
  code, _, err = run_cli(["train", "--config", f"{REPO}/configs/armorm.py:tiny,smoke",
                          "--workdir", wd, "--config.armorm.stage1=ridge",
                          "--config.train.progress=False"])
  assert code == 0, err
  (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n"
                                             for p, r in zip(PROMPTS, RESPONSES)))
  code, _, err = run_cli(["score", "--workdir", wd, "--data", tmp_path / "in.jsonl",
                          "--out", tmp_path / "out.jsonl"])
  assert code == 0, err
  want = [json.loads(l) for l in (tmp_path / "out.jsonl").read_text().splitlines()]
  proc, port = start(wd)
  try:
    got = RewardClient(f"http://127.0.0.1:{port}").score(
        [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)])
    rewards = RewardClient(f"http://127.0.0.1:{port}").get_reward(
        [formatted(p, r) for p, r in zip(PROMPTS, RESPONSES)])
  finally:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
  for g, w, r in zip(got, want, rewards):
    assert set(g["objectives"]) == set(w["objectives"]) and set(g["gate"]) == set(w["gate"])
    np.testing.assert_allclose([g["reward"], r], [w["reward"]] * 2, atol=1e-5)
    for key in ("objectives", "gate"):
      np.testing.assert_allclose([g[key][k] for k in w[key]], list(w[key].values()), atol=1e-5)


# ------------------------------------------------------------------------------------ TRL
# trl is in the test extra (setup.py); without it these skip.
PAIRS = [("What is 2+2?", "4", "5"), ("Say hi.", "Hello!", "No."), ("Name a color.", "Blue.", "x"),
         ("Capital of France?", "Paris.", "Rome.")]


@pytest.fixture(scope="module")
def trl():
  return pytest.importorskip("trl")


def rmjax_score(workdir, items, tmp_path) -> list:
  """`rmjax score`'s output records for `rmjax score` input records."""
  src, out = tmp_path / "trl-in.jsonl", tmp_path / "trl-out.jsonl"
  src.write_text("".join(json.dumps(it) + "\n" for it in items))
  code, _, err = run_cli(["score", "--workdir", workdir, "--data", src, "--out", out])
  assert code == 0, err
  return [json.loads(l) for l in out.read_text().splitlines()]


def test_trl_reward_trainer_trains_a_step_on_the_export(trl, workdir, tmp_path):
  """`rmjax convert --to hf:OUT` of the tiny BT run in `trl.RewardTrainer`: its first step's
  loss is the BT loss of `rmjax score`'s rewards on the same pairs (TRL reads the reward where
  rmjax does), and the step changes the head."""
  import torch  # noqa: PLC0415 -- with trl
  from datasets import Dataset  # noqa: PLC0415
  from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: PLC0415
  out = tmp_path / "bt-hf"
  code, _, err = run_cli(["convert", "--workdir", workdir[0], "--to", f"hf:{out}"])
  assert code == 0, err
  scores = rmjax_score(workdir[0], [{"prompt": p, "response": r} for p, c, rj in PAIRS
                                    for r in (c, rj)], tmp_path)
  rewards = np.asarray([s["reward"] for s in scores]).reshape(-1, 2)
  want = float(np.mean(np.logaddexp(0.0, rewards[:, 1] - rewards[:, 0])))  # -log sigmoid(c - r)

  model = AutoModelForSequenceClassification.from_pretrained(out)
  before = model.score.weight.detach().clone()
  data = Dataset.from_list([
      {"chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
       "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
      for p, c, r in PAIRS])
  args = trl.RewardConfig(output_dir=str(tmp_path / "rt"), max_steps=1, report_to=[],
                          per_device_train_batch_size=len(PAIRS), logging_steps=1,
                          save_strategy="no", use_cpu=True, learning_rate=1e-2, bf16=False,
                          disable_tqdm=True)  # TRL's default bf16 autocast would round the rewards
  trainer = trl.RewardTrainer(model=model, args=args, train_dataset=data,
                              processing_class=AutoTokenizer.from_pretrained(out))
  result = trainer.train()
  assert result.global_step == 1
  np.testing.assert_allclose(result.training_loss, want, rtol=1e-4)  # one batch: all pairs
  assert not torch.equal(model.score.weight.detach(), before)


def test_trl_grpo_step_with_rmjax_client_against_live_serve(trl, served, workdir, tmp_path):
  """`trl.GRPOTrainer` runs a step on a tiny policy (`rmjax convert --from tiny --to hf:`) with
  a `RewardClient` as its reward function against the live server: every reward TRL got is
  `rmjax score`'s for that (prompt, completion), and TRL logs their mean."""
  import torch  # noqa: PLC0415 -- with trl
  from datasets import Dataset  # noqa: PLC0415
  from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

  class Recording(RewardClient):
    calls: list = []

    def __call__(self, prompts, completions, **kwargs):
      rewards = super().__call__(prompts, completions, **kwargs)
      self.calls.append((prompts, completions, rewards))
      return rewards

  policy = tmp_path / "policy"
  code, _, err = run_cli(["convert", "--from", "tiny", "--to", f"hf:{policy}"])
  assert code == 0, err
  client = Recording(f"http://127.0.0.1:{served}", token=TOKEN)
  data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p, _, _ in PAIRS])
  args = trl.GRPOConfig(output_dir=str(tmp_path / "grpo"), max_steps=1, report_to=[],
                        per_device_train_batch_size=4, num_generations=2,
                        max_completion_length=8, logging_steps=1, save_strategy="no",
                        use_cpu=True, bf16=False, disable_tqdm=True)
  trainer = trl.GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32),
                            reward_funcs=client, args=args, train_dataset=data,
                            processing_class=AutoTokenizer.from_pretrained(policy))
  trainer.train()
  assert trainer.state.global_step == 1 and client.calls
  items = [{"prompt": p, "response": c[0]["content"]} for prompts, completions, _ in client.calls
           for p, c in zip(prompts, completions)]
  got = [r for _, _, rewards in client.calls for r in rewards]
  assert len(got) == len(items) >= 4
  want = [s["reward"] for s in rmjax_score(workdir[0], items, tmp_path)]
  np.testing.assert_allclose(got, want, atol=1e-5)
  logged = [rec["rewards/rmjax_reward/mean"] for rec in trainer.state.log_history
            if "rewards/rmjax_reward/mean" in rec]
  assert logged and abs(logged[0] - float(np.mean(got))) < 1e-5, (logged, got)
