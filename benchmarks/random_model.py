"""Make a random-weight model directory from a ``config.json`` and a tokenizer directory.

For timing only (a model's speed does not depend on its weight values): lets the benchmarks run
model shapes whose weights cannot be shipped, e.g. on a GPU machine with no network.
Usage: ``python benchmarks/random_model.py CONFIG_DIR TOKENIZER_DIR OUT_DIR [dtype]``
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main(config_dir: str, tokenizer_dir: str, out: str, dtype: str = "bfloat16") -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = AutoConfig.from_pretrained(config_dir)
    model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, Path(out) / f.name)
    n = sum(p.numel() for p in model.parameters())
    print(f"{out}: {n / 1e6:.0f}M parameters, {dtype}")


if __name__ == "__main__":
    main(*sys.argv[1:])
