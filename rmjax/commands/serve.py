"""`rmjax serve`: a reward model behind HTTP for RL trainers that are not rmjax's (OpenRLHF's
remote RM `POST /get_reward`, TRL through `rmjax.client`, any loop through `POST /v1/score`).

The model loads and its forward compiles for every length bucket before the port opens for
requests; then uvicorn serves the app of `rmjax.inference.server`. SIGTERM (or Ctrl-C) stops
accepting connections, answers every request already received, and exits 0.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import signal
import socket
import sys

from absl import flags

from rmjax.checkpoints.workdir import read_config
from rmjax.commands.common import FLAGS, require
from rmjax.commands.score import _check_record, load_scorer
from rmjax.errors import ConfigError

SUMMARY = "serve a reward model over HTTP (OpenRLHF /get_reward, /v1/score, TRL via rmjax.client)"
DETAILS = ("POST /get_reward {query: [formatted text]} -> {rewards}; POST /v1/score {items: [score "
           "input lines]} -> {results}; GET /health, /v1/model. Loopback only unless --host says "
           "otherwise; --token (or RMJAX_SERVE_TOKEN) requires 'Authorization: Bearer <token>'. "
           "SIGTERM drains the requests in flight and exits 0.")
EXAMPLE = "rmjax serve --workdir /tmp/bt --port 8000"
USES = ("workdir", "model", "step", "batch_size", "host", "port", "token", "max_length",
        "max_items", "max_bytes", "max_chars", "max_queue", "max_wait_ms",
        "complete_turn", "drain_timeout")

flags.DEFINE_string("host", "127.0.0.1", "serve: address to listen on (loopback by default)")
flags.DEFINE_integer("port", 8000, "serve: TCP port (0: any free port, printed at start)")
flags.DEFINE_string("token", None, "serve: require 'Authorization: Bearer <token>' (default: "
                    "$RMJAX_SERVE_TOKEN, else no token)")
flags.DEFINE_integer("max_length", None, "serve: cut inputs to this many tokens (default: the "
                     "model's data.max_length)")
flags.DEFINE_integer("max_items", 1024, "serve: texts or items per request (413 over it)")
flags.DEFINE_integer("max_bytes", 8 << 20, "serve: request body bytes (413 over it)")
flags.DEFINE_integer("max_chars", 200_000, "serve: characters per text (422 over it)")
flags.DEFINE_integer("max_queue", 4096, "serve: rows waiting for the model (503 + Retry-After "
                     "over it)")
flags.DEFINE_float("max_wait_ms", 2.0, "serve: how long a forward short of a full batch "
                   "(--batch_size rows) waits for more rows")
flags.DEFINE_bool("complete_turn", True, "serve: a /get_reward query ending in the chat "
                  "template's end-of-turn token without its trailing text (OpenRLHF strips the "
                  "newline) gets it back, so the reward is read where `rmjax score` reads it")
flags.DEFINE_float("drain_timeout", 60.0, "serve: seconds SIGTERM waits for requests in flight")


def _positive(*names):
  for name in names:
    if FLAGS[name].value is not None and FLAGS[name].value <= 0:
      raise ConfigError(f"--{name} must be > 0, got {FLAGS[name].value}")


def bind(host: str, port: int) -> socket.socket:
  """The listening socket (bound before the model loads: a taken port fails at once)."""
  try:
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
  except ValueError:
    family = socket.AF_INET  # a host name
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError as e:
    sock.close()
    raise ConfigError(f"--host {host} --port {port}: cannot listen ({e.strerror or e})") from None
  sock.listen(2048)
  return sock


def _is_loopback(host: str) -> bool:
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return host == "localhost"


def main():
  try:
    import uvicorn  # noqa: F401, PLC0415 -- the `serve` extra: only this command needs it

    from rmjax.inference import server  # noqa: PLC0415 -- imports fastapi (the `serve` extra)
  except ImportError as e:
    raise ConfigError(f"rmjax serve needs the serve extra ({e}): pip install -e '.[serve]'") from None

  source = FLAGS.model or require("workdir")
  _positive("max_length", "max_items", "max_bytes", "max_chars", "max_queue", "drain_timeout")
  if FLAGS.max_wait_ms < 0:
    raise ConfigError(f"--max_wait_ms must be >= 0, got {FLAGS.max_wait_ms}")
  if not 0 <= FLAGS.port < 65536:
    raise ConfigError(f"--port must be in 0..65535, got {FLAGS.port}")
  # a missing or foreign workdir fails before the port is taken (its config.json read once)
  config = None if FLAGS.model else read_config(source)
  token = FLAGS.token or os.environ.get("RMJAX_SERVE_TOKEN") or None
  sock = bind(FLAGS.host, FLAGS.port)
  scorer = load_scorer(config, max_length=FLAGS.max_length)
  outputs, cost = server.warm_up(scorer)
  info = {"source": source, "task": scorer.config.task, "step": scorer.step,
          "max_length": scorer.encoder.max_length, "batch_size": scorer.batch_size,
          "outputs": outputs, "objectives": list(scorer.config.get("objectives", {}).get("names", [])),
          "tokenizer": str(getattr(scorer.tokenizer, "name_or_path", "")),
          "query_tokenization": "as given, no special tokens added, first max_length tokens",
          "batch_sizes": server.batch_sizes(scorer), "forward_cost_s": dataclasses.asdict(cost)}
  limits = server.Limits(FLAGS.max_items, FLAGS.max_bytes, FLAGS.max_chars, FLAGS.max_queue,
                         FLAGS.max_wait_ms / 1000)
  suffix = server.end_of_turn(scorer.tokenizer) if FLAGS.complete_turn else ""
  app = server.make_app(scorer, limits=limits, token=token, check=_check_record, info=info,
                        complete_turn=suffix, cost=cost)
  host, port = sock.getsockname()[:2]
  if not _is_loopback(host) and token is None:
    print(f"rmjax serve: warning: listening on {host} without --token: anyone who can reach "
          f"this port can use the model", file=sys.stderr)
  config = uvicorn.Config(app, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=FLAGS.drain_timeout)
  srv = _uvicorn_server(config)
  url_host = f"[{host}]" if ":" in host else host
  print(f"rmjax serve: {source} ({scorer.config.task}) on http://{url_host}:{port}", flush=True)
  srv.run(sockets=[sock])
  if not srv.started:
    raise RuntimeError("the server did not start (see the messages above)")
  print("rmjax serve: stopped", flush=True)


def _uvicorn_server(config):
  """uvicorn's Server, except that a SIGTERM / SIGINT it drained for is not raised again on the
  way out (uvicorn re-raises it, which would end the process with -15 instead of 0)."""
  import uvicorn  # noqa: PLC0415 -- the `serve` extra

  class Server(uvicorn.Server):
    def handle_exit(self, sig, frame):
      if self.should_exit and sig == signal.SIGINT:
        self.force_exit = True
      self.should_exit = True

  return Server(config)
