"""Parameter layouts and the "sufficiently sharded" check.

Golden snapshot: the PartitionSpec of every parameter of the tiny BT reward model (tiny Llama
backbone + scalar head) under the meshes (data, fsdp, tensor) = (8,1,1), (2,4,1), (2,2,2), as
`sharding.tree_shardings` derives them from the logical names and `DEFAULT_RULES`. A change to
a module's logical names, to the rules or to `_fit` shows up here as a diff of
tests/sharding_specs_tiny.json. After an intended change regenerate it with
`RMJAX_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_sharding_specs.py` and review the diff.
"""

import json
import logging
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rmjax import sharding as shd

SNAPSHOT = pathlib.Path(__file__).with_name("sharding_specs_tiny.json")
MESHES = {"8x1x1": (8, 1, 1), "2x4x1": (2, 4, 1), "2x2x2": (2, 2, 2)}


def _tiny_boxed():
  from rmjax.checkpoints.presets import PRESET_CONFIGS
  from rmjax.models.reward_model import RewardModel
  model = RewardModel(PRESET_CONFIGS["tiny"])
  ids = jnp.zeros((2, 8), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, jnp.ones_like(ids)))["params"]


def _spec_json(spec):
  return [list(a) if isinstance(a, tuple) else a for a in spec]


def _snapshot():
  boxed = _tiny_boxed()
  out = {"shapes": {}, "meshes": {}}
  for path, x in jax.tree_util.tree_leaves_with_path(shd.strip_boxes(boxed)):
    out["shapes"][jax.tree_util.keystr(path)] = list(x.shape)
  for name, shape in MESHES.items():
    shardings = shd.tree_shardings(boxed, shd.make_mesh(shape))
    out["meshes"][name] = {jax.tree_util.keystr(p): _spec_json(s.spec)
                           for p, s in jax.tree_util.tree_leaves_with_path(shardings)}
  return out


def test_tiny_model_param_specs_match_snapshot():
  got = _snapshot()
  if os.environ.get("RMJAX_UPDATE_SNAPSHOTS"):
    SNAPSHOT.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
  want = json.loads(SNAPSHOT.read_text())
  assert got["shapes"] == want["shapes"], "parameter tree changed: regenerate and review"
  for mesh in MESHES:
    diff = {k: (want["meshes"][mesh].get(k), v) for k, v in got["meshes"][mesh].items()
            if want["meshes"][mesh].get(k) != v}
    assert not diff, f"mesh {mesh}: (snapshot, now) {diff}"


def test_snapshot_shards_what_the_rules_intend():
  """Sanity of the snapshot itself: the big matrices are split over fsdp (embed) and tensor
  (vocab / heads / mlp); norms and the scalar head's output dim stay replicated."""
  snap = json.loads(SNAPSHOT.read_text())["meshes"]
  bb = "['backbone']"
  for mesh in MESHES:
    s = snap[mesh]
    assert s[f"{bb}['embed_tokens']['embedding']"] == ["tensor", "fsdp"]
    assert s[f"{bb}['layers']['self_attn']['q_proj']['kernel']"] == [None, "fsdp", "tensor"]
    assert s[f"{bb}['layers']['self_attn']['o_proj']['kernel']"] == [None, "tensor", "fsdp"]
    assert s[f"{bb}['layers']['mlp']['gate_proj']['kernel']"] == [None, "fsdp", "tensor"]
    assert s[f"{bb}['layers']['mlp']['down_proj']['kernel']"] == [None, "tensor", "fsdp"]
    assert s[f"{bb}['norm']['scale']"] == [None]
    # the batch axis 'data' never shards a parameter
    assert not any("data" in json.dumps(v) for v in s.values())


def test_tiny_model_is_sufficiently_sharded():
  boxed = _tiny_boxed()
  for name, shape in MESHES.items():
    mesh = shd.make_mesh(shape)
    rep = shd.check_sufficiently_sharded(shd.strip_boxes(boxed), shd.tree_shardings(boxed, mesh),
                                         mesh)
    assert not rep["warned"], (name, rep)
    if name != "8x1x1":  # only the norms and the tiny head stay whole on each device
      assert rep["replicated_fraction"] < 0.01, rep
      assert rep["per_device_bytes"] < 1.02 * rep["ideal_per_device_bytes"], rep


