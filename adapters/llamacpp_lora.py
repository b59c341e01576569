"""Check a GGUF LoRA adapter before llama.cpp loads it, and read its rank and alpha.

llama.cpp's own loader answers a bad file with a null pointer and a log line; reading the header
here first turns each problem into an error that names the file and what is wrong with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from guardrail.errors import BackendError, ConfigError, ModelNotFoundError


@dataclass(frozen=True)
class LoraGGUF:
    """A GGUF LoRA adapter: its file, architecture, rank and alpha."""

    path: Path
    architecture: str
    rank: int
    alpha: float

    @property
    def default_scale(self) -> float:
        """``alpha / rank``: the ``s`` llama.cpp applies at scale 1 (PEFT's scaling)."""
        return self.alpha / self.rank


def gguf_field(reader: object, key: str) -> object | None:
    """The value of header field ``key`` (a string or a number), or ``None``."""
    f = reader.fields.get(key)  # type: ignore[attr-defined]
    if f is None:
        return None
    value = f.parts[f.data[0]]
    if f.types and f.types[0].name == "STRING":
        return bytes(value).decode("utf-8")
    return value[0].item()


def read_lora_gguf(path: str | Path, *, arch: str | None = None) -> LoraGGUF:
    """Read and check the adapter at ``path`` (for a model of architecture ``arch``)."""
    try:
        import gguf
    except ImportError as e:  # pragma: no cover - depends on the install
        raise BackendError(
            "LoRA adapters on llama.cpp need the gguf package: pip install gguf"
        ) from e
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelNotFoundError(f"LoRA adapter: no such GGUF file: {str(p)!r}")
    try:
        reader = gguf.GGUFReader(str(p))
    except Exception as e:  # noqa: BLE001 - the reader raises anything on a non-GGUF file
        raise ConfigError(f"LoRA adapter {str(p)!r} is not a GGUF file ({e})") from e
    kind = gguf_field(reader, "general.type")
    if kind != "adapter" or gguf_field(reader, "adapter.type") != "lora":
        raise ConfigError(
            f"LoRA adapter {str(p)!r} is a GGUF {kind or 'model'} file, not a LoRA adapter "
            "(general.type must be 'adapter' and adapter.type 'lora'; convert a PEFT adapter "
            "with `guardrail experts convert-lora`)"
        )
    file_arch = str(gguf_field(reader, "general.architecture") or "")
    if arch and file_arch != arch:
        raise ConfigError(
            f"LoRA adapter {str(p)!r} is for architecture {file_arch!r}, the model is {arch!r}"
        )
    ranks = {int(t.shape[1]) for t in reader.tensors if t.name.endswith(".lora_a")}
    if not ranks:
        raise ConfigError(f"LoRA adapter {str(p)!r} holds no lora_a/lora_b tensors")
    if len(ranks) > 1:
        raise ConfigError(f"LoRA adapter {str(p)!r} mixes ranks {sorted(ranks)}; one is supported")
    rank = ranks.pop()
    alpha = gguf_field(reader, "adapter.lora.alpha")
    return LoraGGUF(p, file_arch, rank, float(alpha) if alpha else float(rank))
