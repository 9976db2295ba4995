"""A small client for `rmjax serve` (standard library only: no jax, no rmjax model code).

  from rmjax.client import RewardClient
  rm = RewardClient("http://127.0.0.1:8000", token=None)
  rm.score([{"prompt": "hi", "response": "hello"}])   # [{"reward": ...}, ...] as `rmjax score`
  rm.get_reward(["<formatted conversation>"])          # OpenRLHF's /get_reward: [float, ...]

A `RewardClient` is itself a TRL reward function: `GRPOTrainer(..., reward_funcs=rm)` calls
`rm(prompts=..., completions=..., **kwargs)` and gets one float per completion. Prompts may be
strings or message lists, completions strings or message lists (TRL's conversational format:
the assistant messages' contents are the response). Requests answered 503 (a full queue) or
failing to connect are retried after Retry-After; other errors raise `RewardServerError` with
the server's one-line detail.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request


class RewardServerError(RuntimeError):
  """The server refused a request (status and its one-line detail) or could not be reached."""

  def __init__(self, status, detail: str):
    super().__init__(f"rmjax serve answered {status}: {detail}" if status else detail)
    self.status, self.detail = status, detail


class RewardClient:
  """Calls a running `rmjax serve`; `chunk` items go in each request."""

  def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None,
               timeout: float = 180.0, retries: int = 5, chunk: int = 256,
               name: str = "rmjax_reward"):
    self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
    self.retries, self.chunk = retries, chunk
    self.__name__ = name  # TRL names each reward function's logged column by it

  def _request(self, path: str, payload=None):
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if self.token:
      headers["Authorization"] = f"Bearer {self.token}"
    for attempt in range(self.retries + 1):
      req = urllib.request.Request(self.url + path, data=data, headers=headers,
                                   method="GET" if data is None else "POST")
      try:
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
          return json.loads(resp.read())
      except urllib.error.HTTPError as e:
        try:
          detail = json.loads(e.read()).get("detail", e.reason)
        except (ValueError, AttributeError):
          detail = e.reason
        if e.code != 503 or attempt == self.retries:
          raise RewardServerError(e.code, detail) from None
        time.sleep(float(e.headers.get("Retry-After") or 1))
      except (urllib.error.URLError, ConnectionError) as e:
        if attempt == self.retries:
          raise RewardServerError(None, f"cannot reach {self.url}: {getattr(e, 'reason', e)}") from None
        time.sleep(1)
    raise AssertionError("unreachable")

  def health(self) -> dict:
    return self._request("/health")

  def model(self) -> dict:
    return self._request("/v1/model")

  def score(self, items: list) -> list:
    """`rmjax score` output records (without `line`) for `rmjax score` input records."""
    out = []
    for i in range(0, len(items), self.chunk):
      out += self._request("/v1/score", {"items": list(items[i:i + self.chunk])})["results"]
    return out

  def get_reward(self, queries: list) -> list:
    """Rewards of formatted conversations (OpenRLHF's remote RM call)."""
    out = []
    for i in range(0, len(queries), self.chunk):
      out += self._request("/get_reward", {"query": list(queries[i:i + self.chunk])})["rewards"]
    return out

  def __call__(self, prompts, completions, **kwargs) -> list:
    """TRL's reward-function signature: one reward per completion."""
    del kwargs  # completion_ids, trainer_state and dataset columns: not needed
    items = [{"prompt": p, "response": _content(c)} for p, c in zip(prompts, completions)]
    return [r["reward"] for r in self.score(items)]


def _content(completion) -> str:
  """A TRL completion's text: the string, or its assistant messages' contents joined."""
  if isinstance(completion, str):
    return completion
  return "".join(m["content"] for m in completion if m.get("role", "assistant") == "assistant")
