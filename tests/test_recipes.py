"""The fine-tuning recipe is one function (`configs.common.finetune_recipe`): the config users
run (`configs/bt.py:smollm2,lora`) and the experiment whose numbers the README quotes (E-d's BT
arm, experiments/grm_ood.py) build the same model, optimizer and data handling from it."""

from configs import bt as bt_config
from experiments import grm_ood
from rmjax.train.validate import validate_config

RECIPE_KEYS = ("model", "optim.lr", "optim.schedule", "optim.clip_norm", "optim.final_lr_frac",
               "data.packing", "data.max_length", "data.on_overlong", "train.batch_size")


def _get(c, key):
  for part in key.split("."):
    c = c[part]
  return c.to_dict() if hasattr(c, "to_dict") else c


def test_bt_lora_recipe_is_e_d_bt_arm_and_validates():
  recipe = bt_config.get_config("smollm2,lora")
  validate_config(recipe)
  e_d = grm_ood.make_config(grm_ood.parse_args(["--workdir", "unused"]), "bt", "train.jsonl")
  for key in RECIPE_KEYS:
    assert _get(recipe, key) == _get(e_d, key), key
  # one epoch of E-d's 1,500 pairs, its warmup
  assert recipe.train.steps == e_d.train.steps == 188
  assert recipe.optim.warmup_steps == e_d.optim.warmup_steps
  assert recipe.model.lora.rank == 32 and recipe.model.head == "mlp"
  plain = bt_config.get_config("smollm2")
  assert plain.model.lora.rank == 0 and not plain.data.packing  # the flag is what changes it


def test_frozen_arm_keeps_the_recipe_head_without_adapters():
  c = grm_ood.make_config(grm_ood.parse_args(["--workdir", "unused"]), "frozen", "train.jsonl")
  assert c.model.lora.rank == 0 and not c.data.packing and c.train.freeze_backbone
  assert (c.model.head, c.model.head_hidden, c.model.head_dropout) == ("mlp", 1024, 0.1)
