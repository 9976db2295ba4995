"""rmjax.aot: compile for TPU slices that are not attached (libtpu's compile-only devices).

The compile tests need libtpu (the `tpu` extra) and are skipped without it; they run in this
process beside conftest's 8 fake CPU devices. Each compiles a tiny Llama train step in seconds.
"""

import importlib.util
import json

import jax
import jax.numpy as jnp
import optax
import pytest

from rmjax import sharding as shd
from rmjax.aot import (CHIPS, batch_structs, chip_of, compile_function, format_table, llama_flops,
                       parse_topology, write_json)
from rmjax.aot import topology as topo
from rmjax.errors import ConfigError
from rmjax.models.llama import Llama, LlamaConfig

TINY = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


def _needs_libtpu():
  pytest.importorskip("libtpu", reason="TPU AOT compilation needs libtpu: pip install -e '.[tpu]'")


def _train_step_row(cfg, topology, mesh_shape, batch, seq, name):
  """Compile one AdamW step of next-token cross-entropy on `cfg` for `topology`."""
  mesh = topo.topology_mesh(topology, mesh_shape)
  model, tx = Llama(cfg), optax.adamw(1e-3)

  def init(rng):
    params = model.init(rng, jnp.zeros((1, 2), jnp.int32))["params"]
    return {"params": params, "opt": tx.init(params)}

  boxed = jax.eval_shape(init, jax.random.PRNGKey(0))  # boxed params -> boxed moments too
  state_sh = shd.tree_shardings(boxed, mesh)
  state = shd.with_shardings(shd.strip_boxes(boxed), state_sh)
  data_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(shd.BATCH))
  data = batch_structs({"input_ids": ((batch, seq), jnp.int32),
                        "attention_mask": ((batch, seq), jnp.int32)}, data_sh)

  def step(state, data):
    def loss_fn(params):
      logits = model.apply({"params": params}, data["input_ids"], attention_mask=data["attention_mask"])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], data["input_ids"][:, 1:])
      return ce.mean()
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return compile_function(name, step, (state, data), (state_sh, data_sh), (state_sh, replicated),
                          mesh, chip_of(topology), donate_argnums=(0,),
                          model_flops=llama_flops(cfg, batch, seq))


def test_tiny_llama_train_step_fits_on_v5e_2x2():
  _needs_libtpu()
  row = _train_step_row(TINY, "v5e:2x2", (2, 2, 1), batch=8, seq=32, name="train_step")
  assert row["fits"] is True and row["error"] is None, row
  assert row["chip"] == "v5e" and row["chips"] == 4 and row["mesh"] == "data=2,fsdp=2,tensor=1"
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(jax.eval_shape(
      lambda: Llama(TINY).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32)))))
  # params + Adam mu/nu in f32, split over fsdp=2 where the dims divide: at least a third of it
  assert row["argument_bytes"] >= 12 * n_params / 2 / 3
  assert 0 < row["total_bytes"] < row["hbm_bytes"] == CHIPS["v5e"].hbm_bytes
  assert row["alias_bytes"] > 0  # the donated state is updated in place
  assert row["total_bytes"] == (row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"]
                                + row["temp_bytes"])
  assert row["flops"] > 0 and row["has_loops"] is True  # nn.scan over the layers
  assert row["roofline_step_s"] > 0 and 0 < row["mfu_at_roofline"] <= 1
  table = format_table([row])
  assert "FITS" in table and "train_step" in table


def test_oversized_vocab_reports_oom_not_raise():
  _needs_libtpu()
  # 2**25 x 64 f32 embedding + LM head = 16 GiB of params, replicated on a data-only mesh
  huge = TINY.replace(vocab_size=1 << 25)
  row = _train_step_row(huge, "v5e:2x2", (4, 1, 1), batch=4, seq=8, name="huge_vocab")
  assert row["fits"] is False, row
  assert row["error"] and "\n" not in row["error"] and len(row["error"]) <= 403
  assert "memory" in row["error"].lower() or "hbm" in row["error"].lower()
  assert "RESOURCE_EXHAUSTED" in row["error"]
  table = format_table([row])
  assert "OOM" in table and "huge_vocab" in table


def test_topology_meshes_multi_slice_and_errors():
  _needs_libtpu()
  mesh = topo.topology_mesh("v5e:2x2", (2, 4, 1), num_slices=2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  # 'data' crosses the slices: each data row lies inside one slice
  for row in mesh.devices.reshape(2, -1):
    assert len({d.slice_index for d in row}) == 1
  assert len(topo.topology_devices("v5p:2x2x1")) == 4  # megacore: one device per chip
  assert topo.topology_devices("v5e-16")[0].device_kind == topo.topology_devices("v5e:4x4")[0].device_kind
  with pytest.raises(ConfigError, match="multiple of 2"):
    topo.topology_mesh("v5e:2x2", (1, 8, 1), num_slices=2)
  with pytest.raises(ConfigError, match="v5e:3x3"):
    topo.topology_devices("v5e:3x3")
  with pytest.raises(ConfigError, match="4 chips"):
    topo.topology_mesh("v5e:2x2", (8, 1, 1))


def test_topology_names_without_libtpu(monkeypatch):
  assert parse_topology("v5e:4x4")[1:] == ((4, 4), "v5e:4x4")
  assert parse_topology("v5p-8")[1:] == ((2, 2, 1), "v5:2x2x1")
  assert parse_topology("v5litepod-16")[1:] == ((4, 4), "v5e:4x4")
  assert chip_of("v6e:16x16").peak_bf16_flops == 918e12
  for bad, msg in [("tpu9:2x2", "unknown TPU generation"), ("v5e:2x2x2", "2 dimensions"),
                   ("v5e-7", "unknown TPU topology")]:
    with pytest.raises(ConfigError, match=msg) as e:
      topo.topology_devices(bad)
    assert "\n" not in str(e.value)
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "libtpu" else real(n, *a))
  with pytest.raises(ConfigError, match=r"pip install -e '\.\[tpu\]'"):
    topo.topology_devices("v5e:2x2")


def test_format_table_and_atomic_json(tmp_path):
  rows = [{"function": "f", "chip": "v5e", "chips": 4, "mesh": "data=4,fsdp=1,tensor=1", "fits": True,
           "total_bytes": 3 << 30, "hbm_bytes": 16 << 30, "flops": 2e12, "has_loops": True,
           "roofline_step_s": 0.01, "mfu_at_roofline": 0.5, "error": None},
          {"function": "g", "chip": "v5e", "chips": 4, "mesh": "data=4,fsdp=1,tensor=1", "fits": False,
           "total_bytes": 20 << 30, "hbm_bytes": 16 << 30, "error": "RESOURCE_EXHAUSTED: Used 20G of 15.75G hbm"}]
  table = format_table(rows)
  lines = table.splitlines()
  assert "FITS" in lines[2] and "3G" in lines[2] and "OOM" in lines[3] and "Used 20G" in lines[3]
  assert lines[-1].startswith("*")  # the loop-counting footnote
  path = tmp_path / "sub" / "aot.json"
  write_json(rows, str(path))
  assert json.loads(path.read_text()) == rows
  assert [p.name for p in path.parent.iterdir()] == ["aot.json"]  # no temp file left behind
