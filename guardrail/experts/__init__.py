"""MidPO-style expert mixing (docs/experts.md, docs/methods.md §2).

* Faithful mode (transformers): two PEFT LoRA experts on every ``down_proj`` mixed by a per-layer
  router inside the model (:class:`ExpertMix`, :func:`load_mix`).
* Portable mode (any backend): experts are token streams mixed per token by
  :class:`guardrail.decoding.experts.ExpertsRule`; the probe router is trained by
  prompt probe in :mod:`guardrail.probes`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use: the portable mode (guardrail.experts.policy) needs no torch.
_WHERE = {
    "AdapterError": "errors", "AdapterNotFoundError": "errors", "RouterFileError": "errors",
    "TokenizerMismatchError": "errors",
    "ExpertMix": "faithful", "FaithfulRule": "faithful", "find_down_projs": "faithful",
    "mix_delta": "faithful", "load_mix": "faithful",
    "LoraExpert": "lora", "load_lora_expert": "lora",
    "load_router": "router_file", "save_router": "router_file",
    "FixedGates": "routers", "FoldedGates": "routers", "StackedGates": "routers",
    "fold_stacked": "routers",
    "check_same_tokenizer": "tokenizers",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"guardrail.experts.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'guardrail.experts' has no attribute {name!r}")


__all__ = sorted(_WHERE)
