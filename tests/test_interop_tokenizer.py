"""`checkpoint_tokenizer`: an original checkpoint's dictionary + codes, checked against the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from xlmtrain.data.dictionary import N_SPECIALS, Dictionary
from xlmtrain.interop.load import Checkpoint
from xlmtrain.interop.tokenizer import checkpoint_tokenizer
from xlmtrain.interop.weights import CheckpointError
from xlmtrain.model.config import XLMConfig

SPECIALS = Dictionary().id2word[:N_SPECIALS]


def _original(word2id: dict[str, int]) -> Checkpoint:
    config = XLMConfig(vocab_size=len(word2id), emb_dim=8, n_layers=1, n_heads=2, n_langs=2, lang2id={"en": 0, "fr": 1})
    return Checkpoint(config, {}, "lm", "original", None, word2id)


@pytest.fixture
def codes(tmp_path: Path) -> Path:
    path = tmp_path / "codes"
    path.write_text("h e 10\nhe l 8\nl o</w> 5\n")
    return path


def test_dictionary_and_codes_make_the_tokenizer(codes: Path) -> None:
    word2id = {w: i for i, w in enumerate([*SPECIALS, "hel@@", "lo", "he@@"])}
    tok = checkpoint_tokenizer(_original(word2id), "x.pth", vocab_size=len(word2id), codes=codes)
    assert tok.encode("hello", "en") == [N_SPECIALS, N_SPECIALS + 1]
    assert tok.lang2id == {"en": 0, "fr": 1}


def test_bad_inputs_name_the_checkpoint_and_the_option(codes: Path) -> None:
    word2id = {w: i for i, w in enumerate([*SPECIALS, "hel@@", "lo"])}
    with pytest.raises(
        CheckpointError, match=r"^x.pth: an original XLM checkpoint needs its fastBPE codes \(model.codes=FILE\)$"
    ):
        checkpoint_tokenizer(_original(word2id), "x.pth", vocab_size=16, codes_option="model.codes=FILE")
    gappy = {**word2id, "lo": 20}
    with pytest.raises(CheckpointError, match="ids are not 0..n-1"):
        checkpoint_tokenizer(_original(gappy), "x.pth", vocab_size=16, codes=codes)
    with pytest.raises(CheckpointError, match="tokenizer has 16 words but the model's vocab_size is 17"):
        checkpoint_tokenizer(_original(word2id), "x.pth", vocab_size=17, codes=codes)
