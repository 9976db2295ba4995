"""Named RL pieces (Tunix's function registry, one dict per kind): the config names each piece,
the learner looks it up here, and a plug-in adds its own with the same decorator.

  ADVANTAGES     (token_rewards [B, N], values [B, N] | None, mask [B, N], *, gamma, lam,
                  group_size) -> (advantages [B, N], returns [B, N] | None)      `gae`, `grpo`, `rloo`
                  traits: needs_value (a value model is trained beside the policy),
                  grouped (rows come in consecutive groups of `group_size` samples per prompt)
  POLICY_LOSSES  (logp, old_logp, advantages, mask [B, N], *, clip, dual_clip)
                  -> (token-mean loss, metrics)                                   `clip`, `dual_clip`
  KL_ESTIMATORS  (d = log pi - log pi_ref [B, N]) -> per-token KL estimate         `k1`, `k2`, `k3`
  AGGREGATES     (member scores [..., K], *, lam, beta, ddof) -> [...]            `mean`, `wco`, `uwo`, `lcb`
                  traits: spread (needs >= 2 members)
  REWARDS        (config, workdir) -> reward_fn (see `rmjax.rl.rollout`)          `gold`, `token_count`, `proxy`
                  traits: members (the reward fn returns ensemble member scores, so the
                  uncertainty-penalised aggregates and the variance-weighted KL apply)

A plug-in from outside rmjax registers on import; a config may name it as 'module:name' (the
module is imported, then `name` looked up), e.g. `--config.grpo.advantage=mylab.rl:reinforce`:

    from rmjax.rl.registry import ADVANTAGES

    @ADVANTAGES.register("reinforce")
    def reinforce(token_rewards, values, mask, *, gamma, lam, group_size): ...
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from rmjax.errors import ConfigError


class Registry:
  """name -> function, plus per-name traits (defaults declared by the registry)."""

  def __init__(self, what: str, **trait_defaults):
    self.what, self._defaults = what, trait_defaults
    self._fns: dict[str, Callable] = {}
    self._traits: dict[str, dict] = {}

  def register(self, name: str, **traits) -> Callable[[Callable], Callable]:
    """Decorator: register `fn` under `name` (replacing an earlier one) with `traits`."""
    unknown = set(traits) - set(self._defaults)
    if unknown:
      raise ValueError(f"{self.what} {name!r}: unknown traits {sorted(unknown)}; "
                       f"known: {sorted(self._defaults)}")

    def deco(fn: Callable) -> Callable:
      self._fns[name] = fn
      self._traits[name] = dict(self._defaults, **traits)
      return fn
    return deco

  def resolve(self, name: str, key: str = "") -> str:
    """The registered name for `name` ('module:name' imports the module first), or a one-line
    ConfigError naming the config `key` and the choices."""
    if not isinstance(name, str):
      raise ConfigError(f"{key or self.what} must be a name, got {name!r}")
    if name not in self._fns and ":" in name:
      module, _, name = name.partition(":")
      try:
        importlib.import_module(module)
      except ImportError as e:
        raise ConfigError(f"{key or self.what}: cannot import {module!r} ({e})") from None
    if name not in self._fns:
      raise ConfigError(f"{key + ': ' if key else ''}unknown {self.what} {name!r}; choose from "
                        f"{', '.join(self.names())} (or 'module:name' of a plug-in)")
    return name

  def get(self, name: str, key: str = "") -> Callable:
    return self._fns[self.resolve(name, key)]

  def traits(self, name: str, key: str = "") -> dict[str, Any]:
    return self._traits[self.resolve(name, key)]

  def names(self) -> tuple:
    return tuple(self._fns)

  def __contains__(self, name: str) -> bool:
    return name in self._fns


ADVANTAGES = Registry("advantage estimator", needs_value=False, grouped=False)
POLICY_LOSSES = Registry("policy loss")
KL_ESTIMATORS = Registry("KL estimator")
AGGREGATES = Registry("aggregation method", spread=False)
REWARDS = Registry("reward kind", members=False)
