"""The bundled synthetic languages."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from xlmtrain.data.synthetic import LANGUAGES, Meaning, render, sample_meaning, write_corpus


def test_grammars_hand_checked() -> None:
    m = Meaning(subject="dog", verb="see", obj="cat", obj_adj="big", obj_plural=True, past=True, negated=True)
    io, vo, ia = (render(m, lang).split() for lang in LANGUAGES)
    assert len(io) == 6 and io[1] == "ne" and io[2].endswith("ar")  # SVO, neg particle, past suffix
    assert io[4].endswith("s")  # adjective before the plural noun
    assert vo[1].endswith("oku") and vo[2].endswith("ok") and vo[3].endswith("ilma")  # SOV, agreement, case
    assert ia[:2] == ["mi", "ka"] and "ta" in ia  # VSO with particles


def test_lexicon_is_a_bijection_with_no_shared_forms() -> None:
    rng = random.Random(0)
    forms = {lang: set() for lang in LANGUAGES}
    for _ in range(300):
        m = sample_meaning(rng)
        for lang in LANGUAGES:
            forms[lang].update(render(m, lang).split()[:-1])
    assert not forms["io"] & forms["vo"] and not forms["vo"] & forms["ia"]
    a = Meaning(subject="dog", verb="see", obj="cat")
    b = Meaning(subject="dog", verb="see", obj="fish")
    for lang in LANGUAGES:
        assert render(a, lang) != render(b, lang)


def test_write_corpus_is_deterministic(tmp_path: Path) -> None:
    d1 = write_corpus(tmp_path / "a", langs=("io", "vo", "ia"), n_mono=50, n_para=30, seed=7)
    d2 = write_corpus(tmp_path / "b", langs=("io", "vo", "ia"), n_mono=50, n_para=30, seed=7)
    names = sorted(p.name for p in d1.iterdir())
    assert names == sorted(
        ["io.txt", "vo.txt", "ia.txt", "io-vo.io", "io-vo.vo", "io-ia.io", "io-ia.ia", "vo-ia.vo", "vo-ia.ia"]
    )
    for name in names:
        assert (d1 / name).read_bytes() == (d2 / name).read_bytes()
    assert len((d1 / "io-vo.vo").read_text().splitlines()) == 30
    with pytest.raises(ValueError, match="unknown synthetic language"):
        write_corpus(tmp_path / "c", langs=("io", "en"))
