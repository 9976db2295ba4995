"""Reinforcement learning against reward models: generation with a KV cache, PPO, best-of-n."""
