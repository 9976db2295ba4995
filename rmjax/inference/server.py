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
  GET  /health      {"status": "ok", "queued": rows, "in_flight": requests, "served": requests}
                    (never needs the token)
  GET  /v1/model    what is served: source, task, step, max_length, outputs...

Requests are tokenized on one thread and queued; a batcher takes what is queued (up to
`max_batch` rows, waiting at most `max_wait` seconds for more) into one `Scorer.score_rows`
call on another thread, grouped by length bucket and run in full batches plus the smallest
power-of-two batch that holds the rest (`fitted_forward`), so concurrent requests share
forwards, short rows are not padded to a long one's length, and a lone request is not padded
to a full batch. Over `max_queue` queued rows a request is answered 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hmac
import json
import math

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rmjax import sharding as shd
from rmjax.errors import RmjaxError
from rmjax.inference.embed import MIN_BUCKET, bucket_length


@dataclasses.dataclass(frozen=True)
class Limits:
  max_items: int = 1024          # texts / items per request (413 over it)
  max_bytes: int = 8 << 20       # request body (413 over it)
  max_chars: int = 200_000       # characters per text (422 over it)
  max_queue: int = 4096          # rows queued for the model (503 + Retry-After over it)
  max_batch: int = 64            # rows per batcher dispatch
  max_wait: float = 0.002        # seconds the batcher waits for more rows after the first


class RequestError(Exception):
  """A request the server refuses: its HTTP status and a one-line detail."""

  def __init__(self, status: int, detail: str, headers: dict | None = None):
    super().__init__(detail)
    self.status, self.detail, self.headers = status, " ".join(str(detail).split()), headers


class Batcher:
  """Queued token rows -> `forward(rows)` (one dispatch at a time, on its own thread)."""

  def __init__(self, forward, limits: Limits):
    self.forward, self.limits = forward, limits
    self.queued = 0
    self._queue: asyncio.Queue = asyncio.Queue()  # binds to the loop at first use
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rmjax-forward")

  async def submit(self, rows: list) -> dict:
    """The forward's outputs for `rows` (numpy, in order)."""
    if self.queued + len(rows) > self.limits.max_queue:
      raise RequestError(503, f"server busy: {self.queued} rows queued (limit {self.limits.max_queue}); "
                         f"retry shortly", {"Retry-After": "1"})
    future = asyncio.get_running_loop().create_future()
    self.queued += len(rows)
    self._queue.put_nowait((rows, future))
    return await future

  async def run(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      jobs = [await self._queue.get()]
      n, deadline = len(jobs[0][0]), loop.time() + self.limits.max_wait
      while n < self.limits.max_batch:
        try:
          job = self._queue.get_nowait() if loop.time() >= deadline else await asyncio.wait_for(
              self._queue.get(), deadline - loop.time())
        except (asyncio.QueueEmpty, asyncio.TimeoutError):
          break
        jobs.append(job)
        n += len(job[0])
      rows = [r for job, _ in jobs for r in job]
      try:
        out = await loop.run_in_executor(self._pool, self.forward, rows)
      except Exception as e:  # noqa: BLE001 -- every waiting request gets the error
        for _, future in jobs:
          if not future.done():
            future.set_exception(e)
      else:
        start = 0
        for job, future in jobs:
          if not future.done():  # a client that went away leaves a cancelled future
            future.set_result({k: v[start:start + len(job)] for k, v in out.items()})
          start += len(job)
      finally:
        self.queued -= n

  def close(self) -> None:
    self._pool.shutdown(wait=True)


def batch_sizes(scorer) -> list[int]:
  """The forward's batch sizes: powers of two from the mesh's batch divisor up to the scorer's
  batch size, so a dispatch of a few rows (low concurrency) is not padded to a full batch."""
  div = shd.batch_divisor(scorer.mesh)
  full = max(div, scorer.batch_size - scorer.batch_size % div)
  sizes, b = [], div
  while b < full:
    sizes.append(b)
    b *= 2
  return sizes + [full]


def fitted_forward(scorer):
  """`rows -> outputs` (the batcher's call): rows grouped by length bucket, each group in full
  batches plus one of the smallest batch size that holds the rest, so a dispatch pads about as
  little as offline scoring of length-sorted rows does (rows arrive in no length order)."""
  sizes = batch_sizes(scorer)

  def forward(rows):
    groups: dict = {}
    for i, r in enumerate(rows):
      groups.setdefault(bucket_length(len(r)), []).append(i)
    out = None
    for _, idx in sorted(groups.items()):
      for start in range(0, len(idx), sizes[-1]):
        part = idx[start:start + sizes[-1]]
        res = scorer.score_rows([rows[i] for i in part],
                                batch_size=next(b for b in sizes if b >= len(part)))
        if out is None:
          out = {k: np.zeros((len(rows),) + v.shape[1:], v.dtype) for k, v in res.items()}
        for k, v in res.items():
          out[k][part] = v
    return out if out is not None else scorer.score_rows(rows)
  return forward


def warm_lengths(max_length: int) -> list[int]:
  """One row length per padded bucket a request can reach (every compiled shape)."""
  top, lengths, b = bucket_length(max_length), [], MIN_BUCKET
  while b <= top:
    lengths.append(min(b, max_length))
    b *= 2
  return lengths


def warm_up(scorer) -> list[str]:
  """Compiles the forward for every batch size and length bucket before serving; returns the
  output keys."""
  token = getattr(scorer.tokenizer, "eos_token_id", None) or 1
  out = {}
  for b in batch_sizes(scorer):
    for n in warm_lengths(scorer.encoder.max_length):
      out = scorer.score_rows([[int(token)] * n] * b, batch_size=b)
  return sorted(out)


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
             info: dict | None = None, complete_turn: str = "") -> FastAPI:
  """The app serving `scorer`. `check(record, where, line)` validates a /v1/score item (returns
  an error or None: `rmjax score`'s record check); `complete_turn` is appended to a /get_reward
  query that ends with the chat template's end of turn without it (OpenRLHF drops the template's
  trailing newline; see `end_of_turn`)."""
  batcher = Batcher(fitted_forward(scorer), limits)
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
      rows, cut = await asyncio.get_running_loop().run_in_executor(tok_pool, fn, *args)
      return await batcher.submit(rows), cut
    finally:
      counts["in_flight"] -= 1
      counts["served"] += 1

  @app.post("/get_reward")
  async def get_reward(request: Request):
    queries = _list(await body(request), "query", limits)
    texts = [_text(q, f"query[{i}]", limits) for i, q in enumerate(queries)]
    if complete_turn:
      bare = complete_turn.rstrip()
      texts = [t + complete_turn[len(bare):] if t.endswith(bare) and not t.endswith(complete_turn)
               else t for t in texts]
    res, _ = await run(scorer.text_rows, texts)
    rewards = _finite(res["reward"], "reward")
    return {"rewards": rewards, "scores": rewards, "extra_logs": {}}

  @app.post("/v1/score")
  async def score(request: Request):
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
    return {"results": results}

  @app.get("/health")
  async def health():
    return {"status": "ok", "queued": batcher.queued, **counts}

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
