"""sacremoses' `MosesPunctNormalizer.normalize` and `MosesTokenizer.tokenize(escape=False)`, same output, faster.

The rules (regexes, nonbreaking prefixes, character classes) are read from the sacremoses objects, never
copied; what changes is how often they run. sacremoses calls `re.sub` with ~45 pattern strings per line (a
regex-cache lookup and a full scan each) and rebuilds sets of ~10,000 characters inside its nonbreaking-prefix
check. Here:
- every rule is compiled once and skipped when a *trigger* substring, without which it cannot change the
  text, is absent (one C-level `in` test instead of a regex call);
- the nonbreaking-prefix pass looks only at tokens ending in "." and uses frozensets built once;
- the whitespace clean-up after that pass is skipped: its input is already single-space joined tokens.
`tests/test_data_fastmoses.py` checks the output against sacremoses itself on generated text built to fire
every rule.
"""

from __future__ import annotations

import re

import sacremoses

# Regex rules of the normaliser -> a substring every match needs (or, for " +" -> " ", every *changing*
# match: a single space replaced by a single space is a no-op). Rules not listed and not literal run always.
_TRIGGERS = {
    (r"\r", r""): "\r",
    (r"\(", r" ("): "(",
    (r"\)", r") "): ")",
    (r" +", r" "): "  ",
    (r"\) ([.!:?;,])", r")\g<1>"): ") ",
    (r"\( ", r"("): "( ",
    (r" \)", r")"): " )",
    (r"(\d) %", r"\g<1>%"): " %",
    ("([a-zA-Z])‘([a-zA-Z])", r"\g<1>'\g<2>"): "‘",
    ("([a-zA-Z])’([a-zA-Z])", r"\g<1>'\g<2>"): "’",
    ("\u00a0\\?", "?"): "\u00a0?",
    ("\u00a0\\!", "!"): "\u00a0!",
    (r'"([,.]+)', r'\g<1>"'): '"',
    (r'(\.+)"(\s*[^<])', r'"\g<1>\g<2>'): '."',
    ("(\\d)\u00a0(\\d)", r"\g<1>,\g<2>"): "\u00a0",
    ("(\\d)\u00a0(\\d)", r"\g<1>.\g<2>"): "\u00a0",
}
_REGEX_META = frozenset("\\.^$*+?{}[]()|")


def _trigger(pattern: str, repl: str) -> str:
    """The substring without which `re.sub(pattern, repl, text)` returns `text` ("" = always run)."""
    if (pattern, repl) in _TRIGGERS:
        return _TRIGGERS[(pattern, repl)]
    return pattern if _REGEX_META.isdisjoint(pattern) else ""  # a literal pattern triggers on itself


class PunctNormalizer:
    """`sacremoses.MosesPunctNormalizer(lang).normalize(text)` with default options."""

    def __init__(self, lang: str) -> None:
        subs = sacremoses.MosesPunctNormalizer(lang=lang).substitutions
        self._rules = [(re.compile(p).sub, r, _trigger(p, r)) for p, r in subs]

    def __call__(self, text: str) -> str:
        for sub, repl, trigger in self._rules:
            if trigger in text:  # "" is in every string
                text = sub(repl, text)
        return text.strip()


class Tokenizer:
    """`sacremoses.MosesTokenizer(lang).tokenize(text, escape=False)` (no dash splitting, no protected
    patterns): the list of tokens."""

    def __init__(self, lang: str) -> None:
        self._moses = m = sacremoses.MosesTokenizer(lang=lang)
        self._dedup_space, self._ascii_junk = m.DEDUPLICATE_SPACE, m.ASCII_JUNK
        self._pad_not_alnum = m.PAD_NOT_ISALNUM
        self._commas = [m.COMMA_SEPARATE_1, m.COMMA_SEPARATE_2, m.COMMA_SEPARATE_3]
        if lang == "en":
            self._apostrophes = m.ENGLISH_SPECIFIC_APOSTROPHE
        elif lang in ("fr", "it"):
            self._apostrophes = m.FR_IT_SPECIFIC_APOSTROPHE
        else:
            self._apostrophes = [m.NON_SPECIFIC_APOSTROPHE]
        self._trailing_dot_apostrophe = m.TRAILING_DOT_APOSTROPHE
        self._prefixes = frozenset(m.NONBREAKING_PREFIXES)
        self._numeric_only = frozenset(m.NUMERIC_ONLY_PREFIXES)
        self._lower = frozenset(m.IsLower)
        self._alpha = frozenset(m.IsAlpha)

    def __call__(self, text: str) -> list[str]:
        # Every \s and every [\000-\037] character is non-printable; so on printable text without a double
        # space, de-duplicating spaces and removing ASCII junk change nothing.
        if "  " in text or not text.isprintable():
            for regexp, repl in (self._dedup_space, self._ascii_junk):
                text = regexp.sub(repl, text)
        regexp, repl = self._pad_not_alnum
        text = regexp.sub(repl, text.strip())
        if ".." in text:
            text = self._moses.replace_multidots(text)
        if "," in text:
            for regexp, repl in self._commas:
                text = regexp.sub(repl, text)
        if "'" in text:  # every apostrophe rule matches a literal '
            for regexp, repl in self._apostrophes:
                text = regexp.sub(repl, text)
        text = self._nonbreaking_prefixes(text)
        if ".'" in text:
            regexp, repl = self._trailing_dot_apostrophe
            text = regexp.sub(repl, text)
        if "DOTMULTI" in text:
            text = self._moses.restore_multidots(text)
        return text.split()

    def _nonbreaking_prefixes(self, text: str) -> str:
        """sacremoses' `handles_nonbreaking_prefixes`: split the final "." off a token unless the token is a
        known prefix, an abbreviation with inner dots, or is followed by a lowercase word (or, for numeric-only
        prefixes, by a number). Returns the tokens joined by single spaces."""
        tokens = text.split()
        last = len(tokens) - 1
        for i, token in enumerate(tokens):
            if len(token) < 2 or token[-1] != ".":  # sacremoses' r"^(\S+)\.$" on a whitespace-free token
                continue
            prefix = token[:-1]
            if (
                ("." in prefix and not self._alpha.isdisjoint(prefix))
                or (prefix in self._prefixes and prefix not in self._numeric_only)
                or (i != last and tokens[i + 1][0] in self._lower)
                or (prefix in self._numeric_only and i != last and "0" <= tokens[i + 1][0] <= "9")
            ):
                continue
            tokens[i] = prefix + " ."
        return " ".join(tokens)
