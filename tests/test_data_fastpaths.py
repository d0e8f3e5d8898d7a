"""The preprocessor's shortcuts give exactly the output of the plain path they replace, on generated text built
to fire every rule: guarded sacremoses normalisation/tokenisation, the unicode-punctuation fast path, and the
per-word BPE cache of the binariser."""

from __future__ import annotations

import random
import re

import pytest
import sacremoses

from xlmtrain.data import binarize, fastmoses
from xlmtrain.data.binarize import WordIds, ids_from_pieces
from xlmtrain.data.moses import _FULLSTOP, _UNICODE_PUNCT, remove_non_printing_char, replace_unicode_punct
from xlmtrain.data.pipeline import PreprocessSettings, preprocess

LANGS = ("en", "fr", "de", "es", "it", "cs", "ru", "ko")
# Words with accents, apostrophes, digits, emoji, CJK, mixed scripts; every character or substring a
# normaliser/tokeniser rule looks for; nonbreaking prefixes followed by lower/upper case words and numbers.
PIECES = [
    "Élève", "naïve", "Straße", "œuvre", "l'amour", "aujourd'hui", "don't", "it's", "O'Neill", "'tis", "5's",
    "rock'n'roll", "3.14", "1,000,000", "42%", "42 %", "$5", "€3", "«quoted»", "«\u00a0q\u00a0»", "„q“", "“d”", "‚low", "‘s’",
    "a‘b", "a’b", "´", "´´", "``x''", "`", "''", "\"", "\",", "\".", ",\"", ".\"", "...\" x", "(paren)", "( a )",
    ") .", "( x", "x )", "[x]", "{y}", "<tag>", "a--b", "e-mail", "a/b", "—", "–", "…", "...", "..", "....",
    "!?", "x :", "y ;", "&", "|", "@", "#", "nº\u00a0", "\u00a0ºC", "\u00a0cm", "\u00a0%", "\u00a0:", "\u00a0?",
    "\u00a0!", "\u00a0;", ",\u00a0", "1\u00a0000", "a,b", "x,", "3,", ",3", "Mr.", "Mr. Smith", "No. 5", "No.",
    "Art. 3", "e.g.", "U.S.A.", "etc.", "z.", "a. b", "A. B", "Hello.'", "x.'", "DOTMULTI", "DOTDOTMULTI",
    "THISISPROTECTED000", "😀", "👍🏽", "汉字", "日本語", "한국어", "Привет", "Ελληνικά", "עברית", "العربية",
    "हिन्दी", "ไทย", "Mixed日本abc", "x" * 60, "tab\there", "two  spaces", "nbsp\u00a0space", "zero\u200bwidth",
    "\u200d", "\r", "\x07bell", "x\u2028y", "\u3000", "\u2009thin", "１２３", "，", "。", "．", "：", "？", "（x）",
    "【", "】", "％", "～", "━", "〈", "〉", "、",
]  # fmt: skip


def _texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(PIECES) for _ in range(rng.randint(1, 14))]
        sep = rng.choice([" ", " ", " ", "  ", "\t", "\u00a0"])
        out.append(sep.join(words) + rng.choice(["", ".", " .", "!", "'", ".'", '"', "  "]))
    return out


@pytest.mark.parametrize("lang", LANGS)
def test_normalizer_and_tokenizer_match_sacremoses(lang):
    norm_ref, tok_ref = sacremoses.MosesPunctNormalizer(lang=lang), sacremoses.MosesTokenizer(lang=lang)
    norm, tok = fastmoses.PunctNormalizer(lang), fastmoses.Tokenizer(lang)
    fired = [0] * len(norm_ref.substitutions)
    for text in _texts(LANGS.index(lang), 800):
        normalized = norm_ref.normalize(text)
        assert norm(text) == normalized, text
        for i, (pattern, repl) in enumerate(norm_ref.substitutions):
            fired[i] += re.sub(pattern, repl, text) != text
        for t in (text, normalized, remove_non_printing_char(normalized)):
            assert tok(t) == tok_ref.tokenize(t, escape=False), t
    # the comparison is not vacuous: every normaliser rule changed some generated text
    assert all(fired), [norm_ref.substitutions[i] for i, n in enumerate(fired) if not n]


def test_every_trigger_is_needed_for_its_rule_to_change_text():
    rules = {(p, r) for lang in LANGS for p, r in sacremoses.MosesPunctNormalizer(lang=lang).substitutions}
    assert set(fastmoses._TRIGGERS) <= rules  # no stale entry for a rule sacremoses no longer has
    texts = _texts(7, 3000)
    for pattern, repl in rules:
        trigger = fastmoses._trigger(pattern, repl)
        if not trigger:
            continue
        for text in texts:
            without = text
            while trigger in without:  # removing one occurrence can join two halves into another
                without = without.replace(trigger, "")
            assert re.sub(pattern, repl, without) == without, (pattern, without)


def test_replace_unicode_punct_fast_path():
    for text in _texts(3, 3000):
        assert replace_unicode_punct(text) == _FULLSTOP.sub(". ", text).translate(_UNICODE_PUNCT), text


def test_word_cache_equals_whole_line_bpe(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    for lang in ("en", "fr"):
        (raw / f"{lang}.txt").write_text("\n".join(_texts(len(lang), 300)) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    preprocess(raw, out, PreprocessSettings(bpe_merges=400, valid_lines=2, test_lines=2, workers=1, progress=False))
    sentences = [line.split(" ") for line in ("a b c", *(t.replace("\t", " ") for t in _texts(9, 200)))]
    sentences = [[w for w in s if w] for s in sentences]
    for max_cached in (WordIds.MAX_CACHED, 50):  # 50: the cache is cleared and refilled mid-way
        monkeypatch.setattr(WordIds, "MAX_CACHED", max_cached)
        word_ids = WordIds(str(out / "codes"), str(out / "vocab.txt"))
        for start in range(0, len(sentences), 20):
            batch = sentences[start : start + 20]
            word_ids.add(batch)
            for words in batch:
                whole = ids_from_pieces(word_ids.bpe.apply([" ".join(words)])[0].split(" "), word_ids.dico)
                cached = ([i for w in words for i in word_ids.ids[w]], sum(word_ids.specials.get(w, 0) for w in words))
                assert cached == whole, words
    assert binarize._load_word_ids(str(out / "codes"), str(out / "vocab.txt")).dico.id2word == word_ids.dico.id2word
