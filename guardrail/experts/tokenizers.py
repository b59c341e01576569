"""Experts that are separate models must share one tokenizer: every stream gets the same token."""

from __future__ import annotations

from guardrail.adapters.base import Backend
from guardrail.experts.errors import TokenizerMismatchError

_SAMPLES = (
    "Hello, world! How do I kill a Python process?",
    "Ünïcödé 文字 🙂 <|im_end|> \n\t  1234567890",
)


def check_same_tokenizer(a: Backend, b: Backend) -> None:
    """Raise :class:`TokenizerMismatchError` unless ``a`` and ``b`` tokenize alike.

    Compares full vocabularies when both expose a Hugging Face tokenizer, otherwise the ids of
    sample texts and the end-of-turn tokens.
    """
    ta, tb = getattr(a, "tokenizer", None), getattr(b, "tokenizer", None)
    names = f"{a.model_name!r} and {b.model_name!r}"
    if ta is not None and tb is not None and ta.get_vocab() != tb.get_vocab():
        va, vb = ta.get_vocab(), tb.get_vocab()
        diff = len(set(va.items()) ^ set(vb.items()))
        raise TokenizerMismatchError(
            f"experts {names} have different vocabularies ({len(va)} vs {len(vb)} tokens, "
            f"{diff} entries differ): their streams cannot share tokens"
        )
    for text in _SAMPLES:
        ia, ib = a.tokenize(text), b.tokenize(text)
        if ia != ib:
            raise TokenizerMismatchError(
                f"experts {names} tokenize {text!r} differently ({ia[:8]}... vs {ib[:8]}...): "
                "their streams cannot share tokens"
            )
    if a.end_of_turn_ids != b.end_of_turn_ids:
        raise TokenizerMismatchError(
            f"experts {names} end turns with different tokens "
            f"({sorted(a.end_of_turn_ids)} vs {sorted(b.end_of_turn_ids)})"
        )
