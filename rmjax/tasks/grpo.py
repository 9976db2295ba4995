"""GRPO and RLOO: `rmjax train --config configs/grpo.py:tiny[,advantage=rloo] --workdir W`.

The critic-free group methods run on the one RL learner (`rmjax.tasks.ppo`): G samples per
prompt, the `grpo` (group-normalised) or `rloo` (leave-one-out) advantage estimator of
`rmjax.rl.registry.ADVANTAGES` (or a plug-in's), no value model, and the same rewards as PPO
(gold, the proxy ensemble, its uncertainty-penalised aggregates and the variance-weighted KL).
Settings: `config.grpo`, the keys of `config.ppo`.
"""

from rmjax.tasks import ppo
from rmjax.tasks.spec import TaskSpec

SPEC = TaskSpec(name="grpo", run=ppo.run, compile_steps=ppo.compile_steps)
