"""Text as request rules see it: the same words however they are spelled.

A keyword rule is easy to get around with look-alike spellings: full-width or ligature forms,
invisible characters inside a word (zero-width spaces and joiners, variation selectors, the
combining grapheme joiner, fillers), combining accents, mixed case. :func:`normalise` undoes
those: compatibility decomposition (NFKD), every combining mark and every default-ignorable code
point removed, recomposed (NFKC), case folded. Rules are tried on the normalised text as well as
on the text as written.
"""

from __future__ import annotations

import unicodedata

#: Default-ignorable code points (Unicode's DerivedCoreProperties) that are not of category Cf:
#: they render as nothing but split a word for a regular expression.
_IGNORABLE_RANGES = (
    (0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)


def _ignorable(ch: str) -> bool:
    if unicodedata.category(ch) in ("Cf", "Mn", "Me"):
        return True
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _IGNORABLE_RANGES)


def normalise(text: str) -> str:
    """``text`` decomposed, without combining marks or invisible characters, recomposed and
    case-folded (see the module docstring)."""
    kept = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not _ignorable(ch))
    return unicodedata.normalize("NFKC", kept).casefold()


__all__ = ["normalise"]
