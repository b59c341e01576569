"""Experts that are separate models must share one tokenizer: every stream gets the same token."""

from __future__ import annotations

from guardrail.adapters.base import Backend, HasHFTokenizer
from guardrail.experts.errors import TokenizerMismatchError

_SAMPLE = "Hello, world! How do I kill a Python process?\ndef f(x):\n    return x ** 2"
_SAMPLED_IDS = 4096  # vocabulary entries compared when no full vocabulary is at hand


def check_same_tokenizer(a: Backend, b: Backend) -> None:
    """Raise :class:`TokenizerMismatchError` unless ``a`` and ``b`` tokenize alike.

    Compares full vocabularies when both expose a Hugging Face tokenizer, otherwise the text of
    ids spread over the whole table; then the ids of a chat rendered by ``a``'s template, and
    the end-of-turn tokens. Rare-text quirks of two implementations of one tokenizer (llama.cpp's
    and Hugging Face's pre-tokenizers split some accented or CJK text differently) are not
    differences, so such text is not compared.
    """
    names = f"{a.model_name!r} and {b.model_name!r}"
    if isinstance(a, HasHFTokenizer) and isinstance(b, HasHFTokenizer):
        va, vb = a.tokenizer.get_vocab(), b.tokenizer.get_vocab()
        if va != vb:
            diff = len(set(va.items()) ^ set(vb.items()))
            raise TokenizerMismatchError(
                f"experts {names} have different vocabularies ({len(va)} vs {len(vb)} tokens, "
                f"{diff} entries differ): their streams cannot share tokens"
            )
    else:
        width = min(a.vocab_size, b.vocab_size)
        for i in range(0, width, max(1, width // _SAMPLED_IDS)):
            sa, sb = a.detokenize([i]), b.detokenize([i])
            if sa != sb:
                raise TokenizerMismatchError(
                    f"experts {names} have different vocabularies (token {i} is {sa!r} vs "
                    f"{sb!r}): their streams cannot share tokens"
                )
    chat = a.render([{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": _SAMPLE}])
    for text in (_SAMPLE, chat):
        ia, ib = a.tokenize(text), b.tokenize(text)
        if ia != ib:
            k = next((i for i, (x, y) in enumerate(zip(ia, ib)) if x != y), min(len(ia), len(ib)))
            raise TokenizerMismatchError(
                f"experts {names} tokenize {text[:40]!r}... differently (from position {k}: "
                f"{ia[k:k + 4]} vs {ib[k:k + 4]}): their streams cannot share tokens"
            )
    if not a.end_of_turn_ids & b.end_of_turn_ids:
        raise TokenizerMismatchError(
            f"experts {names} share no end-of-turn token "
            f"({sorted(a.end_of_turn_ids)} vs {sorted(b.end_of_turn_ids)})"
        )
