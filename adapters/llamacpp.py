"""llama.cpp backend: one model, one context, one sequence id per stream.

All live streams advance in one ``llama_decode`` per step. The weights are loaded once (or taken
from an existing ``llama_cpp.Llama``); the context keeps a unified KV cache so every stream can use
the whole context. Logits are read per batch position (``llama_get_logits_ith``) and copied,
since the next decode overwrites llama.cpp's buffer.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from guardrail.adapters._llama_handles import LlamaBatch, LlamaContext, LlamaLoraAdapter, LlamaModel
from guardrail.adapters._template import render_chat_template
from guardrail.adapters.base import Backend, GuardedStreams, HiddenStatesMixin, Message
from numpy.typing import NDArray

from guardrail.errors import BackendError, ConfigError, ModelNotFoundError

if TYPE_CHECKING:
    from llama_cpp import Llama


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as e:  # pragma: no cover - depends on the install
        raise BackendError(
            "the llama.cpp backend needs llama-cpp-python: "
            "pip install 'guardrail-decoding[llamacpp]'"
        ) from e
    return llama_cpp


DECODE_ROWS = 32
"""Most rows one decode step sends to llama.cpp in a call: up to 32 rows its CPU kernels compute
each row alone (above, matrix kernels whose sums depend on the batch's shape), so a stream's
logits do not depend on how many others are decoded beside it."""

KV_LAYOUTS = ("unified", "per_stream")
"""How streams share the KV cache (see :class:`LlamaCppBackend`'s ``kv``)."""

PREFILL_CACHE_BYTES = 64 << 20
"""Most bytes of KV state :class:`PrefillCache` keeps."""


class Prefill(NamedTuple):
    """One hidden-state read's prefill of a prompt: what a stream or a later read reuses."""

    logits: NDArray[np.float32]  # at the prompt's last token
    state: bytes  # the prompt's KV cells as llama.cpp serialises them
    rows: NDArray[np.float32]  # the output embedding at every prompt token


class PrefillCache:
    """What hidden-state reads prefilled, for whatever decodes or reads the same prompt next.

    A prompt probe reads the hidden states of exactly the prompt the answer stream then
    decodes (``balanced``), and the forced-path check later reads that prompt again with the
    answer after it. The probe's prefill on the embeddings context leaves the prompt's KV cells,
    last logits and hidden states; a stream opened on the same token ids loads the cells and
    logits instead of computing them again (the same chunks of the same prompt at the same
    positions: equal cells, equal logits), and a continued read
    (:meth:`LlamaCppBackend.continued_hidden_states`) loads the cells and computes only the
    answer's tokens. Entries stay until the least recently used are dropped beyond
    :data:`PREFILL_CACHE_BYTES`; a prompt too large to keep is not saved at all. Used on the
    model's thread only.
    """

    def __init__(self, budget: int = PREFILL_CACHE_BYTES) -> None:
        self.budget = budget
        self.bytes_per_token = 0  # learnt from the first state saved
        self._entries: OrderedDict[tuple[int, ...], Prefill] = OrderedDict()
        self._bytes = 0
        self.hits = 0

    @staticmethod
    def _size(entry: Prefill) -> int:
        return len(entry.state) + entry.rows.nbytes + entry.logits.nbytes

    def put(self, ids: Sequence[int], make: Callable[[], Prefill]) -> None:
        """Save ``make()`` for ``ids`` if it fits the budget."""
        if self.bytes_per_token and len(ids) * self.bytes_per_token > self.budget:
            return
        entry = make()
        size = self._size(entry)
        self.bytes_per_token = self.bytes_per_token or max(1, size // max(1, len(ids)))
        if size > self.budget:
            return
        key = tuple(ids)
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= self._size(old)
        self._entries[key] = entry
        self._bytes += size
        while self._bytes > self.budget:
            self._bytes -= self._size(self._entries.popitem(last=False)[1])

    def clear(self) -> None:
        """Forget every saved prefill."""
        self._entries.clear()
        self._bytes = 0

    def get(self, ids: Sequence[int]) -> Prefill | None:
        """The saved prefill of ``ids`` (now the most recently used), or ``None``."""
        key = tuple(ids)
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return hit


class LlamaCppStreams(GuardedStreams):
    """Sequences of the backend's context, one sequence id each, taken from the backend's pool.

    Several stream sets may be open on one context at once (a running batch and a probe's
    prefill, say): each holds its own sequence ids and frees only those, so one set never
    touches another's KV cells. Calls on one context must still be serialised (the engine's
    lock).
    """

    def __init__(self, backend: LlamaCppBackend, prompts: Sequence[Sequence[int]]):
        super().__init__(len(prompts))
        self._backend = backend
        self._ctx = backend.context
        self._batch = backend.batch
        self._n_batch = backend.n_batch
        self._vocab = backend.vocab_size
        self._seq: list[int] = []
        self._pos: list[int] = []
        self._last = np.empty((0, self._vocab), dtype=np.float32)
        try:
            for _ in self._prefill(prompts):
                pass
        except BaseException:
            self._close()
            raise

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """Decode (token, pos, seq_id, want_logits) entries as one batch."""
        self._batch.fill(entries)
        self._ctx.decode(self._batch)

    def _prefill(self, prompts: Sequence[Sequence[int]]) -> Iterator[int]:
        """Prefill ``prompts`` on new sequence ids (yield each chunk's size); then they are
        live, after the others. Each prompt is cut into chunks of the context's batch on its
        own, never sharing a chunk with another prompt, so its KV cells and logits are the
        same whatever else is prefilled or decoded on the context."""
        seqs = self._backend._take_sequences(len(prompts))
        done = False
        try:
            last = np.empty((len(prompts), self._vocab), dtype=np.float32)
            cap = self._n_batch
            n_stream = 1 if self._backend.shared_context else self._backend.n_seq_max
            for row, (s, p) in enumerate(zip(seqs, prompts)):
                saved = self._backend._prefills.get(p)
                if saved is not None and self._ctx.load_seq_state(s, saved.state, n_stream):
                    last[row] = saved.logits  # a hidden-state read prefilled it already
                    yield 0
                    continue
                for start in range(0, len(p), cap):
                    chunk = range(start, min(start + cap, len(p)))
                    self._decode([(p[i], i, s, i == len(p) - 1) for i in chunk])
                    if chunk[-1] == len(p) - 1:
                        last[row] = self._ctx.logits_ith(len(chunk) - 1, self._vocab)
                    yield len(chunk)
            self._seq += seqs
            self._pos += [len(p) for p in prompts]
            self._last = np.concatenate([self._last, last]) if len(self._last) else last
            done = True
        finally:
            if not done:  # failed or closed early: free what was prefilled
                self._backend._free_sequences(seqs)

    @property
    def can_add(self) -> bool:
        return True

    def _add(self, prompts: Sequence[Sequence[int]]) -> Iterator[int]:
        return self._prefill(prompts)

    def _logits(self) -> NDArray[np.float32]:
        return self._last.copy()

    def _append(self, tokens: Sequence[int]) -> None:
        entries = [(t, p, s, True) for t, p, s in zip(tokens, self._pos, self._seq)]
        cap = min(self._n_batch, DECODE_ROWS)  # more rows: several calls, each row's sums fixed
        for start in range(0, len(entries), cap):
            self._decode(entries[start : start + cap])
            for j in range(min(cap, len(entries) - start)):
                self._last[start + j] = self._ctx.logits_ith(j, self._vocab)
        self._pos = [p + 1 for p in self._pos]

    def _keep(self, indices: list[int]) -> None:
        kept = set(indices)
        self._backend._free_sequences([s for i, s in enumerate(self._seq) if i not in kept])
        self._seq = [self._seq[i] for i in indices]
        self._pos = [self._pos[i] for i in indices]
        self._last = self._last[indices]

    def _lengths(self) -> list[int]:
        return list(self._pos)

    def _close(self) -> None:
        self._backend._free_sequences(self._seq)
        self._seq, self._pos = [], []


class LlamaCppBackend(HiddenStatesMixin, Backend):
    """A GGUF model under llama.cpp.

    Args:
        model: a ``.gguf`` path, or an existing ``llama_cpp.Llama`` whose weights are reused
            (no second copy; a separate context is made for the streams).
        n_ctx: context size (tokens of all live streams share one unified KV cache).
        n_threads: CPU threads for decoding (default: half the cores, as llama-cpp-python;
            prefill uses all cores unless this is given).
        n_gpu_layers: layers offloaded to the GPU (-1 = all); ignored for an existing ``Llama``.
        n_seq_max: most streams open at once (AdaCD uses 2 per request).
        kv: ``"unified"`` (default): one KV cache of ``n_ctx`` cells that all streams share, so
            one stream may use the whole context; streams decoded together then have their
            cells interleaved, and attention sums over them in another order than alone, so a
            batched answer can drift from the same request decoded alone (in about one answer
            in eight at 48 tokens on the embedded model). ``"per_stream"``: every stream gets a
            cache of its own of ``n_ctx`` cells (``n_ctx × n_seq_max`` in all, as llama-server's
            slots), so a stream's cells never move and batched greedy answers equal those
            decoded alone, token for token; :attr:`n_ctx` is then each stream's context.
        n_batch: most prompt tokens per prefill call. Each prompt is prefilled in chunks of
            its own, so its cells and logits never depend on what else is prefilled; decode
            steps send at most :data:`DECODE_ROWS` rows per call whatever ``n_batch`` is. So
            with ``kv="per_stream"`` batched decoding equals decoding one request at a time for
            any ``n_batch``; a larger one prefills long prompts faster (matrix kernels) but
            gives a lone request other sums than 32 does (by up to about one logit on a Q4
            model). llama.cpp caps a context's batch at the ``n_ctx`` asked for; every decode
            call is split to fit the batch the context really has (:attr:`n_batch` after
            loading).
        chat_template: a Jinja chat template to use instead of the GGUF's own.
    """

    name = "llamacpp"
    can_add_streams = True  # its streams take new ones while they run (Streams.add)

    def __init__(
        self,
        model: str | Path | Llama,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        n_seq_max: int = 16,
        n_batch: int = 32,
        chat_template: str | None = None,
        kv: str = "unified",
        verbose: bool = False,
    ):
        lib = _import_llama_cpp()
        from llama_cpp import Llama, _logger

        _logger.set_verbose(verbose)

        if n_ctx < 16:
            raise ConfigError(f"n_ctx must be >= 16, got {n_ctx}")
        if n_threads is not None and n_threads < 1:
            raise ConfigError(f"n_threads must be >= 1, got {n_threads}")
        if n_batch < 1:
            raise ConfigError(f"n_batch must be >= 1, got {n_batch}")
        if kv not in KV_LAYOUTS:
            raise ConfigError(f"kv must be one of {', '.join(KV_LAYOUTS)}, got {kv!r}")
        # llama.cpp reserves one output per sequence in a batch capped at n_ctx: more sequences
        # than n_ctx is a GGML_ASSERT at context creation, more than 256 a refused context
        if not 1 <= n_seq_max <= min(n_ctx, 256):
            raise ConfigError(
                f"n_seq_max must be between 1 and min(n_ctx, 256) = {min(n_ctx, 256)}, "
                f"got {n_seq_max}"
            )
        self.lib = lib
        if isinstance(model, Llama):
            self._model = LlamaModel.borrow(lib, model)  # the Llama's weights, kept alive
            self._name = Path(model.model_path).name
            self.model_path = str(model.model_path)
            n_gpu_layers = int(model.model_params.n_gpu_layers)
        else:
            path = Path(model).expanduser()
            if not path.is_file():
                raise ModelNotFoundError(f"model: no such GGUF file: {str(path)!r}")
            mparams = lib.llama_model_default_params()
            mparams.n_gpu_layers = n_gpu_layers
            self._model = LlamaModel.load(lib, str(path), mparams, verbose=verbose)
            self._name = path.name
            self.model_path = str(path)
        cores = os.cpu_count() or 1
        threads = n_threads or max(1, cores // 2)  # llama-cpp-python's own defaults
        self.n_threads = threads
        self.n_gpu_layers = n_gpu_layers
        self.n_threads_batch = n_threads or cores
        self.n_batch = max(n_batch, n_seq_max)
        cparams = lib.llama_context_default_params()
        self.kv = kv
        cparams.n_ctx = n_ctx if kv == "unified" else n_ctx * n_seq_max
        cparams.n_batch = self.n_batch
        cparams.n_ubatch = self.n_batch
        cparams.n_seq_max = n_seq_max
        cparams.n_threads = threads
        cparams.n_threads_batch = n_threads or cores
        cparams.kv_unified = kv == "unified"
        cparams.no_perf = True
        self._cparams = cparams
        self._siblings: dict[tuple[str, float | None], LlamaCppBackend] = {}
        self._free: list[int] = list(range(n_seq_max))  # sequence ids no stream holds
        self._free_lock = threading.Lock()
        self._lora: LlamaLoraAdapter | None = None  # a sibling's adapter (with_lora)
        self._lora_scale = 1.0
        self._embed: tuple[LlamaContext, LlamaBatch] | None = None  # hidden-state reads
        self._prefills = PrefillCache()
        self._new_context()
        self.n_seq_max = n_seq_max
        self._n_ctx = self.context.n_ctx_seq()
        self._n_vocab = self._model.n_vocab()
        self._eot = frozenset(t for t in range(self._n_vocab) if self._model.is_eog(t))
        self._template = chat_template or self._model.metadata().get("tokenizer.chat_template")
        self._specials: frozenset[str] | None = None
        self._pieces: dict[int, bytes] = {}
        self._bos = self._piece(self._model.bos())
        self._eos = self._piece(self._model.eos())

    def _new_context(self) -> None:
        self.context = LlamaContext(self._model, self._cparams)
        # llama.cpp caps n_batch at the n_ctx asked for (and n_ubatch at n_batch); a decode call
        # over the context's n_batch aborts the process (GGML_ASSERT), so every call is cut to it.
        self.n_batch = min(int(self._cparams.n_batch), self.context.n_batch(),
                           self.context.n_ubatch())
        self.batch = LlamaBatch(self.lib, self.n_batch)

    def with_lora(self, path: str | Path, scale: float | None = None) -> LlamaCppBackend:
        """This model with a GGUF LoRA adapter applied, on a context of its own.

        llama.cpp applies an adapter to a whole context, so a LoRA expert gets a second context
        over the same weights (no second copy): its streams see the adapter, this backend's
        streams do not. ``scale`` is ``s`` of ``ΔW = s·B·A`` (``None``: the adapter's own
        ``alpha / rank``). Siblings are cached per adapter and scale (the file is read once);
        they share this backend's lock (the engine's), not its KV cache.
        """
        from guardrail.adapters.llamacpp_lora import read_lora_gguf

        key = (str(Path(path).expanduser()), scale)
        sibling = self._siblings.get(key)
        if sibling is not None:
            return sibling
        info = read_lora_gguf(path, arch=self.architecture)
        user_scale = 1.0 if scale is None else scale / info.default_scale
        try:
            adapter = LlamaLoraAdapter(self._model, str(info.path))
        except BackendError as e:
            raise BackendError(f"{e} for {self._name}") from e
        sibling = copy.copy(self)
        sibling._siblings = {}
        sibling._free = list(range(self.n_seq_max))  # its own context, its own sequences
        sibling._free_lock = threading.Lock()
        sibling._lora = adapter
        sibling._lora_scale = user_scale
        sibling._embed = None
        sibling._prefills = PrefillCache()
        sibling._new_context()
        try:
            sibling.context.set_lora(adapter, user_scale)
        except BackendError:
            sibling.close()
            raise
        sibling._name = f"{self._name}+{info.path.name}"
        self._siblings[key] = sibling
        return sibling

    @property
    def architecture(self) -> str:
        """The GGUF's ``general.architecture`` (``llama``, ``qwen2``, ...)."""
        return str(self._model.metadata().get("general.architecture", ""))

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        text = self._model.token_text(token)
        return text.decode("utf-8", errors="replace") if text else ""

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def vocab_size(self) -> int:
        return self._n_vocab

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def max_streams(self) -> int:
        return self.n_seq_max

    @property
    def shared_context(self) -> bool:
        return self.kv == "unified"

    @property
    def free_streams(self) -> int:
        """Sequence ids no open stream holds (streams that could be opened now)."""
        return len(self._free)

    def _take_sequences(self, n: int) -> list[int]:
        with self._free_lock:
            if n > len(self._free):
                raise BackendError(
                    f"{self._name}: {n} streams asked for, {len(self._free)} of "
                    f"n_seq_max={self.n_seq_max} free (other streams are open on this context)"
                )
            seqs, self._free = self._free[:n], self._free[n:]
        return seqs

    def _free_sequences(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        for s in seqs:
            if self.context.raw is not None:
                self.context.remove_sequence(s)
        with self._free_lock:
            self._free = sorted({*self._free, *seqs})

    @property
    def end_of_turn_ids(self) -> frozenset[int]:
        return self._eot

    @property
    def chat_template(self) -> str | None:
        return self._template

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        if not self._template:
            raise BackendError(f"{self._name}: the GGUF carries no chat template")
        return render_chat_template(
            self._template, messages, tools=tools, add_generation_prompt=add_generation_prompt,
            bos_token=self._bos, eos_token=self._eos,
        )

    def tokenize(self, text: str) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def tokenize_text(self, text: str) -> list[int]:
        # special=False: control tokens are not parsed (user-defined ones still are; the base's
        # encode_chat cuts those apart before they get here)
        return self._model.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    @property
    def parsed_special_strings(self) -> frozenset[str]:
        """The texts of the vocabulary's control, user-defined and unknown tokens: what
        llama.cpp's tokenizer matches in text when it parses special tokens."""
        if self._specials is None:
            self._specials = frozenset(self._model.parsed_token_texts())
        return self._specials

    def _bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._model.token_piece(token)
        return piece

    def detokenize(self, ids: Sequence[int]) -> str:
        return b"".join(self._bytes(int(t)) for t in ids).decode("utf-8", errors="replace")

    def grammar_tokenizer(self) -> Any:
        """The vocabulary as an llguidance tokenizer (:class:`HasGrammarTokenizer`); the end of
        turn tokens are its end tokens."""
        import warnings

        from llguidance.llamacpp import lltokenizer_from_vocab

        with warnings.catch_warnings():  # it reads token attributes by a deprecated name
            warnings.simplefilter("ignore", DeprecationWarning)
            return lltokenizer_from_vocab(self._model.vocab, n_vocab=self._n_vocab,
                                          eos_token=sorted(self._eot))

    def _embedding_context(self) -> tuple[LlamaContext, LlamaBatch]:
        """A context of its own for reading hidden states (made on first use, one sequence of
        :attr:`n_ctx` cells, embeddings on), over the same weights. Switching embeddings on and
        off on the streams' context instead leaves llama.cpp decoding it about 30% slower
        afterwards, and would take a sequence from the running batch's pool."""
        if self._embed is None:
            lib = self.lib
            cp = lib.llama_context_default_params()
            cp.n_ctx = self._n_ctx
            cp.n_batch = cp.n_ubatch = self.n_batch
            cp.n_seq_max = 1
            cp.n_threads = self._cparams.n_threads
            cp.n_threads_batch = self._cparams.n_threads_batch
            cp.kv_unified = True
            cp.embeddings = True
            cp.no_perf = True
            ctx = LlamaContext(self._model, cp)
            if self._lora is not None:
                ctx.set_lora(self._lora, self._lora_scale)
            self._embed = (ctx, LlamaBatch(lib, self.n_batch))
        return self._embed

    def forget_prefills(self) -> None:
        """Drop the saved prefills of hidden-state reads (:class:`PrefillCache`), so the next
        request of any prompt computes its prefill (a benchmark timing cold requests)."""
        self._prefills.clear()

    def _check_read(self, ids: Sequence[int], what: str) -> list[int]:
        ids = [int(t) for t in ids]
        if not ids or len(ids) > self._n_ctx:
            raise ConfigError(f"{what}: {len(ids)} tokens; between 1 and n_ctx={self._n_ctx} "
                              "can be read")
        return ids

    def _embed_chunks(self, ids: Sequence[int], start: int) -> NDArray[np.float32]:
        """Decode ``ids`` at positions ``start``.. on sequence 0 of the embeddings context, in
        chunks of :attr:`n_batch` from ``start``; their output embeddings."""
        ctx, batch = self._embedding_context()
        n_embd = self._model.n_embd()
        rows: list[NDArray[np.float32]] = []
        for at in range(0, len(ids), self.n_batch):
            chunk = range(at, min(at + self.n_batch, len(ids)))
            batch.fill([(ids[i], start + i, 0, True) for i in chunk])
            ctx.decode(batch)
            rows.extend(ctx.embeddings_ith(j, n_embd).astype(np.float32)
                        for j in range(len(chunk)))
        return np.stack(rows)

    def _read_prompt(self, ids: Sequence[int]) -> NDArray[np.float32]:
        """A prompt's prefill on the (empty) embeddings context, saved for reuse."""
        ctx, _ = self._embedding_context()
        rows = self._embed_chunks(ids, 0)
        last = (len(ids) - 1) % self.n_batch  # the last chunk's last row

        def saved() -> Prefill:
            kept = rows.copy()
            kept.setflags(write=False)
            return Prefill(ctx.logits_ith(last, self._n_vocab).copy(), ctx.seq_state(0), kept)

        self._prefills.put(ids, saved)
        return rows

    def prompt_hidden_states(self, ids: Sequence[int]) -> NDArray[np.float32]:
        """llama.cpp's output embedding (``result_norm``) of every prompt token, from a
        prefill on the backend's embeddings context (the streams' cache is not touched), in
        chunks of :attr:`n_batch` as a stream's prefill."""
        ids = self._check_read(ids, "prompt_hidden_states")
        ctx, _ = self._embedding_context()
        try:
            return self._read_prompt(ids)
        finally:
            ctx.remove_sequence(0)

    def continued_hidden_states(self, ids: Sequence[int], prompt_len: int) -> NDArray[np.float32]:
        """:meth:`prompt_hidden_states` of ``ids``, a prompt (its first ``prompt_len`` tokens)
        and what follows it (an answer so far: the forced-path check's read). The prompt is
        prefilled exactly as :meth:`prompt_hidden_states` prefills it (loaded from
        :class:`PrefillCache` when a read saved it, as the prompt probe's did), and the tokens
        after it are computed in chunks of their own on top. So the result does not depend on
        whether the prompt was cached (equal arrays either way), it costs one decode of the
        answer's tokens instead of a prefill of everything when it was, and it equals
        :meth:`prompt_hidden_states` of ``ids`` up to float rounding (the chunks are cut
        differently)."""
        ids = self._check_read(ids, "continued_hidden_states")
        if not 0 < prompt_len < len(ids):
            return self.prompt_hidden_states(ids)
        ctx, _ = self._embedding_context()
        prompt = ids[:prompt_len]
        try:
            saved = self._prefills.get(prompt)
            if saved is not None and ctx.load_seq_state(0, saved.state, 1):
                head = saved.rows
            else:
                ctx.remove_sequence(0)
                head = self._read_prompt(prompt)
            return np.concatenate([head, self._embed_chunks(ids[prompt_len:], prompt_len)])
        finally:
            ctx.remove_sequence(0)

    def open(self, prompts: Sequence[Sequence[int]]) -> LlamaCppStreams:
        if not prompts:
            raise ConfigError("open: at least one prompt is needed")
        if len(prompts) > self.n_seq_max:
            raise ConfigError(
                f"open: {len(prompts)} streams exceed n_seq_max={self.n_seq_max} of this backend"
            )
        total = sum(len(p) for p in prompts) if self.shared_context else max(map(len, prompts))
        if total > self._n_ctx:
            what = "over all streams" if self.shared_context else "in one stream"
            raise ConfigError(f"open: {total} prompt tokens {what} exceed n_ctx={self._n_ctx}")
        return LlamaCppStreams(self, prompts)

    def close(self) -> None:
        """Free the streams' context and batch, the LoRA siblings' and (a sibling) its adapter;
        the weights go with the last reference."""
        for sibling in self._siblings.values():
            sibling.close()
        self._siblings = {}
        self.context.close()
        self.batch.close()
        if self._embed is not None:
            for handle in self._embed:
                handle.close()
            self._embed = None
        if self._lora is not None:
            self._lora.close()