def test_mostly_replicated_params_warn_once(caplog):
  mesh = shd.make_mesh((2, 1, 4))
  # 3 x 1000 float32 kernels whose 'mlp' dim (30) tensor=4 does not divide -> _fit replicates
  tree = {f"w{i}": jax.ShapeDtypeStruct((1000, 30), jnp.float32) for i in range(3)}
  tree["ok"] = jax.ShapeDtypeStruct((1000, 8), jnp.float32)
  shardings = jax.tree_util.tree_map(
      lambda x: shd.logical_to_sharding(P("embed", "mlp"), x.shape, mesh), tree)
  # (fsdp = 1 stays named: it divides everything and splits nothing)
  assert shardings["w0"].spec == P("fsdp", None) and shardings["ok"].spec == P("fsdp", "tensor")
  with caplog.at_level(logging.WARNING, logger="rmjax.sharding"):
    rep = shd.check_sufficiently_sharded(tree, shardings, mesh)
    shd.check_sufficiently_sharded(tree, shardings, mesh)  # same message: logged once
  assert rep["warned"] and rep["replicated_fraction"] == pytest.approx(90 / 98)
  assert rep["weight_axes"] == {"tensor": 4}
  assert rep["per_device_bytes"] == pytest.approx(4 * (3 * 30000 + 8000 / 4))
  assert rep["ideal_per_device_bytes"] == pytest.approx(4 * 98000 / 4)
  lines = [r.getMessage() for r in caplog.records if r.name == "rmjax.sharding"]
  assert len(lines) == 1 and "\n" not in lines[0]
  assert "92% of" in lines[0] and "tensor=4" in lines[0] and "['w0'] [1000, 30]" in lines[0]


def test_no_warning_without_weight_axes_or_below_threshold(caplog):
  tree = {"w": jax.ShapeDtypeStruct((64, 30), jnp.float32)}
  with caplog.at_level(logging.WARNING, logger="rmjax.sharding"):
    mesh = shd.make_mesh((8, 1, 1))  # pure data parallel: replication is the design
    rep = shd.check_sufficiently_sharded(tree, {"w": NamedSharding(mesh, P())}, mesh)
    assert not rep["warned"] and rep["replicated_fraction"] == 1.0 and not rep["weight_axes"]
    mesh = shd.make_mesh((1, 8, 1))
    rep = shd.check_sufficiently_sharded(tree, {"w": NamedSharding(mesh, P())}, mesh,
                                         min_bytes=1 << 20)  # tiny trees are not judged
    assert not rep["warned"]
    rep = shd.check_sufficiently_sharded(tree, {"w": NamedSharding(mesh, P("fsdp"))}, mesh)
    assert not rep["warned"] and rep["replicated_fraction"] == 0.0
  assert not [r for r in caplog.records if r.name == "rmjax.sharding"]


def test_tree_shardings_runs_the_check(caplog):
  import flax.linen as nn
  mesh = shd.make_mesh((1, 8, 1))
  boxed = {"w": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((1 << 18, 3), jnp.float32),
                                         names=("vocab", "embed"))}  # 3 MiB; embed=3 % 8 != 0
  with caplog.at_level(logging.WARNING, logger="rmjax.sharding"):
    s = shd.tree_shardings(boxed, mesh)
  assert s["w"].spec == P("tensor", None)  # tensor = 1; fsdp = 8 dropped from embed = 3
  assert any("replicated over fsdp=8" in r.getMessage() for r in caplog.records)


def test_sharding_report_on_real_arrays():
  mesh = shd.make_mesh((2, 4, 1))
  x = jax.device_put(np.zeros((8, 16), np.float32), NamedSharding(mesh, P("fsdp", None)))
  rep = shd.sharding_report({"x": x}, {"x": x.sharding}, mesh)
  assert rep["replicated_bytes"] == 0 and rep["per_device_bytes"] == 8 * 16 * 4 / 4


def test_distributed_env_detection():
  assert shd.distributed_env({}) is None
  assert shd.distributed_env({"SLURM_NTASKS": "1", "SLURM_PROCID": "0",
                              "SLURM_STEP_NODELIST": "n1"}) is None
  assert shd.distributed_env({"SLURM_NTASKS": "4"}) is None  # salloc shell, not under srun
  assert shd.distributed_env({"SLURM_NTASKS": "4", "SLURM_PROCID": "1",
                              "SLURM_STEP_NODELIST": "n[1-2]"}) == "slurm"
  assert shd.distributed_env({"TPU_WORKER_HOSTNAMES": "localhost"}) is None
  assert shd.distributed_env({"TPU_WORKER_HOSTNAMES": "10.0.0.1,10.0.0.2"}) == "tpu"
  assert shd.distributed_env({"MEGASCALE_COORDINATOR_ADDRESS": "h:1"}) == "tpu-multislice"
  assert shd.distributed_env({"OMPI_COMM_WORLD_SIZE": "2",
                              "OMPI_MCA_orte_hnp_uri": "x"}) == "ompi"
  assert shd.distributed_env({"JAX_COORDINATOR_ADDRESS": "h:1"}) == "jax"
  assert shd.distributed_env({"RMJAX_DISTRIBUTED": "1"}) == "forced"


def test_initialize_distributed_flag_errors(monkeypatch):
  from rmjax.errors import ConfigError
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
            "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "RMJAX_DISTRIBUTED",
            "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(k, raising=False)
  assert shd.maybe_initialize_distributed() is False
  assert shd.maybe_initialize_distributed(num_processes=1, process_id=0) is False
  with pytest.raises(ConfigError, match="need --coordinator"):
    shd.maybe_initialize_distributed(num_processes=2, process_id=0)
  with pytest.raises(ConfigError, match="needs --num_processes and --process_id"):
    shd.maybe_initialize_distributed("127.0.0.1:1234")
  with pytest.raises(ConfigError, match="not in"):
    shd.maybe_initialize_distributed("127.0.0.1:1234", 2, 2)
