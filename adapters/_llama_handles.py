"""Thin owners of llama.cpp's C handles: a model, a context, a batch, a LoRA adapter.

In the spirit of llama-cpp-python's ``_internals``: each wrapper holds one handle and frees it
once, on :meth:`close` or when it is garbage-collected, and a model closes what was made from
it (contexts and adapters, newest first) before it is freed, since llama.cpp requires that
order. A model borrowed from a ``llama_cpp.Llama`` is never freed here; what was made from it
is closed before the ``Llama`` frees it. The backend (:mod:`guardrail.adapters.llamacpp`) uses
these and never touches a raw pointer.
"""

from __future__ import annotations

import contextlib
import ctypes
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from guardrail.errors import BackendError


class _Handle:
    """One C handle (``raw``) and the function that frees it (``None``: not ours to free)."""

    def __init__(self, raw: Any, free: Callable[[Any], None] | None):
        self.raw = raw
        self._free = free

    @property
    def closed(self) -> bool:
        return self.raw is None

    def close(self) -> None:
        """Free the handle (idempotent)."""
        raw, self.raw = self.raw, None
        if raw is not None and self._free is not None:
            self._free(raw)

    def __del__(self) -> None:
        try:  # no module globals here: at interpreter exit they may already be None
            self.close()
        except Exception:  # noqa: BLE001, S110 - the library may be gone at exit
            pass


class LlamaModel(_Handle):
    """A ``llama_model *`` (loaded here, or borrowed) and its vocabulary."""

    def __init__(self, lib: Any, raw: Any, *, owned: bool):
        super().__init__(raw, lib.llama_model_free if owned else None)
        self.lib = lib
        self.vocab = lib.llama_model_get_vocab(raw)
        self._dependents: list[_Handle] = []  # contexts and adapters made from this model
        self._owner: Any = None  # a borrowed model's Llama, kept alive with it
        if not self.vocab:
            self.close()
            raise BackendError("llama.cpp: the model has no vocabulary")

    @classmethod
    def load(cls, lib: Any, path: str, params: Any, *, verbose: bool) -> LlamaModel:
        """Load the GGUF at ``path`` (llama.cpp's own output hidden unless ``verbose``)."""
        from llama_cpp._utils import suppress_stdout_stderr

        with suppress_stdout_stderr(disable=verbose):
            raw = lib.llama_model_load_from_file(path.encode("utf-8"), params)
        if not raw:
            raise BackendError(f"llama.cpp could not load {path!r}: not a model it can read")
        return cls(lib, raw, owned=True)

    @classmethod
    def borrow(cls, lib: Any, llama: Any) -> LlamaModel:
        """The model of an existing ``llama_cpp.Llama`` (kept alive while this is)."""
        inner = llama._model  # llama-cpp-python's own LlamaModel wrapper
        model = cls(lib, inner.model, owned=False)
        model._owner = llama
        ref = weakref.ref(model)
        stack = getattr(inner, "_exit_stack", None)  # llama-cpp-python's free-in-order stack
        if stack is not None:  # Llama.close(): close ours before it frees the model
            stack.callback(lambda: (m := ref()) is not None and m.close())
        return model

    def adopt(self, dependent: _Handle) -> None:
        """Close ``dependent`` before this model is freed."""
        self._dependents.append(dependent)

    def forget(self, dependent: _Handle) -> None:
        with contextlib.suppress(ValueError):
            self._dependents.remove(dependent)

    def close(self) -> None:
        for dep in reversed(list(self._dependents)):
            dep.close()
        self._dependents = []
        super().close()

    def _require(self) -> Any:
        if self.raw is None:
            raise BackendError("llama.cpp: the model is closed")
        return self.raw

    # --- model facts ----------------------------------------------------------------------

    def n_embd(self) -> int:
        return int(self.lib.llama_model_n_embd(self._require()))

    def n_ctx_train(self) -> int:
        return int(self.lib.llama_model_n_ctx_train(self._require()))

    def metadata(self) -> dict[str, str]:
        """Every GGUF header key and its value as text."""
        lib, raw = self.lib, self._require()
        out: dict[str, str] = {}
        size = 1024
        buf = ctypes.create_string_buffer(size)
        for i in range(lib.llama_model_meta_count(raw)):
            pair = []
            for get in (lib.llama_model_meta_key_by_index, lib.llama_model_meta_val_str_by_index):
                n = get(raw, i, buf, size)
                if n > size:
                    size = n + 1
                    buf = ctypes.create_string_buffer(size)
                    get(raw, i, buf, size)
                pair.append(buf.value.decode("utf-8"))
            out[pair[0]] = pair[1]
        return out

    # --- vocabulary -----------------------------------------------------------------------

    def n_vocab(self) -> int:
        return int(self.lib.llama_vocab_n_tokens(self.vocab))

    def is_eog(self, token: int) -> bool:
        return bool(self.lib.llama_vocab_is_eog(self.vocab, token))

    def bos(self) -> int:
        return int(self.lib.llama_vocab_bos(self.vocab))

    def eos(self) -> int:
        return int(self.lib.llama_vocab_eos(self.vocab))

    def parsed_token_texts(self) -> list[str]:
        """Texts of the tokens llama.cpp's tokenizer matches in text when it parses special
        tokens (control, user-defined and unknown ones; with ``special=False`` it still matches
        user-defined ones)."""
        lib = self.lib
        kinds = (lib.LLAMA_TOKEN_ATTR_CONTROL | lib.LLAMA_TOKEN_ATTR_USER_DEFINED
                 | lib.LLAMA_TOKEN_ATTR_UNKNOWN)
        out = []
        for t in range(self.n_vocab()):
            if int(lib.llama_vocab_get_attr(self.vocab, t)) & kinds:
                text = self.token_text(t)
                if text:
                    out.append(text.decode("utf-8", errors="replace"))
        return out

    def token_text(self, token: int) -> bytes | None:
        """The vocabulary entry of ``token`` as stored (``None`` if it has none)."""
        text: bytes | None = self.lib.llama_vocab_get_text(self.vocab, token)
        return text

    def token_piece(self, token: int) -> bytes:
        """The bytes ``token`` detokenizes to (special tokens rendered as nothing)."""
        buf = ctypes.create_string_buffer(64)
        n = self.lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:  # piece longer than the buffer
            buf = ctypes.create_string_buffer(-n)
            n = self.lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    def tokenize(self, text: bytes, *, add_bos: bool, special: bool) -> list[int]:
        """llama.cpp's tokenizer (as llama-cpp-python's ``LlamaModel.tokenize``)."""
        lib = self.lib
        cap = self.n_ctx_train()
        tokens = (lib.llama_token * cap)()
        n = lib.llama_tokenize(self.vocab, text, len(text), tokens, cap, add_bos, special)
        if n < 0:
            cap = -n
            tokens = (lib.llama_token * cap)()
            n = lib.llama_tokenize(self.vocab, text, len(text), tokens, cap, add_bos, special)
            if n < 0:
                raise BackendError(f"llama.cpp could not tokenize {text[:40]!r}... ({n})")
        return list(tokens[:n])


