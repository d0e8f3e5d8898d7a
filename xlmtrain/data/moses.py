"""Per-language text normalisation and word segmentation, as XLM's `tools/tokenize.sh` and transformers'
`XLMTokenizer._tokenize` do it.

Steps for a line: replace unicode punctuation -> sacremoses `MosesPunctNormalizer(lang)` -> remove non-printing
characters (every Unicode category C*) -> sacremoses `MosesTokenizer(lang)` without XML escaping (zh/th/ja use
their own segmenter instead, see `SEGMENTER_PACKAGES`) -> optionally XLM's lowercase + accent stripping.
Differences from transformers: its `ro` pipeline adds WMT16 Romanian diacritic removal (XLM-100 did not), so ro
ids can differ; zh follows transformers (rjieba, or jieba when rjieba is missing) rather than XLM's Stanford
segmenter.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache

import sacremoses

from xlmtrain.data.fastmoses import PunctNormalizer, Tokenizer

# zh/th/ja are segmented by these optional packages, not by the Moses tokenizer.
SEGMENTER_PACKAGES = {"zh": "rjieba (or jieba)", "th": "pythainlp", "ja": "kytea (Mykytea)"}

_FULLSTOP = re.compile(r"[。．]\s*")
_UNICODE_PUNCT = str.maketrans(
    {
        "，": ",", "、": ",", "”": '"', "“": '"', "∶": ":", "：": ":", "？": "?", "《": '"', "》": '"', "）": ")",
        "！": "!", "（": "(", "；": ";", "」": '"', "「": '"', "～": "~", "’": "'", "…": "...", "━": "-",
        "〈": "<", "〉": ">", "【": "[", "】": "]", "％": "%",
        **{chr(0xFF10 + d): str(d) for d in range(10)},  # fullwidth digits
    }
)  # fmt: skip
# Any character that replace_unicode_punct changes: one C-level scan decides whether there is work to do.
_HAS_UNICODE_PUNCT = re.compile("[" + re.escape("。．" + "".join(map(chr, _UNICODE_PUNCT))) + "]")


def replace_unicode_punct(text: str) -> str:
    """Moses' `replace-unicode-punctuation.perl`: CJK/fullwidth punctuation and digits to ASCII."""
    if _HAS_UNICODE_PUNCT.search(text) is None:
        return text
    return _FULLSTOP.sub(". ", text).translate(_UNICODE_PUNCT)


def remove_non_printing_char(text: str) -> str:
    """Moses' `remove-non-printing-char.perl` as transformers ports it: drop every character of category C*."""
    if text.isprintable():  # fast path: isprintable() is False for every C* character (and non-ASCII spaces)
        return text
    return "".join(c for c in text if unicodedata.category(c)[0] != "C")


def lowercase_and_strip_accents(text: str) -> str:
    """XLM's `lowercase_and_remove_accent.py`: lower, NFD, drop category Mn, lower again (no NFC)."""
    text = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in text if unicodedata.category(c) != "Mn").lower()


def _segmenter(lang: str) -> Callable[[str], list[str]]:
    """The word segmenter of zh/th/ja; ImportError naming the package when it is missing."""
    try:
        if lang == "zh":
            try:
                import rjieba

                return lambda text: list(rjieba.cut(text))
            except ImportError:
                import jieba

                return lambda text: list(jieba.cut(text))
        if lang == "th":
            from pythainlp.tokenize import word_tokenize

            return word_tokenize
        import os

        import Mykytea

        kytea = Mykytea.Mykytea(f"-model {os.path.expanduser('~')}/local/share/kytea/model.bin")
        return lambda text: list(kytea.getWS(text))
    except ImportError as err:
        raise ImportError(
            f"language {lang!r} needs the optional segmenter {SEGMENTER_PACKAGES[lang]}: pip install it "
            f"(missing module: {err.name})"
        ) from err


class MosesPipeline:
    """Turns one line of raw text in language `lang` into the words that BPE is applied to."""

    def __init__(self, lang: str, lowercase_and_strip_accents: bool = False) -> None:
        """Raises ImportError naming the package when `lang` needs a missing segmenter (zh/th/ja)."""
        self.lang = lang
        self.lowercase = lowercase_and_strip_accents
        self._normalizer = PunctNormalizer(lang)
        self._tokenizer = Tokenizer(lang)
        self._segment = _segmenter(lang) if lang in SEGMENTER_PACKAGES else None

    def _normalize(self, text: str) -> str:
        text = replace_unicode_punct(text)
        return remove_non_printing_char(self._normalizer(text))

    def __call__(self, text: str) -> list[str]:
        """Words of `text` (no empty strings, no ASCII spaces inside a word)."""
        if self._segment is None:
            words = self._tokenizer(self._normalize(text))
            if not self.lowercase:  # str.split() words: non-empty, no ASCII space; nothing below changes them
                return words
        elif self.lang == "zh":  # transformers segments zh before normalising (XLM's order too)
            words = self._normalize(" ".join(self._segment(text))).split()
        else:
            words = self._segment(self._normalize(text))
        line = " ".join(words)
        if self.lowercase:
            line = lowercase_and_strip_accents(line)
        # fastBPE splits on ASCII space only: split the same way so both sides see the same words.
        return [w for w in line.split(" ") if w]


@lru_cache(maxsize=16)
def _detokenizer(lang: str) -> sacremoses.MosesDetokenizer:
    return sacremoses.MosesDetokenizer(lang=lang)


def detokenize(words: list[str], lang: str = "en") -> str:
    """Moses detokenisation of a list of words."""
    return _detokenizer(lang).detokenize(words)
