"""Convert a MidPO expert (a PEFT LoRA adapter on ``down_proj``) to a GGUF LoRA for llama.cpp.

The adapter's pairs become ``blk.N.ffn_down.weight.lora_a`` / ``lora_b`` (llama.cpp's names for
the MLP down-projection in every llama-like architecture) and its scaling is kept as
``adapter.lora.alpha = scaling · r``, so llama.cpp applies the same ``s`` PEFT does. Adapters on
other modules need llama.cpp's own ``convert_lora_to_gguf.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from guardrail.errors import ConfigError


def _model_header(model_gguf: Path) -> tuple[str, int]:
    import gguf  # optional: the llamacpp extra

    from guardrail.adapters.llamacpp_lora import gguf_field  # needs gguf

    if not model_gguf.is_file():
        raise ConfigError(f"--model: no such GGUF file: {str(model_gguf)!r}")
    reader = gguf.GGUFReader(str(model_gguf))
    arch = str(gguf_field(reader, "general.architecture") or "")
    blocks = gguf_field(reader, f"{arch}.block_count")
    if not arch or blocks is None:
        raise ConfigError(f"--model: {str(model_gguf)!r} names no architecture or block count")
    return arch, int(blocks)  # type: ignore[call-overload]


def convert_peft_lora(peft_dir: str | Path, model_gguf: str | Path, out: str | Path) -> Path:
    """Write the GGUF LoRA of the PEFT adapter in ``peft_dir`` for the model ``model_gguf``."""
    import gguf  # optional: the llamacpp extra

    from guardrail.experts.lora import load_lora_expert  # torch: the experts extra

    arch, blocks = _model_header(Path(model_gguf).expanduser())
    expert = load_lora_expert(peft_dir, "converted")
    beyond = sorted(i for i in expert.A if i >= blocks)
    if beyond:
        raise ConfigError(
            f"{str(peft_dir)!r}: layers {beyond} do not exist in the model ({blocks} layers)"
        )
    out_path = Path(out).expanduser()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out_path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, expert.scaling * expert.rank)
    for i in sorted(expert.A):
        a = expert.A[i].detach().float().cpu().numpy().astype(np.float32)
        b = expert.B[i].detach().float().cpu().numpy().astype(np.float32)
        writer.add_tensor(f"blk.{i}.ffn_down.weight.lora_a", a)
        writer.add_tensor(f"blk.{i}.ffn_down.weight.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
