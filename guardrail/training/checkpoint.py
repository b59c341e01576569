"""The trainable base: a float32 Hugging Face checkpoint of the user's model.

transformers loads a GGUF file by dequantising it, but the model it returns still carries the
GGUF quantizer (``config.quantization_config``), and the Trainer refuses to train or save such a
model. So a GGUF is dequantised once into ``OUT/base`` (config, float32 safetensors, tokenizer
and chat template) by rebuilding the model from its config without the quantizer and loading
the dequantised weights into it. A model directory is used as it is unless it is quantized
(then training it is an error). ``OUT/base/guardrail-base.json`` records the source (path,
size, mtime) so a second call reuses the checkpoint and a changed source rebuilds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrail.errors import ConfigError
from guardrail.models import resolve_model_path

MARKER = "guardrail-base.json"


@dataclass(frozen=True)
class Base:
    """The checkpoint to train (``path``) and the GGUF it came from (``gguf``; None for a model
    directory, whose adapters then cannot be converted for llama.cpp)."""

    path: Path
    gguf: Path | None


def _source_stamp(src: Path) -> dict[str, Any]:
    st = src.stat()
    return {"source": str(src.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def trainable_base(model: str | None, out_dir: str | Path, *, trust_remote_code: bool = False
                   ) -> Base:
    """The float32 checkpoint for ``model`` (None: the embedded model), made under ``out_dir``
    when the model is a GGUF file."""
    src = resolve_model_path(model)
    if src.is_dir():
        cfg_file = src / "config.json"
        if not cfg_file.is_file():
            raise ConfigError(f"--model {str(src)!r}: a directory must be a Hugging Face "
                              "checkpoint (config.json); or give a .gguf file")
        quant = json.loads(cfg_file.read_text()).get("quantization_config")
        if quant:
            raise ConfigError(
                f"--model {str(src)!r} is quantized ({quant.get('quant_method', quant)}): the "
                "Trainer cannot train it; give a float32/bfloat16 checkpoint or the GGUF file")
        return Base(src, None)
    if src.suffix != ".gguf":
        raise ConfigError(f"--model {str(src)!r}: give a .gguf file or a checkpoint directory")
    dest = Path(out_dir) / "base"
    stamp = _source_stamp(src)
    marker = dest / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return Base(dest, src)
    dequantise(src, dest, trust_remote_code=trust_remote_code)
    marker.write_text(json.dumps(stamp, indent=2) + "\n")
    return Base(dest, src)


def dequantise(gguf_file: Path, dest: Path, *, trust_remote_code: bool = False) -> Path:
    """Write ``gguf_file`` as a float32 checkpoint (weights, config, tokenizer) in ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = {"gguf_file": gguf_file.name, "trust_remote_code": trust_remote_code}
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), **where)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), dtype=torch.float32,
                                                      **where)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--model {str(gguf_file)!r}: transformers cannot load this GGUF "
                          f"(architecture not supported?): {e}") from e
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32,
                                             trust_remote_code=trust_remote_code)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    dest.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(str(dest))
    tok.save_pretrained(str(dest))
    return dest
