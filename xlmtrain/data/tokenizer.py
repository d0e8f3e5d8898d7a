"""`XLMTokenizer`: raw text <-> the ids the preprocessor writes, and transformers' XLMTokenizer files.

transformers' files (B6 of the XLM reference): `vocab.json` maps pieces to ids, with `</w>` on word-final
pieces and no `@@` (fastBPE `hel@@ lo` is `hel`, `lo</w>`); `merges.txt` is the codes file (it must end with a
newline); `tokenizer_config.json` holds `lang2id`, `id2lang` and `do_lowercase_and_remove_accent`.
Caveat for users: transformers' public `tokenize(text, lang=...)` does not forward `lang`, so every language
goes through the English Moses rules; call its `_tokenize(text, lang=...)` to get our ids. transformers'
zh pipeline uses rjieba and its ro pipeline removes Romanian diacritics, so those languages can differ.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from xlmtrain.data.binarize import ids_from_pieces
from xlmtrain.data.bpe import BPE, EOW, read_codes, write_codes
from xlmtrain.data.dictionary import MASK_WORD, N_SPECIALS, SPECIAL_WORDS, Dictionary
from xlmtrain.data.moses import MosesPipeline, detokenize

HF_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


class XLMTokenizer:
    """Moses + fastBPE + XLM dictionary, exactly the preprocessor's text -> ids path.

    Attributes: `dictionary`, `lang2id`, `id2lang`, `lowercase_and_strip_accents`, `codes_path`.
    """

    def __init__(
        self, dictionary: Dictionary, codes_path: str | Path, lang2id: dict[str, int], lowercase_and_strip_accents: bool
    ) -> None:
        self.dictionary = dictionary
        self.codes_path = Path(codes_path)
        self.lang2id = dict(lang2id)
        self.id2lang = {i: lang for lang, i in self.lang2id.items()}
        self.lowercase_and_strip_accents = lowercase_and_strip_accents
        self._pipelines: dict[str, MosesPipeline] = {}

    @cached_property
    def _bpe(self) -> BPE:
        return BPE(self.codes_path)

    def _words(self, text: str, lang: str) -> list[str]:
        if lang not in self._pipelines:
            self._pipelines[lang] = MosesPipeline(lang, self.lowercase_and_strip_accents)
        return self._pipelines[lang](text)

    def tokenize(self, text: str, lang: str) -> list[str]:
        """BPE pieces of `text` in fastBPE form (non-final pieces end with `@@`)."""
        words = self._words(text, lang)
        return self._bpe.apply([" ".join(words)])[0].split(" ") if words else []

    def encode(self, text: str, lang: str) -> list[int]:
        """The ids the preprocessor writes for this line (no `</s>`, no specials)."""
        return ids_from_pieces(self.tokenize(text, lang), self.dictionary)[0]

    def decode(self, ids: list[int], lang: str = "en") -> str:
        """Detokenised text: special ids skipped, `@@ ` joins removed, Moses detokenisation for `lang`."""
        pieces = [self.dictionary[i] for i in ids if int(i) >= N_SPECIALS or int(i) == self.dictionary.unk_index]
        text = " ".join(pieces).replace("@@ ", "")
        text = text[:-2] if text.endswith("@@") else text
        return detokenize(text.split(" "), lang) if text else ""

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write transformers' XLMTokenizer files (vocab.json, merges.txt, tokenizer_config.json)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        vocab = {}
        for i, word in enumerate(self.dictionary.id2word):
            if i >= N_SPECIALS:
                word = word[:-2] if word.endswith("@@") else word + EOW
            vocab.setdefault(word, i)
        (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        write_codes(read_codes(self.codes_path), directory / "merges.txt")
        config = {
            "tokenizer_class": "XLMTokenizer",
            "do_lowercase_and_remove_accent": self.lowercase_and_strip_accents,
            "lang2id": self.lang2id,
            "id2lang": {str(i): lang for i, lang in self.id2lang.items()},
            "model_max_length": 512,
            "unk_token": "<unk>",
            # XLM starts every sentence with </s> (id 1), never <s>; transformers' XLMTokenizer puts bos_token
            # first (`<s> X </s>` since transformers PR #3791), so bos_token is </s>: its pipelines then feed the
            # model what it was trained on.
            "bos_token": "</s>",
            "sep_token": "</s>",
            "pad_token": "<pad>",
            "cls_token": "</s>",
            "mask_token": MASK_WORD,
            "additional_special_tokens": SPECIAL_WORDS,
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> XLMTokenizer:
        """Load a preprocess output dir (manifest.json + codes + vocab.txt) or a transformers tokenizer dir
        (vocab.json + merges.txt + tokenizer_config.json).

        Raises FileNotFoundError naming the directory when it is neither.
        """
        directory = Path(directory)
        if (directory / "manifest.json").is_file():
            manifest = json.loads((directory / "manifest.json").read_text())
            return cls(
                Dictionary.read_vocab(directory / "vocab.txt"),
                directory / "codes",
                manifest["lang2id"],
                manifest["settings"]["lowercase_and_strip_accents"],
            )
        if all((directory / f).is_file() for f in HF_FILES):
            return cls._from_hf(directory)
        raise FileNotFoundError(
            f"{directory}: neither a preprocess output (manifest.json) nor a transformers tokenizer ({', '.join(HF_FILES)})"
        )

    @classmethod
    def _from_hf(cls, directory: Path) -> XLMTokenizer:
        vocab: dict[str, int] = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))) or len(by_id) < N_SPECIALS:
            raise ValueError(f"{directory / 'vocab.json'}: ids must be 0..{len(by_id) - 1} without gaps")
        # transformers' word-final `x</w>` is fastBPE's `x`; any other piece is a non-final `x@@`.
        words = [w[: -len(EOW)] if w.endswith(EOW) else w + "@@" for w, _ in by_id[N_SPECIALS:]]
        lang2id = config.get("lang2id") or {}
        return cls(
            Dictionary(words),
            directory / "merges.txt",
            lang2id,
            bool(config.get("do_lowercase_and_remove_accent", True)),
        )


def load_tokenizer(path: str | Path) -> XLMTokenizer:
    """An `XLMTokenizer` from a preprocess output dir, an `hf_tokenizer/` or model dir, or a run dir with `model/`.

    Raises FileNotFoundError naming `path` when none of these layouts is found.
    """
    path = Path(path)
    for candidate in (path, path / "hf_tokenizer", path / "model", path / "model" / "hf_tokenizer"):
        if (candidate / "manifest.json").is_file() or all((candidate / f).is_file() for f in HF_FILES):
            return XLMTokenizer.from_pretrained(candidate)
    raise FileNotFoundError(
        f"{path}: no tokenizer found (looked for manifest.json or {', '.join(HF_FILES)} in it, hf_tokenizer/, model/)"
    )
