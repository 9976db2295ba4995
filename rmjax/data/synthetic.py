"""A built-in synthetic preference set with a KNOWN gold reward (the default `rmjax train` run).

Prompts: "Say something {mode} about {topic}." with mode in MODES (= the subsets) and topic in
TOPICS. Responses: 3-9 words drawn from POSITIVE, NEGATIVE, NEUTRAL and topic words.

Gold reward (see `score_components`, weights in GOLD_WEIGHTS, all = 1):
  sentiment  kind: #positive - #negative words; harsh: #negative - #positive
  topic      +1 if the prompt's topic word appears, -1 for each other topic word that appears
  length     -0.5 per word beyond 7
gold = sum(GOLD_WEIGHTS[k] * components[k]). Words are short, distinct and space-separated, so a
2-layer byte-level transformer can learn it; 'harsh' needs the prompt (the sign flips), 'topic'
needs prompt-response matching. A multi-objective variant (ArmoRM) can use `score_components`
as per-objective ratings and change GOLD_WEIGHTS per mode; each piece is a small function.
"""

import numpy as np

from rmjax.data.pairs import make_pair, write_pairs

MODES = ('kind', 'harsh')
TOPICS = ('cats', 'dogs', 'rain', 'music', 'bread', 'trees')
POSITIVE = ('good', 'great', 'lovely', 'happy', 'bright', 'sweet', 'nice', 'warm')
NEGATIVE = ('bad', 'awful', 'sad', 'ugly', 'rude', 'dull', 'grim', 'cold')
NEUTRAL = ('the', 'a', 'is', 'and', 'very', 'quite', 'so', 'they', 'are', 'really')
GOLD_WEIGHTS = {'sentiment': 1.0, 'topic': 1.0, 'length': 1.0}
LENGTH_FREE_WORDS = 7


def make_prompt(mode, topic):
  return f'Say something {mode} about {topic}.'


def parse_prompt(prompt):
  """Prompt text -> (mode, topic); None for prompts not made here."""
  words = prompt.rstrip('.').split()
  if len(words) == 5 and words[:2] == ['Say', 'something'] and words[2] in MODES:
    return words[2], words[4]
  return None


def score_components(prompt, response):
  """Named gold components (see the module docstring); the per-objective ratings."""
  mode, topic = parse_prompt(prompt) or ('kind', None)
  words = response.lower().replace('.', ' ').replace(',', ' ').split()
  pos = sum(w in POSITIVE for w in words)
  neg = sum(w in NEGATIVE for w in words)
  on_topic = 1.0 if topic in words else 0.0
  off_topic = sum(w in TOPICS and w != topic for w in words)
  return {'sentiment': float(pos - neg if mode == 'kind' else neg - pos),
          'topic': on_topic - off_topic,
          'length': -0.5 * max(0, len(words) - LENGTH_FREE_WORDS)}


def gold_reward(prompt, response, weights=None):
  """The known reward: weighted sum of `score_components`."""
  weights = weights or GOLD_WEIGHTS
  return float(sum(weights[k] * v for k, v in score_components(prompt, response).items()))


def sample_prompt(rng):
  """(mode, prompt text)."""
  mode, topic = MODES[rng.integers(len(MODES))], TOPICS[rng.integers(len(TOPICS))]
  return mode, make_prompt(mode, topic)


def sample_response(rng, topic):
  """3-9 words: mostly sentiment and filler, sometimes the (or another) topic word."""
  n = int(rng.integers(3, 10))
  pools = (POSITIVE, NEGATIVE, NEUTRAL, (topic,), TOPICS)
  probs = np.array([0.3, 0.3, 0.25, 0.1, 0.05])
  words = []
  for _ in range(n):
    pool = pools[rng.choice(len(pools), p=probs)]
    words.append(pool[rng.integers(len(pool))])
  return ' '.join(words) + '.'


def make_pairs(n, seed=0, weights=None):
  """n PairExamples with chosen = the higher gold reward (ties resampled); subset = mode."""
  rng = np.random.default_rng([seed, 1])
  out = []
  while len(out) < n:
    mode, prompt = sample_prompt(rng)
    topic = parse_prompt(prompt)[1]
    a, b = sample_response(rng, topic), sample_response(rng, topic)
    ga, gb = gold_reward(prompt, a, weights), gold_reward(prompt, b, weights)
    if ga == gb:
      continue
    chosen, rejected = (a, b) if ga > gb else (b, a)
    out.append(make_pair(prompt, chosen, rejected, subset=mode, path='synthetic',
                         line=len(out) + 1))
  return out


def make_prompts(n, seed=0):
  """n RL prompt records {'prompt': str, 'subset': mode} (the Prompts format of DESIGN.md)."""
  rng = np.random.default_rng([seed, 2])
  return [dict(zip(('subset', 'prompt'), sample_prompt(rng))) for _ in range(n)]


def write_jsonl(path, examples):
  """Writes pairs in the explicit JSON Lines format (.gz compresses)."""
  write_pairs(path, examples)
