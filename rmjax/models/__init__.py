"""Flax Linen modules: the Llama backbone, reward heads and the reward model that joins them."""

from rmjax.models.heads import EnsembleHead, ScalarHead, last_token_index, pool_last
from rmjax.models.llama import Llama, LlamaConfig, init_cache
from rmjax.models.reward_model import RewardModel
