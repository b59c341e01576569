"""Text as request rules see it: the same words however they are spelled.

A keyword rule is easy to get around with look-alike spellings: full-width or ligature forms,
zero-width characters inside a word, mixed case. :func:`normalise` undoes those (Unicode NFKC,
zero-width and other invisible format characters removed, case folded), and rules are tried on
the normalised text as well as on the text as written.
"""

from __future__ import annotations

import unicodedata

#: Invisible characters that split a word without showing (zero-width space/joiners, word
#: joiner, BOM, soft hyphen, Mongolian vowel separator); every other "Cf" character goes too.
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u180e"}


def normalise(text: str) -> str:
    """``text`` in NFKC, without invisible format characters, case-folded."""
    nfkc = unicodedata.normalize("NFKC", text)
    kept = "".join(
        ch for ch in nfkc if ch not in _INVISIBLE and unicodedata.category(ch) != "Cf"
    )
    return kept.casefold()


__all__ = ["normalise"]
