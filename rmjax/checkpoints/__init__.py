"""Checkpoints: transformers safetensors <-> params, GGUF -> params, presets (see presets.py).

Reward models as HF directories (`rmjax convert --to hf:OUT`, `--model hf:DIR`): layouts in
hf_rm.py, the atomic writer in hf_export.py (with tokenizer_export.py and model_card.py); import
them as modules (`from rmjax.checkpoints import hf_export`), they are not re-exported here.
"""

from rmjax.checkpoints.gguf import load_gguf
from rmjax.checkpoints.hf import (
    config_from_hf, config_to_hf, hf_state_dict_from_params, load_hf_dir,
    params_from_hf_state_dict, save_hf_dir)
from rmjax.checkpoints.presets import (
    KNOWN_PRESETS, load_pretrained, load_tokenizer, preset_config, save_pretrained)

__all__ = [
    "KNOWN_PRESETS", "config_from_hf", "config_to_hf", "hf_state_dict_from_params", "load_gguf",
    "load_hf_dir", "load_pretrained", "load_tokenizer", "params_from_hf_state_dict",
    "preset_config", "save_hf_dir", "save_pretrained",
]
