"""Hugging Face transformers backend: streams are rows of one batch sharing a KV cache.

Streams of different lengths are left-padded; the attention mask hides the padding and explicit
position ids (each stream counts from 0 at its first real token) keep positions what they would be alone. Only
the last position's logits are computed, and they are copied to float32 numpy once per step.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from guardrail.adapters.base import (
    KNOWN_END_OF_TURN,
    Backend,
    GuardedStreams,
    HiddenStatesMixin,
    Message,
)
from numpy.typing import NDArray

from guardrail.errors import BackendError, ConfigError, ModelNotFoundError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DTYPES = ("float32", "float16", "bfloat16", "auto")
DEVICES = ("cpu", "cuda", "auto")


def _import_torch() -> Any:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise BackendError(
            "the transformers backend needs torch and transformers: "
            "pip install 'guardrail-decoding[transformers]'"
        ) from e
    return torch


class TransformersStreams(GuardedStreams):
    """Rows of one left-padded batch with a shared ``DynamicCache``."""

    def __init__(self, backend: TransformersBackend, prompts: Sequence[Sequence[int]]):
        torch = _import_torch()
        from transformers import DynamicCache

        super().__init__(len(prompts))
        self._torch = torch
        self._backend = backend
        self._model = backend.model
        dev = backend.device
        width = max(len(p) for p in prompts)
        pad = backend.pad_token_id
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p) :] = 1
        if backend.reference_mask_token is not None:  # reproduce the reference's flaw, on request
            mask = mask * (ids != backend.reference_mask_token).long()
        self._mask = mask.to(dev)
        self._held = [len(p) for p in prompts]
        self._cache = DynamicCache()
        positions = torch.tensor(
            [[0] * (width - n) + list(range(n)) for n in self._held], dtype=torch.long
        )
        self._last = self._forward(ids.to(dev), positions.to(dev))

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        with self._torch.inference_mode():
            out = self._model(
                input_ids=ids,
                attention_mask=self._mask,
                position_ids=positions,
                past_key_values=self._cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1, :]

    def _logits(self) -> NDArray[np.float32]:
        return self._last.float().cpu().numpy().copy()

    def _append(self, tokens: Sequence[int]) -> None:
        torch = self._torch
        dev = self._mask.device
        ids = torch.tensor(list(tokens), dtype=torch.long, device=dev).unsqueeze(1)
        positions = torch.tensor(self._held, dtype=torch.long, device=dev).unsqueeze(1)
        ones = torch.ones((len(self._held), 1), dtype=self._mask.dtype, device=dev)
        self._mask = torch.cat([self._mask, ones], dim=1)
        self._held = [n + 1 for n in self._held]
        self._last = self._forward(ids, positions)

    def _keep(self, indices: list[int]) -> None:
        sel = self._torch.tensor(indices, dtype=self._torch.long, device=self._mask.device)
        self._cache.batch_select_indices(sel)
        self._mask = self._mask.index_select(0, sel)
        self._last = self._last.index_select(0, sel)
        self._held = [self._held[i] for i in indices]
        # Drop leading columns that are padding in every remaining row.
        lead = int((self._mask.sum(0) == 0).long().cumprod(0).sum())
        if lead:
            self._mask = self._mask[:, lead:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, lead:, :]
                layer.values = layer.values[:, :, lead:, :]

    def _lengths(self) -> list[int]:
        return list(self._held)

    @property
    def can_add(self) -> bool:
        return True

    def _add(self, prompts: Sequence[Sequence[int]]) -> Iterator[int]:
        """Prefill ``prompts`` as a batch of their own (one forward), then merge it into this
        one: the shorter side's cache and mask are left-padded with masked columns, so every
        stream keeps its own positions."""
        torch = self._torch
        new = TransformersStreams(self._backend, prompts)
        yield sum(len(p) for p in prompts)
        width, extra = self._mask.shape[1], new._mask.shape[1]
        target = max(width, extra)

        def pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
            if n == 0:
                return t
            shape = list(t.shape)
            shape[dim] = n
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        self._mask = torch.cat([pad(self._mask, target - width, 1),
                                pad(new._mask, target - extra, 1)], dim=0)
        for mine, theirs in zip(self._cache.layers, new._cache.layers):
            mine.keys = torch.cat([pad(mine.keys, target - width, 2),
                                   pad(theirs.keys, target - extra, 2)], dim=0)
            mine.values = torch.cat([pad(mine.values, target - width, 2),
                                     pad(theirs.values, target - extra, 2)], dim=0)
        self._last = torch.cat([self._last, new._last], dim=0)
        self._held += new._held
        new.close()

    def _close(self) -> None:
        self._cache = None  # type: ignore[assignment]
        self._last = None  # type: ignore[assignment]


class TransformersBackend(HiddenStatesMixin, Backend):
    """A causal LM and its tokenizer from a model directory, a GGUF file, or given objects.

    Args:
        model: a model directory, a ``.gguf`` file, or a loaded ``PreTrainedModel``.
        tokenizer: required when ``model`` is a loaded model; otherwise loaded beside it.
        device: ``cpu``, ``cuda`` or ``auto`` (cuda when available).
        dtype: ``float32``, ``float16``, ``bfloat16`` or ``auto``.
        trust_remote_code: let transformers run code shipped with the model (off by default).
        reference_mask_token: hide every prompt position holding this token id from attention.
            This reproduces a flaw of the reference AdaCD code (its mask is ``ids != pad`` while
            pad == eos, docs/methods.md §1.5.1) and exists only to check parity with its outputs.
    """

    name = "transformers"
    can_add_streams = True  # its streams take new ones while they run (Streams.add)

    def __init__(
        self,
        model: str | Path | PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        trust_remote_code: bool = False,
        reference_mask_token: int | None = None,
    ):
        torch = _import_torch()
        from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

        if device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError("device='cuda' but torch sees no CUDA device")
        if isinstance(model, PreTrainedModel):
            if tokenizer is None:
                raise ConfigError("tokenizer is required when model is a loaded PreTrainedModel")
            self.model, self.tokenizer = model, tokenizer
            self._name = getattr(model.config, "_name_or_path", type(model).__name__)
        else:
            path = Path(model).expanduser()
            if not path.exists():
                raise ModelNotFoundError(f"model: no such file or directory: {str(path)!r}")
            kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
            if path.is_file():
                if path.suffix != ".gguf":
                    raise ConfigError(f"model: a file must be a .gguf, got {str(path)!r}")
                where, kwargs["gguf_file"] = str(path.parent), path.name
            else:
                where = str(path)
            torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
            try:
                self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(where, **kwargs)
                self.model = AutoModelForCausalLM.from_pretrained(
                    where, dtype=torch_dtype, **kwargs
                )
            except (OSError, ValueError) as e:
                raise BackendError(f"transformers could not load {str(path)!r}: {e}") from e
            self._name = path.name
        if isinstance(model, PreTrainedModel):  # borrowed: it stays where its owner put it
            self.device = next(self.model.parameters()).device
        else:
            self.model.to(device)
            self.device = torch.device(device)
        self.model.eval()
        self.pad_token_id = self._pick_pad()
        self.reference_mask_token = reference_mask_token
        self._eot = self._find_end_of_turn()

    def merge_lora(self, path: str | Path) -> None:
        """Merge the PEFT LoRA adapter in directory ``path`` into the weights (``model.lora``):
        the model then decodes at plain cost, as one with the adapter applied."""
        p = Path(path).expanduser()
        if not (p / "adapter_config.json").is_file():
            raise ConfigError(f"model.lora: {str(p)!r} is not a PEFT adapter directory (no "
                              "adapter_config.json); llama.cpp takes GGUF LoRA files")
        try:
            from peft import PeftModel
        except ImportError as e:  # pragma: no cover - depends on the install
            raise BackendError("model.lora on transformers needs peft: pip install "
                               "'guardrail-decoding[experts]'") from e
        try:
            self.model = PeftModel.from_pretrained(self.model, str(p)).merge_and_unload()
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise ConfigError(f"model.lora: cannot apply {str(p)!r} to {self._name}: {e}") from e
        self.model.eval()
        self._name = f"{self._name}+{p.name}"

    def _pick_pad(self) -> int:
        tok = self.tokenizer
        for cand in (tok.pad_token_id, tok.eos_token_id, 0):
            if cand is not None:
                return int(cand)
        return 0  # pragma: no cover

    def _find_end_of_turn(self) -> frozenset[int]:
        ids: set[int] = set()
        for src in (self.tokenizer.eos_token_id, getattr(self.model.generation_config,
                                                          "eos_token_id", None)):
            if isinstance(src, int):
                ids.add(src)
            elif src:
                ids.update(int(i) for i in src)
        vocab = self.tokenizer.get_vocab()
        specials = set(self.tokenizer.all_special_tokens) | {
            t.content for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values()
            if getattr(t, "special", False)
        }
        ids.update(vocab[t] for t in KNOWN_END_OF_TURN if t in vocab and t in specials)
        if not ids:
            raise BackendError(f"{self._name}: the tokenizer names no end-of-turn token")
        return frozenset(ids)

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def n_ctx(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)

    @property
    def end_of_turn_ids(self) -> frozenset[int]:
        return self._eot

    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        if not self.chat_template:
            raise BackendError(f"{self._name}: the tokenizer has no chat template")
        return str(
            self.tokenizer.apply_chat_template(
                [dict(m) for m in messages],
                tools=list(tools) if tools else None,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
            )
        )

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def tokenize_text(self, text: str) -> list[int]:
        # split_special_tokens: special added tokens are not matched (non-special added tokens
        # still are; the base's encode_chat cuts those apart before they get here)
        return list(
            self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        )

    @property
    def parsed_special_strings(self) -> frozenset[str]:
        """The tokenizer's added tokens (special or not) and named special tokens: what it
        matches in text before its model sees the rest."""
        tok = self.tokenizer
        added = getattr(tok, "added_tokens_decoder", {}) or {}
        return frozenset(
            {str(getattr(t, "content", t)) for t in added.values()}
            | {str(t) for t in getattr(tok, "all_special_tokens", ())}
        )

    def detokenize(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def grammar_tokenizer(self) -> Any:
        """The tokenizer as an llguidance tokenizer (:class:`HasGrammarTokenizer`; fast
        tokenizers only); the end-of-turn tokens are its end tokens."""
        import llguidance.hf

        return llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.vocab_size,
                                            eos_token=sorted(self.end_of_turn_ids))

    def prompt_hidden_states(self, ids: Sequence[int]) -> NDArray[np.float32]:
        """The last entry of ``hidden_states`` (after the final norm) at every prompt token."""
        import torch

        with torch.inference_mode():
            x = torch.tensor([list(ids)], device=self.device)
            out = self.model(input_ids=x, output_hidden_states=True, logits_to_keep=1)
            return out.hidden_states[-1][0].float().cpu().numpy()

    def prompt_hidden_states_many(
        self, prompts: Sequence[Sequence[int]], *, batch: int = 8
    ) -> list[NDArray[np.float32]]:
        """Each prompt's hidden states, ``batch`` prompts of similar length per forward,
        right-padded: causal attention keeps every real token from seeing the padding after it,
        so the states are the unpadded ones up to the float rounding of a batched matmul."""
        import torch

        lists = [[int(t) for t in ids] for ids in prompts]
        order = sorted(range(len(lists)), key=lambda i: len(lists[i]))
        out: list[NDArray[np.float32]] = [np.empty(0, np.float32)] * len(lists)
        pad = 0
        with torch.inference_mode():
            for at in range(0, len(order), batch):
                group = order[at:at + batch]
                width = max(len(lists[i]) for i in group)
                x = torch.full((len(group), width), pad, dtype=torch.long)
                mask = torch.zeros((len(group), width), dtype=torch.long)
                for row, i in enumerate(group):
                    x[row, : len(lists[i])] = torch.tensor(lists[i])
                    mask[row, : len(lists[i])] = 1
                res = self.model(input_ids=x.to(self.device), attention_mask=mask.to(self.device),
                                 output_hidden_states=True, logits_to_keep=1)
                states = res.hidden_states[-1].float().cpu().numpy()
                for row, i in enumerate(group):
                    out[i] = states[row, : len(lists[i])]
        return out

    def open(self, prompts: Sequence[Sequence[int]]) -> TransformersStreams:
        if not prompts:
            raise ConfigError("open: at least one prompt is needed")
        return TransformersStreams(self, prompts)
