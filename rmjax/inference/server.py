"""The reward server behind `rmjax serve`: an ASGI app (FastAPI) over one `Scorer`.

Endpoints (JSON in and out; every error is `{"detail": "<one line>"}` with its status):
  POST /get_reward  OpenRLHF's remote RM: {"query": [text, ...], "prompts": [...], "labels": [...]}
                    -> {"rewards": [...], "scores": [...], "extra_logs": {}}. Each query is the
                    whole formatted conversation (chat template applied); it is tokenized as it
                    is (no special tokens added, the first max_length tokens kept), so a query
                    rendered by the model's chat template scores exactly as `rmjax score` scores
                    that (prompt, response). "prompts" and "labels" are accepted and unused.
  POST /v1/score    {"items": [{"prompt", "response"[, "id"][, "principles"]} | {"messages"}, ...]}
                    -> {"results": [...]}, each what `rmjax score` writes for that line (reward;
                    mean, std and members for ensembles; objectives and gate for ArmoRM), with
                    its "id" when given and "truncated": true when it was cut to max_length.
  GET  /health      {"status": "ok", "queued": rows, "in_flight": requests, "served": requests,
                    "forwards", "rows", "tokens", "padded_tokens": the forwards run so far}
                    (never needs the token)
  GET  /v1/model    what is served: source, task, step, max_length, outputs...

Requests are tokenized on one thread (off the event loop) and their rows queued; a batcher runs one forward at a time on another thread, each planned over
every queued row (`plan`): the oldest row plus the rows that make the most useful work per unit
of the forward's cost (measured at warm-up, `ForwardCost`), in one of the compiled batch sizes
(powers of two up to the scorer's batch size) and length buckets. Concurrent requests share
forwards, short rows are not padded to a long one's length, a lone request is not padded to a
full batch, and rows arriving while a forward runs join the next one. A forward short of a full
batch waits `max_wait` for more rows, longer (`max_hold`) while requests already received are
still being tokenized. Over `max_queue` queued rows a request is answered 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hmac
import json
import math
from typing import Sequence

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rmjax.errors import RmjaxError
from rmjax.inference.embed import bucket_length
from rmjax.inference.serve_plan import (ForwardCost, batch_sizes, plan, token_slots,  # noqa: F401
                                         warm_lengths, warm_up)


@dataclasses.dataclass(frozen=True)
class Limits:
  max_items: int = 1024          # texts / items per request (413 over it)
  max_bytes: int = 8 << 20       # request body (413 over it)
  max_chars: int = 200_000       # characters per text (422 over it)
  max_queue: int = 4096          # rows queued for the model (503 + Retry-After over it)
  max_wait: float = 0.002        # seconds a forward short of a full batch waits for more rows
  max_hold: float = 0.05         # ... while requests already received are still being tokenized


class RequestError(Exception):
  """A request the server refuses: its HTTP status and a one-line detail."""

  def __init__(self, status: int, detail: str, headers: dict | None = None):
    super().__init__(detail)
    self.status, self.detail, self.headers = status, " ".join(str(detail).split()), headers


class _Job:
  """One request's rows and, as forwards return, their outputs."""
  __slots__ = ("rows", "future", "since", "out", "left")

  def __init__(self, rows, future, since):
    self.rows, self.future, self.since, self.out, self.left = rows, future, since, None, len(rows)

  def put(self, mine: list, theirs: list, res: dict) -> None:
    if self.out is None:
      self.out = {k: np.zeros((len(self.rows),) + v.shape[1:], v.dtype) for k, v in res.items()}
    for k, v in res.items():
      self.out[k][mine] = v[theirs]
    self.left -= len(mine)
    if self.left == 0 and not self.future.done():
      self.future.set_result(self.out)