class LlamaLoraAdapter(_Handle):
    """A ``llama_adapter_lora *`` loaded for one model (freed before it, after its contexts)."""

    def __init__(self, model: LlamaModel, path: str):
        lib = model.lib
        raw = lib.llama_adapter_lora_init(model._require(), path.encode())
        if not raw:
            raise BackendError(f"llama.cpp could not load the LoRA adapter {path!r}")
        super().__init__(raw, lib.llama_adapter_lora_free)
        self.path = path
        self._model = model
        model.adopt(self)

    def close(self) -> None:
        super().close()
        self._model.forget(self)


class LlamaBatch(_Handle):
    """A ``llama_batch`` of up to ``capacity`` tokens, one sequence id each."""

    def __init__(self, lib: Any, capacity: int):
        super().__init__(lib.llama_batch_init(capacity, 0, 1), lib.llama_batch_free)
        self.capacity = capacity

    def fill(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """Set the batch to ``(token, pos, seq_id, want_logits)`` entries."""
        if len(entries) > self.capacity:
            raise BackendError(f"llama.cpp batch: {len(entries)} tokens exceed {self.capacity}")
        batch = self.raw
        for j, (tok, pos, seq, logits) in enumerate(entries):
            batch.token[j] = tok
            batch.pos[j] = pos
            batch.n_seq_id[j] = 1
            batch.seq_id[j][0] = seq
            batch.logits[j] = logits
        batch.n_tokens = len(entries)


class LlamaContext(_Handle):
    """A ``llama_context *`` of a model, its KV memory, and the calls the backend makes on it."""

    def __init__(self, model: LlamaModel, params: Any):
        lib = model.lib
        raw = lib.llama_init_from_model(model._require(), params)
        if not raw:
            raise BackendError("llama.cpp could not create a context (out of memory?)")
        super().__init__(raw, lib.llama_free)
        self.lib = lib
        self.memory = lib.llama_get_memory(raw)
        self._model = model
        model.adopt(self)

    def close(self) -> None:
        super().close()
        self.memory = None
        self._model.forget(self)

    def _require(self) -> Any:
        if self.raw is None:
            raise BackendError("llama.cpp: the context is closed")
        return self.raw

    def n_ctx(self) -> int:
        return int(self.lib.llama_n_ctx(self._require()))

    def n_ctx_seq(self) -> int:
        """Cells one sequence may use (all of them in a unified cache)."""
        return int(self.lib.llama_n_ctx_seq(self._require()))

    def n_batch(self) -> int:
        """Most tokens one ``llama_decode`` call takes (llama.cpp caps it at the n_ctx asked)."""
        return int(self.lib.llama_n_batch(self._require()))

    def n_ubatch(self) -> int:
        return int(self.lib.llama_n_ubatch(self._require()))

    def decode(self, batch: LlamaBatch) -> None:
        rc = self.lib.llama_decode(self._require(), batch.raw)
        if rc != 0:
            hint = " (KV cache full: raise n_ctx)" if rc == 1 else ""
            raise BackendError(f"llama_decode returned {rc}{hint}")

    def logits_ith(self, i: int, width: int) -> NDArray[np.float32]:
        """A view of the logits at batch position ``i`` (valid until the next decode)."""
        ptr = self.lib.llama_get_logits_ith(self._require(), i)
        if not ptr:
            raise BackendError(f"llama.cpp returned no logits for batch position {i}")
        return np.ctypeslib.as_array(ptr, shape=(width,))

    def embeddings_ith(self, i: int, width: int) -> NDArray[np.float32]:
        """A view of the output embedding at batch position ``i`` (embeddings switched on)."""
        ptr = self.lib.llama_get_embeddings_ith(self._require(), i)
        if not ptr:
            raise BackendError("llama.cpp returned no embedding for the prompt")
        return np.ctypeslib.as_array(ptr, shape=(width,))

    def remove_sequence(self, seq: int) -> None:
        self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def seq_state(self, seq: int) -> bytes:
        """The KV cells of sequence ``seq`` as llama.cpp serialises them."""
        lib, raw = self.lib, self._require()
        n = int(lib.llama_state_seq_get_size(raw, seq))
        buf = (ctypes.c_uint8 * n)()
        if int(lib.llama_state_seq_get_data(raw, buf, n, seq)) != n:
            raise BackendError(f"llama.cpp could not save the state of sequence {seq}")
        return bytes(buf)

    def load_seq_state(self, seq: int, state: bytes, n_stream: int) -> bool:
        """Load ``state`` (from :meth:`seq_state` of a one-stream context) into sequence
        ``seq`` of this context, which has ``n_stream`` KV streams; ``False`` when llama.cpp
        refuses it (nothing is loaded then: the caller prefills instead).

        The state starts with a magic (u32) and the source sequence (i32), then the cache's
        stream count (u32) and each stream's cells; llama.cpp loads the one non-empty stream
        into ``seq``'s own stream but wants the stream counts to agree, so the count is
        rewritten and the empty streams are appended."""
        if n_stream > 1:
            if len(state) < 12 or int.from_bytes(state[8:12], "little") != 1:
                return False
            state = state[:8] + n_stream.to_bytes(4, "little") + state[12:] + bytes(
                4 * (n_stream - 1))
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        ok = int(self.lib.llama_state_seq_set_data(self._require(), buf, len(state), seq))
        if ok != len(state):
            self.remove_sequence(seq)
            return False
        return True

    def set_lora(self, adapter: LlamaLoraAdapter, scale: float) -> None:
        """Apply ``adapter`` at ``scale`` to everything this context decodes."""
        adapters = (self.lib.llama_adapter_lora_p_ctypes * 1)(adapter.raw)
        scales = (ctypes.c_float * 1)(scale)
        if self.lib.llama_set_adapters_lora(self._require(), adapters, 1, scales) != 0:
            raise BackendError(f"llama.cpp could not apply the LoRA adapter {adapter.path!r}")
