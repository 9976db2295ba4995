"""ArmoRM: ridge, verbosity de-correlation, gate, stage 2 freezing, ratings errors, synthetic
end-to-end on known features, HF import, CLI score fields."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmjax import losses
from rmjax.data import objectives as objs
from rmjax.data import ratings as rdata
from rmjax.data import specs
from rmjax.data import synthetic_multi as sm
from rmjax.errors import DataError
from rmjax.models.armorm import ArmoHeads, GatingMLP, prompt_end_index
from rmjax.tasks import armorm
from rmjax.train import head_fit
from _util import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tiny models built again and again in this module: their compiles are shared (conftest)
pytestmark = pytest.mark.usefixtures("jax_compile_cache")


def tiny_config(**stage2):
  from configs import armorm as conf
  c = conf.get_config("tiny,smoke")
  c.stage2.update(stage2)
  return c


# ------------------------------------------------------------------------------ stage 1


def test_ridge_matches_hand_computed_closed_form():
  x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  y = np.array([1.0, 2.0, 4.0])
  # X^T X = [[2, 1], [1, 2]], X^T y = [5, 6]; alpha = 1 -> solve [[3, 1], [1, 3]] w = [5, 6]
  np.testing.assert_allclose(np.asarray(head_fit.ridge(x, y, 1.0)), [9 / 8, 13 / 8], rtol=1e-5)
  grid = np.asarray(head_fit.ridge_grid(x, y, (0.0, 1.0)))
  np.testing.assert_allclose(grid[0], np.linalg.lstsq(x, y, rcond=None)[0], rtol=1e-4)


def test_fit_ridge_picks_alpha_by_val_mse_and_masks_missing():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 6)).astype(np.float32)
  w_true = rng.normal(size=6)
  y = np.stack([x @ w_true + 0.01 * rng.normal(size=200), np.full(200, np.nan)], 1)
  y[::7, 0] = np.nan
  w, info = head_fit.fit_ridge(x, y.astype(np.float32))
  assert info[1] is None and np.all(w[:, 1] == 0)
  keep = ~np.isnan(y[:, 0])
  tr, va = head_fit.split_80_20(int(keep.sum()))
  xs, ys = x[keep], y[keep, 0]
  best = min(head_fit.RIDGE_ALPHAS, key=lambda a: np.mean((xs[va] @ np.linalg.solve(
      xs[tr].T @ xs[tr] + a * np.eye(6), xs[tr].T @ ys[tr]) - ys[va]) ** 2))
  assert info[0]["alpha"] == best
  np.testing.assert_allclose(w[:, 0], w_true, atol=0.05)


def test_masked_mse_ignores_missing():
  pred = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  tgt = jnp.array([[0.0, jnp.nan], [3.0, 2.0]])
  mask = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  # objective 0: (1 + 0) / 2 = 0.5; objective 1: 4 / 1 = 4 -> mean 2.25
  assert float(losses.masked_mse(pred, tgt, mask)) == pytest.approx(2.25)


# ------------------------------------------------------------------ verbosity de-correlation


def test_verbosity_penalties_on_constructed_example():
  rng = np.random.default_rng(0)
  v = rng.normal(size=2000)
  indep = rng.normal(size=2000)
  half = 0.3 * v + 0.05 * rng.normal(size=2000)      # needs lambda ~= 0.3
  stuck = 3.0 * v                                       # never below tau with p <= 0.95
  r = np.stack([half, indep, stuck, rng.normal(size=2000), v], 1)
  lam, conv = losses.verbosity_penalties(r, 4, threshold=0.03)
  assert lam[1] == 0.0 and conv[1]                     # uncorrelated: first penalty (0) works
  assert 0.25 <= lam[0] <= 0.35 and conv[0]
  assert lam[2] == 1.0 and not conv[2] and lam[4] == 1.0
  # ascending grid: the chosen penalty is the first one that reaches tau
  prev = [p for p in losses.VERBOSITY_PENALTIES if p < lam[0]]
  assert all(losses.spearman(r[:, 0] - p * v, v) > 0.03 for p in prev)
  t = losses.verbosity_transform(lam, 4)
  expect = np.eye(5)
  expect[4, :] -= lam
  np.testing.assert_allclose(t, expect, atol=1e-6)
  after = r @ t
  np.testing.assert_allclose(after[:, 4], 0.0, atol=1e-6)  # transformed verbosity is 0
  for j in np.flatnonzero(conv):
    assert losses.spearman(after[:, j], v) <= 0.03
    np.testing.assert_allclose(after[:, j], r[:, j] - lam[j] * v, atol=1e-4)


def test_spearman_matches_scipy():
  from scipy.stats import spearmanr
  rng = np.random.default_rng(1)
  a, b = rng.integers(0, 5, 50), rng.normal(size=50)
  assert losses.spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-9)


# ---------------------------------------------------------------------------------- gate


def test_gate_shape_normalisation_and_score_identity():
  heads = ArmoHeads(5, gate_hidden=16, gate_layers=3, gate_dropout=0.2, temperature=10.0)
  h, hx = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 8))
  p = nn.unbox(heads.init(jax.random.PRNGKey(0), h, hx)["params"])
  assert set(p) == {"regression", "transform", "gate", "beta"} and float(p["beta"]) == 1.0
  assert len(p["gate"]) == 4 and p["gate"]["layers_0"]["kernel"].shape == (8, 16)
  p = dict(p, beta=jnp.float32(1.7), regression={"kernel": jax.random.normal(jax.random.PRNGKey(2), (8, 5))},
           transform=jnp.asarray(losses.verbosity_transform([0.1, 0.2, 0.0, 0.3, 1.0], 4)))
  out = heads.apply({"params": p}, h, hx)
  g, r = out["gate"], out["objectives"]
  assert g.shape == (6, 5) and bool(jnp.all(g >= 0))
  np.testing.assert_allclose(g.sum(-1), 1.0, atol=1e-6)
  # released-model identity: sum_j r_j (beta g T^T)_j == beta g^T (r T)
  coeff = (1.7 * g) @ p["transform"].T
  np.testing.assert_allclose(jnp.sum(r * coeff, -1), out["reward"], atol=1e-5)
  # dropout is active only when not deterministic
  g2 = GatingMLP(5, 16, 3, 0.5).apply({"params": p["gate"]}, hx, deterministic=False,
                                      rngs={"dropout": jax.random.PRNGKey(3)})
  assert not np.allclose(g2, g)


def test_prompt_end_index_finds_last_pattern():
  ids = jnp.array([[9, 2, 5, 1, 7, 2, 5, 1, 8, 0], [3, 3, 3, 3, 3, 3, 3, 3, 3, 3]])
  mask = jnp.array([[1] * 9 + [0], [1] * 10])
  np.testing.assert_array_equal(prompt_end_index(ids, mask, (2, 5, 1)), [5, 9])  # no match -> last


def test_prompt_pattern_from_chat_template():
  from rmjax.data.tokenize import ByteTokenizer, ChatEncoder
  from rmjax.inference.embed import prompt_end_pattern
  tok = ByteTokenizer()
  pat = prompt_end_pattern(tok)
  assert tok.decode(pat) == "<|im_end|>\n<|im_start|>assistant\n"
  enc = ChatEncoder(tok, 256)
  msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
          {"role": "user", "content": "again"}]
  p, r, _ = enc.encode_pair(msgs, "answer")
  ids = jnp.asarray([p + r])
  i = int(prompt_end_index(ids, jnp.ones_like(ids), pat)[0])
  assert tok.decode(p[:i]).endswith("again") and p[i] == tok.eos_token_id


# ------------------------------------------------------------------------------- ratings


def _write(tmp_path, rows):
  path = tmp_path / "r.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return str(path)


GOOD = {"prompt": "q", "response": "a", "ratings": {"helpfulness": 0.5, "safety": None}}


@pytest.mark.parametrize("bad, field", [
    ({"ratings": {"helpfulness": float("nan")}}, "ratings.helpfulness"),
    ({"ratings": {"nonsense": 1.0}}, "ratings.nonsense"),
    ({"ratings": {"helpfulness": "high"}}, "ratings.helpfulness"),
    ({"ratings": None}, "ratings"),
    ({"response": None}, "response"),
])
def test_bad_ratings_are_one_line_errors(tmp_path, bad, field):
  row = dict(GOOD, **bad)
  if bad.get("response", 1) is None:
    del row["response"]
  path = _write(tmp_path, [GOOD, row])
  with pytest.raises(DataError) as e:
    rdata.read_ratings(path, objs.resolve(sm.OBJECTIVES))
  msg = str(e.value)
  assert "\n" not in msg and f"{path}:2" in msg and field in msg


def test_ratings_roundtrip_and_scales(tmp_path):
  ob = objs.resolve(sm.OBJECTIVES)
  ex = rdata.read_ratings(_write(tmp_path, [GOOD]), ob)[0]
  assert ex.ratings[0] == 0.5 and np.isnan(ex.ratings[2])
  assert objs.ARMORM_NAMES[objs.VERBOSITY_INDEX] == "helpsteer-verbosity" and len(objs.ARMORM_19) == 19
  assert objs.REGISTRY["helpsteer-helpfulness"].to_unit(4) == pytest.approx(0.9)
  assert objs.REGISTRY["ultrafeedback-overall_score"].to_unit(10) == 1.0
  assert objs.verbosity_index(sm.OBJECTIVES) == 4
  with pytest.raises(DataError, match="objective"):
    rdata.tag_pairs([], "nope", sm.OBJECTIVES)


# ------------------------------------------------------- synthetic end to end (known features)


def _features(pairs, rng):
  """Known embeddings: response = word-pool counts (+ noise dims); prompt = category one-hot."""
  def resp(text):
    w = text.replace(".", " ").split()
    pools = (sm.HELP, sm.RIGHT, sm.WRONG, sm.UNSAFE, sm.GARBLE)
    return np.array([sum(x in p for x in w) for p in pools] + [len(w), 1.0] + list(rng.normal(size=3) * 0.1))
  cat = lambda p: np.eye(3)[sm.CATEGORIES.index(sm.category(p.prompt[0][1]))]
  return {"hc": np.stack([resp(p.chosen) for p in pairs]).astype(np.float32),
          "hr": np.stack([resp(p.rejected) for p in pairs]).astype(np.float32),
          "hx": np.stack([np.concatenate([cat(p), rng.normal(size=7) * 0.1]) for p in pairs]).astype(np.float32)}


def test_gated_beats_single_and_uniform_on_synthetic_and_only_gate_trains(tmp_path):
  rng = np.random.default_rng(0)
  config = tiny_config(steps=300, batch_size=64, lr=1e-2)
  rated = sm.make_ratings(600, seed=0, unrated=("safety",))
  feats = _features([type("P", (), {"chosen": e.response, "rejected": e.response, "prompt": e.prompt})
                     for e in rated], rng)
  ratings = np.stack([e.ratings for e in rated])
  w, info = head_fit.fit_ridge(feats["hc"], ratings)
  assert info[2] is None  # safety: pairs only
  tagged = sm.make_objective_pairs(300, "safety")
  tf = _features([t.pair for t in tagged], rng)
  w[:, 2], probe = head_fit.fit_bt_probe(tf["hc"], tf["hr"])
  assert probe["bt_val_accuracy"] > 0.9
  train_pairs, eval_pairs = sm.make_pairs(600, seed=1), sm.make_pairs(300, seed=2)
  tr, ev = _features(train_pairs, rng), _features(eval_pairs, rng)
  t, decor = armorm.decorrelate(np.concatenate([tr["hc"], tr["hr"]]) @ w, config)
  assert decor["penalties"]["helpfulness"] > 0  # the confounded objective gets penalised
  assert abs(decor["spearman_after"]["helpfulness"]) <= 0.03 + 1e-9
  heads = armorm.make_heads(config)
  task = armorm.stage2_task(config, heads, w, t, tr, ev)
  final, state = armorm.train(armorm.stage2_config(config), str(tmp_path / "s2"), task,
                              return_state=True)
  p = jax.device_get(state.params)
  np.testing.assert_array_equal(p["regression"]["kernel"], w)   # frozen
  np.testing.assert_array_equal(p["transform"], t)             # frozen
  assert float(p["beta"]) != 1.0                                # trained
  from rmjax.eval.armorm_report import pair_eval, plots
  res = pair_eval(heads, p, ev, eval_pairs, list(config.objectives.names))
  assert res["accuracy"] > res["best_single_accuracy"] + 0.05, res
  assert res["accuracy"] > res["uniform_accuracy"] + 0.05, res
  g = res["gate_by_subset"]
  assert max(g["math"], key=g["math"].get) == "correctness"
  assert max(g["harmful"], key=g["harmful"].get) == "safety"
  paths = plots(str(tmp_path / "eval"), res, decor)
  assert all(os.path.getsize(x) > 1000 for x in paths)


# ------------------------------------------------------------------------ HF import + CLI


def test_import_released_layout(tmp_path):
  from safetensors.numpy import save_file
  from rmjax.checkpoints import armorm as ack
  from rmjax.checkpoints import hf
  from rmjax.checkpoints import load_pretrained
  cfg, bparams = load_pretrained("tiny")
  rng = np.random.default_rng(0)
  o, d, hd = 4, cfg.hidden_size, 8
  sd = {k: v for k, v in hf.hf_state_dict_from_params(bparams, cfg).items() if k.startswith("model.")}
  sd["regression_layer.weight"] = rng.normal(size=(o, d)).astype(np.float32)
  sd["reward_transform_matrix"] = losses.verbosity_transform([0.1, 0.2, 0.3, 1.0], 3)
  dims = [d, hd, hd, o]
  for i in range(3):
    sd[f"gating.layers.{i}.weight"] = rng.normal(size=(dims[i + 1], dims[i])).astype(np.float32)
    sd[f"gating.layers.{i}.bias"] = rng.normal(size=(dims[i + 1],)).astype(np.float32)
  sd["gating.logit_scale"] = np.array([1.5], np.float32)
  conf = dict(hf.config_to_hf(cfg), num_objectives=o, gating_temperature=10, gating_hidden_dim=hd,
              gating_n_hidden=2, architectures=["LlamaForRewardModelWithGating"])
  os.makedirs(tmp_path / "ck")
  save_file(sd, str(tmp_path / "ck" / "model.safetensors"))
  (tmp_path / "ck" / "config.json").write_text(json.dumps(conf))
  cfg2, params, st = ack.load_armorm(str(tmp_path / "ck"))
  assert st == {"objectives": 4, "temperature": 10.0, "gate_hidden": 8, "gate_layers": 2}
  heads = ArmoHeads(o, 8, 2, 0.0, 10.0)
  h, hx = rng.normal(size=(2, 3, d)).astype(np.float32)
  out = heads.apply({"params": params["heads"]}, h, hx)
  # reference: the released torch forward, written out in numpy
  x = hx
  for i in range(3):
    x = x @ sd[f"gating.layers.{i}.weight"].T + sd[f"gating.layers.{i}.bias"]
    if i < 2:
      x = np.maximum(x, 0)
  g = np.exp(x / 10 - (x / 10).max(1, keepdims=True))
  g = 1.5 * g / g.sum(1, keepdims=True)
  r = h @ sd["regression_layer.weight"].T
  np.testing.assert_allclose(out["reward"], np.sum(g * (r @ sd["reward_transform_matrix"]), 1), rtol=1e-4)
  np.testing.assert_allclose(out["objectives"], r, rtol=1e-4)
  np.testing.assert_array_equal(params["backbone"]["embed_tokens"]["embedding"],
                                np.asarray(bparams["embed_tokens"]["embedding"]))


def test_cli_train_smoke_then_score_fields(tmp_path):
  """The whole pipeline at smoke size through the CLI, then `rmjax score` / `rmjax eval`."""
  env = dict(os.environ, HF_HUB_OFFLINE="1", XLA_FLAGS=xla_flags(2))
  wd = tmp_path / "wd"
  run = lambda *a: subprocess.run([sys.executable, "-m", "rmjax", *a], cwd=REPO, env=env,
                                  capture_output=True, text=True, timeout=600)
  res = run("train", "--config", "configs/armorm.py:tiny,smoke", "--workdir", str(wd),
            "--config.armorm.stage1=ridge")
  assert res.returncode == 0, res.stderr[-3000:]
  assert (wd / "eval" / "gate_by_subset.png").exists() and (wd / "eval" / "verbosity.png").exists()
  assert (wd / "embeddings" / "ratings.npz").exists() and (wd / "embeddings" / "ratings.json").exists()
  inp = tmp_path / "in.jsonl"
  pairs = sm.make_pairs(6, seed=5)
  inp.write_text("\n".join(json.dumps({"id": i, "prompt": p.prompt[0][1], "response": p.chosen})
                           for i, p in enumerate(pairs)) + "\n")
  res = run("score", "--workdir", str(wd), "--data", str(inp), "--out", str(tmp_path / "out.jsonl"))
  assert res.returncode == 0, res.stderr[-3000:]
  recs = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert len(recs) == 6
  for rec in recs:
    assert set(rec["objectives"]) == set(sm.OBJECTIVES) == set(rec["gate"])
    assert sum(rec["gate"].values()) == pytest.approx(1.0, abs=1e-5)
    assert isinstance(rec["reward"], float)
  pin = tmp_path / "pairs.jsonl"
  pin.write_text("\n".join(json.dumps({"prompt": p.prompt[0][1], "chosen": p.chosen,
                                       "rejected": p.rejected}) for p in pairs) + "\n")
  res = run("eval", "--workdir", str(wd), "--data", str(pin))
  assert res.returncode == 0, res.stderr[-3000:]
  assert "accuracy" in json.loads(res.stdout.strip().splitlines()[-1])



# ------------------------------------------------------------- shared-data adapters, splits


def test_usr_and_xstest_records_map_to_ratings():
  from rmjax.data import rating_sources as rs
  ob = objs.resolve(["usr-overall", "usr-groundedness", "xstest-appropriate"])
  usr = {"source": "hi there \n hello , how are you ? \n\n", "context": "cats purr .",
         "system_output": "fine , you ?", "system_id": "sys",
         "scores": {d: 1.0 for d in rs.USR_DIMENSIONS} | {"overall": 4.0}}
  rec = rs.usr_record(usr, "usr", 1)
  assert [m["role"] for m in rec["prompt"]] == ["system", "assistant", "user"]
  assert rec["prompt"][-1]["content"] == "hello , how are you ?"
  rec["ratings"] = {k: v for k, v in rec["ratings"].items() if k in ("usr-overall", "usr-groundedness")}
  ex = rdata.parse_rating(rec, ob)
  np.testing.assert_allclose(ex.ratings[:2], [0.75, 1.0])  # overall 1..5, groundedness 0..1
  assert np.isnan(ex.ratings[2]) and ex.subset == "sys"
  want = {("contrast_x", "2_full_refusal"): 1.0, ("contrast_x", "3_partial_refusal"): 1.0,
          ("contrast_x", "1_full_compliance"): 0.0, ("homonyms", "1_full_compliance"): 1.0,
          ("homonyms", "2_full_refusal"): 0.0, ("homonyms", "3_partial_refusal"): 0.0}
  for (typ, label), v in want.items():
    rec = rs.xstest_record({"type": typ, "prompt": "p", "completion": "c", "final_label": label}, "x", 1)
    assert rec["ratings"] == {"xstest-appropriate": v}
    assert rec["subset"] == ("xstest/should-refuse" if typ.startswith("contrast") else "xstest/should-respond")
  with pytest.raises(DataError, match="final_label"):
    rs.xstest_record({"type": "t", "prompt": "p", "completion": "c", "final_label": "x"}, "x", 1)
  rows = [rdata.RatingExample(((("user", p),)), r, np.array([v], np.float32))
          for p, r, v in (("a", "r1", 1.0), ("a", "r2", 0.0), ("a", "r3", 0.0), ("b", "r4", 1.0),
                          ("b", "r5", 1.0))]
  assert rs.rating_pair_index(rows, 0) == [(0, 1), (0, 2)]   # ties and lone prompts: no pair
  assert rs.pairs_from_ratings(rows, 0)[1].rejected == "r3"


def test_shared_ratings_load_and_validate():
  from rmjax.data import rating_sources as rs
  from rmjax.data.sources import shared_data_root
  from rmjax.errors import ConfigError
  if shared_data_root() is None:
    pytest.skip("../shared/data absent")
  ob = objs.resolve(["usr-overall", "xstest-appropriate"])
  usr, st = rs.load_shared_ratings("usr_topicalchat", ob)
  assert len(usr) == 360 and st["invalid"] == 0
  assert all(0 <= e.ratings[0] <= 1 and np.isnan(e.ratings[1]) for e in usr)
  xs, _ = rs.load_shared_ratings("xstest", ob)
  assert len(xs) == 2250 and {e.subset for e in xs} == {"xstest/should-refuse", "xstest/should-respond"}
  assert len(specs.load_ratings_spec("shared:usr_topicalchat+shared:xstest", ob)) == 2610
  with pytest.raises(ConfigError, match="none of which"):
    rs.load_shared_ratings("xstest", objs.resolve(["helpfulness"]))


def test_hash_split_suffix_gives_disjoint_sides(tmp_path):
  from rmjax.data.sources import split_by_prompt_hash
  path = tmp_path / "p.jsonl"
  path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"})
                            for i in range(200)) + "\n")
  full = specs.load_pairs_spec(f"json:{path}")
  tr, ev = specs.load_pairs_spec(f"json:{path}@train"), specs.load_pairs_spec(f"json:{path}@eval")
  assert (tr, ev) == tuple(split_by_prompt_hash(full, 0.1, 0)) and 5 < len(ev) < 40
  assert not {p.prompt for p in tr} & {p.prompt for p in ev}
  tagged = specs.load_objective_pairs(f"json:{path}@eval=>safety", sm.OBJECTIVES)
  assert [t.pair for t in tagged] == ev and {t.objective for t in tagged} == {2}


def test_smollm2_config_names_every_objective_it_uses():
  from configs import armorm as conf
  c = conf.get_config("smollm2")
  names = list(c.objectives.names)
  objs.resolve(names)
  assert names[objs.verbosity_index(names, c.objectives.verbosity)] == c.data.length_objective
  for part in c.data.objective_pairs.split(";"):
    assert part.rsplit("=>", 1)[1] in names and part.split("=>")[0].endswith("@train")
  assert c.data.source.endswith("@train") and c.data.eval_source.endswith("@eval")
  assert objs.REGISTRY["usr-overall"].to_unit(5) == 1.0 and "usr-overall" in names
  r = rdata.length_rating(["", "x" * 4000, "x" * 10 ** 5])
  np.testing.assert_allclose(r, [0.0, 1.0, 1.0])


def test_runlocal_is_a_short_run_in_every_stage():
  """`tiny,runlocal` is documented as a 20-step smoke run: stage 1 (e2e, probe) and the gate too."""
  from configs import armorm as conf
  c = conf.get_config("tiny,runlocal")
  assert max(c.train.steps, c.armorm.e2e_steps, c.armorm.bt_probe_steps, c.stage2.steps) <= 20
