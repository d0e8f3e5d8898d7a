"""xlmtrain's tokenizer vs transformers' XLMTokenizer reading our hf_tokenizer/ export, id for id."""

from __future__ import annotations

import random

import pytest
import transformers

import xlmtrain
from xlmtrain.data.pipeline import PreprocessSettings, preprocess
from xlmtrain.data.tokenizer import XLMTokenizer

LANGS = ("en", "fr", "de", "es", "ru")
PIECES = [
    "Élève", "naïve", "Straße", "ÆON", "œuvre", "Ångström", "l'amour", "aujourd'hui", "don't", "it's", "O'Neill",
    "3.14", "1,000,000", "42%", "$5", "«quoted»", "\u201cdouble\u201d", "(paren)", "[x]", "a--b", "e-mail", "...",
    "…", "!?", "&", "<tag>", "😀", "👍🏽", "汉字", "日本語", "한국어", "Привет", "мир", "Ελληνικά", "עברית",
    "العربية", "हिन्दी", "ไทย", "supercalifragilisticexpialidocious" * 3, "x" * 120, "Mixed日本abc",
    "tab\there", "nbsp\u00a0space", "zero\u200bwidth", "１２３", "，", "。", "：",
]  # fmt: skip


def _text(rng: random.Random) -> str:
    return " ".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))


@pytest.fixture(scope="module", params=[False, True], ids=["cased", "lowercase"])
def built(request, tmp_path_factory):
    rng = random.Random(0)
    raw = tmp_path_factory.mktemp("raw")
    for lang in LANGS:
        (raw / f"{lang}.txt").write_text("\n".join(_text(rng) for _ in range(60)) + "\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("out") / "data"
    s = PreprocessSettings(bpe_merges=300, lowercase_and_strip_accents=request.param, valid_lines=2, test_lines=2,
                           workers=1, progress=False)  # fmt: skip
    preprocess(raw, out, s)
    return out


def test_transformers_reproduces_our_ids(built):
    ours = xlmtrain.load_tokenizer(built)
    hf = transformers.XLMTokenizer.from_pretrained(built / "hf_tokenizer")
    assert hf.do_lowercase_and_remove_accent == ours.lowercase_and_strip_accents
    assert hf.lang2id == ours.lang2id
    rng = random.Random(1)
    n_unk = n_words = 0
    for _ in range(60):
        text, lang = _text(rng), rng.choice(LANGS)
        ids = ours.encode(text, lang)
        assert hf.convert_tokens_to_ids(hf._tokenize(text, lang=lang)) == ids, (text, lang)
        n_unk += ids.count(3)
        n_words += len(ids)
    assert n_words > 500 and n_unk < n_words / 4  # the comparison is mostly over real vocabulary ids


def test_hf_dir_round_trip(built, tmp_path):
    ours = XLMTokenizer.from_pretrained(built)
    from_hf = xlmtrain.load_tokenizer(built / "hf_tokenizer")
    assert from_hf.dictionary.id2word == ours.dictionary.id2word
    rng = random.Random(2)
    for _ in range(20):
        text = _text(rng)
        assert from_hf.encode(text, "fr") == ours.encode(text, "fr")
    ours.save_pretrained(tmp_path / "again")
    for f in ("vocab.json", "merges.txt"):
        assert (tmp_path / "again" / f).read_bytes() == (built / "hf_tokenizer" / f).read_bytes()


def test_decode_detokenizes(built):
    tok = xlmtrain.load_tokenizer(built)
    text = "Straße, l'amour (3.14) naïve!"
    expected = "straße, l'amour (3.14) naive!" if tok.lowercase_and_strip_accents else text
    assert tok.decode(tok.encode(text, "en"), "en") == expected
    assert tok.tokenize("supercalifragilisticexpialidocious", "en")[0].endswith("@@")


def test_load_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        xlmtrain.load_tokenizer(tmp_path)


def test_missing_segmenter_is_named():
    pytest.importorskip("sacremoses")
    try:
        import pythainlp  # noqa: F401

        pytest.skip("pythainlp installed")
    except ImportError:
        pass
    from xlmtrain.data.moses import MosesPipeline

    with pytest.raises(ImportError, match="pythainlp"):
        MosesPipeline("th")