class Batcher:
  """Queued token rows -> one forward at a time, `forward(rows, batch_size)`, on its own thread.

  Between forwards the queue keeps filling; each forward is then planned over every queued row
  (`plan`), so the rows of concurrent requests share forwards, rows left over from one forward
  ride in the next with whatever arrived meanwhile, and a request's rows may span forwards (it is
  answered when the last returns). A forward short of a full batch first waits `max_wait` from its
  oldest row's arrival for more, or up to `max_hold` while requests already received are still
  being read or tokenized (`incoming`): they would otherwise miss it and wait a whole forward."""

  def __init__(self, forward, limits: Limits, sizes: Sequence[int] = (64,), cost=token_slots):
    self.forward, self.limits, self.sizes, self.cost = forward, limits, list(sizes), cost
    self.queued = 0   # rows submitted and not yet scored
    self.pending = 0  # requests received and not yet submitted (being read / tokenized)
    self.stats = {"forwards": 0, "rows": 0, "tokens": 0, "padded_tokens": 0}
    self._queue: list = []  # (job, row index, padded length), oldest first
    self._wake = asyncio.Event()
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rmjax-forward")

  @contextlib.contextmanager
  def incoming(self):
    """Around reading and tokenizing a request: a forward short of rows waits for it."""
    self.pending += 1
    try:
      yield
    finally:
      self.pending -= 1
      self._wake.set()

  async def submit(self, rows: list) -> dict:
    """The forward's outputs for `rows` (numpy, in order)."""
    if not rows:
      return {"reward": np.zeros(0, np.float32)}
    if self.queued + len(rows) > self.limits.max_queue:
      raise RequestError(503, f"server busy: {self.queued} rows queued (limit {self.limits.max_queue}); "
                         f"retry shortly", {"Retry-After": "1"})
    loop = asyncio.get_running_loop()
    job = _Job(rows, loop.create_future(), loop.time())
    self.queued += len(rows)
    self._queue += [(job, i, bucket_length(len(r))) for i, r in enumerate(rows)]
    self._wake.set()
    return await job.future

  def _prune(self) -> None:
    """Drops the rows of requests already answered (an error) or given up (client gone)."""
    if any(job.future.done() for job, _, _ in self._queue):
      keep = [e for e in self._queue if not e[0].future.done()]
      self.queued -= len(self._queue) - len(keep)
      self._queue = keep

  async def _gather(self, loop) -> None:
    """Returns when the queue should go to a forward."""
    while True:
      self._prune()
      timeout = None
      if self._queue:
        if len(self._queue) >= self.sizes[-1]:
          return
        wait = max(self.limits.max_wait, self.limits.max_hold) if self.pending else self.limits.max_wait
        timeout = wait - (loop.time() - self._queue[0][0].since)
        if timeout <= 0:
          return
      self._wake.clear()
      try:
        await asyncio.wait_for(self._wake.wait(), timeout)
      except asyncio.TimeoutError:
        pass

  async def run(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      await self._gather(loop)
      idx, size = plan([e[2] for e in self._queue], self.sizes, self.cost)
      chosen = set(idx)
      picked = [self._queue[i] for i in idx]
      self._queue = [e for i, e in enumerate(self._queue) if i not in chosen]
      rows = [job.rows[i] for job, i, _ in picked]
      st = self.stats
      st["forwards"] += 1
      st["rows"] += len(rows)
      st["tokens"] += sum(map(len, rows))
      st["padded_tokens"] += size * max(e[2] for e in picked)
      try:
        out = await loop.run_in_executor(self._pool, self.forward, rows, size)
      except Exception as e:  # noqa: BLE001 -- every request with a row in it gets the error
        for job, _, _ in picked:
          if not job.future.done():
            job.future.set_exception(e)
      else:
        parts: dict = {}
        for k, (job, i, _) in enumerate(picked):
          mine, theirs = parts.setdefault(id(job), (job, [], []))[1:]
          mine.append(i)
          theirs.append(k)
        for job, mine, theirs in parts.values():
          if not job.future.done():  # a client that went away leaves a cancelled future
            job.put(mine, theirs, out)
      finally:
        self.queued -= len(picked)

  def close(self) -> None:
    self._pool.shutdown(wait=True)


def _text(value, where: str, limits: Limits) -> str:
  if not isinstance(value, str):
    raise RequestError(422, f"{where}: expected a string, got {type(value).__name__}")
  if len(value) > limits.max_chars:
    raise RequestError(422, f"{where}: {len(value)} characters, over the limit of {limits.max_chars}")
  return value


def _list(data, key: str, limits: Limits) -> list:
  if not isinstance(data, dict):
    raise RequestError(422, f"the body must be a JSON object with {key!r}, got {type(data).__name__}")
  if key not in data:
    raise RequestError(422, f"missing field {key!r}")
  value = data[key]
  if not isinstance(value, list):
    raise RequestError(422, f"{key}: expected a list, got {type(value).__name__}")
  if len(value) > limits.max_items:
    raise RequestError(413, f"{key}: {len(value)} entries, over the limit of {limits.max_items}")
  return value


def _item(obj, i: int, check, limits: Limits) -> dict:
  """One /v1/score item as an `rmjax score` record ({"messages"} split into prompt + response)."""
  where = f"items[{i}]"
  if isinstance(obj, dict) and "messages" in obj and "prompt" not in obj:
    msgs = obj["messages"]
    if not (isinstance(msgs, list) and len(msgs) >= 2 and isinstance(msgs[-1], dict)
            and msgs[-1].get("role") == "assistant"):
      raise RequestError(422, f"{where}.messages: expected a list of messages ending with the "
                         f"assistant's response")
    obj = dict(obj, prompt=msgs[:-1], response=msgs[-1].get("content"))
  problem = check(obj, where, None)
  if problem is not None:
    raise RequestError(422, str(problem))
  prompt = obj["prompt"]
  for j, m in enumerate(prompt if isinstance(prompt, (list, tuple)) else [prompt]):
    _text(m["content"] if isinstance(m, dict) else m if isinstance(m, str) else m[1],
          f"{where}.prompt" + (f"[{j}]" if isinstance(prompt, (list, tuple)) else ""), limits)
  _text(obj["response"], f"{where}.response", limits)
  return obj


def _finite(values, what: str) -> list:
  values = [float(v) for v in values]
  if not all(map(math.isfinite, values)):
    raise RequestError(500, f"the model gave a non-finite {what}")
  return values


def make_app(scorer, *, limits: Limits = Limits(), token: str | None = None, check=None,
             info: dict | None = None, complete_turn: str = "", cost=token_slots) -> FastAPI:
  """The app serving `scorer`. `check(record, where, line)` validates a /v1/score item (returns
  an error or None: `rmjax score`'s record check); `complete_turn` is appended to a /get_reward
  query that ends with the chat template's end of turn without it (OpenRLHF drops the template's
  trailing newline; see `end_of_turn`); `cost(batch, length)` is the forward's cost for `plan`
  (`warm_up` measures it)."""
  batcher = Batcher(lambda rows, size: scorer.score_rows(rows, batch_size=size), limits,
                    batch_sizes(scorer), cost)
  counts = {"in_flight": 0, "served": 0}  # scoring requests being handled / answered
  tok_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rmjax-tokenize")

  @contextlib.asynccontextmanager
  async def lifespan(app):
    task = asyncio.create_task(batcher.run())
    yield
    task.cancel()
    batcher.close()
    tok_pool.shutdown(wait=True)

  app = FastAPI(title="rmjax reward server", lifespan=lifespan)

  @app.exception_handler(RequestError)
  async def refused(request, e: RequestError):
    return JSONResponse({"detail": e.detail}, status_code=e.status, headers=e.headers)

  @app.exception_handler(RmjaxError)
  async def bad_input(request, e: RmjaxError):  # e.g. principles for a model that takes none
    return JSONResponse({"detail": _line(e)}, status_code=422)

  @app.exception_handler(Exception)
  async def failed(request, e: Exception):
    return JSONResponse({"detail": f"{type(e).__name__}: {_line(e)}"}, status_code=500)

  def authorize(request: Request) -> None:
    if token is None:
      return
    got = request.headers.get("authorization", "")
    if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
      raise RequestError(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                         {"WWW-Authenticate": "Bearer"})

  async def body(request: Request):
    authorize(request)
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > limits.max_bytes:
      raise RequestError(413, f"request body of {size} bytes is over the limit of {limits.max_bytes}")
    chunks, n = [], 0
    async for chunk in request.stream():
      n += len(chunk)
      if n > limits.max_bytes:
        raise RequestError(413, f"request body over the limit of {limits.max_bytes} bytes")
      chunks.append(chunk)
    try:
      return json.loads(b"".join(chunks))
    except json.JSONDecodeError as e:
      raise RequestError(400, f"malformed JSON: {e.msg} (line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
      raise RequestError(400, "malformed JSON: the body is not UTF-8") from None

  async def run(fn, *args):
    counts["in_flight"] += 1
    try:
      with batcher.incoming():
        rows, cut = await asyncio.get_running_loop().run_in_executor(tok_pool, fn, *args)
      return await batcher.submit(rows), cut
    finally:
      counts["in_flight"] -= 1
      counts["served"] += 1

  @app.post("/get_reward")
  async def get_reward(request: Request):
    with batcher.incoming():
      queries = _list(await body(request), "query", limits)
    texts = [_text(q, f"query[{i}]", limits) for i, q in enumerate(queries)]
    if complete_turn:
      bare = complete_turn.rstrip()
      texts = [t + complete_turn[len(bare):] if t.endswith(bare) and not t.endswith(complete_turn)
               else t for t in texts]
    res, _ = await run(scorer.text_rows, texts)
    rewards = _finite(res["reward"], "reward")
    return JSONResponse({"rewards": rewards, "scores": rewards, "extra_logs": {}})

  @app.post("/v1/score")
  async def score(request: Request):
    with batcher.incoming():
      items = [_item(obj, i, check, limits)
               for i, obj in enumerate(_list(await body(request), "items", limits))]
    principled = any("principles" in it for it in items)

    def rows():
      if not principled:
        return scorer.rows([it["prompt"] for it in items], [it["response"] for it in items])
      out = [scorer.rows([it["prompt"]], [it["response"]], it.get("principles")) for it in items]
      return [r for rs, _ in out for r in rs], None

    res, cut = await run(rows)
    results = []
    for i, it in enumerate(items):
      rec = {"id": it["id"]} if "id" in it else {}
      rec.update(scorer.record(res, i))
      if cut is not None and cut[i]:
        rec["truncated"] = True
      results.append(rec)
    _finite([v for r in results for v in _numbers(r)], "score")
    return JSONResponse({"results": results})

  @app.get("/health")
  async def health():
    return {"status": "ok", "queued": batcher.queued, **counts, **batcher.stats}

  @app.get("/v1/model")
  async def model(request: Request):
    authorize(request)
    return info or {}

  return app


def _line(e: Exception) -> str:
  return " ".join((str(e).strip().splitlines() or [""])[0].split())


def _numbers(rec: dict):
  for key, value in rec.items():
    if key == "id" or isinstance(value, bool):
      continue
    if isinstance(value, dict):
      yield from value.values()
    elif isinstance(value, (list, tuple, np.ndarray)):
      yield from value
    elif isinstance(value, (int, float)):
      yield value


def end_of_turn(tokenizer) -> str:
  """The text the chat template writes after an assistant message's content (ChatML:
  '<|im_end|>\\n'), or '' when it cannot be found."""
  marker = "RMJAXENDOFTURN"
  try:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}],
        tokenize=False, add_generation_prompt=False)
  except Exception:  # noqa: BLE001 -- a template that cannot render this: no completion
    return ""
  return text.rpartition(marker)[2] if marker in text else ""
