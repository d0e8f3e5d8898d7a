"""Read access to a preprocess output directory, and preprocessing on demand into a cache."""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

from xlmtrain.data.dictionary import Dictionary
from xlmtrain.data.indexed import IndexedCorpus
from xlmtrain.data.pipeline import PreprocessSettings, input_hashes, preprocess
from xlmtrain.data.tokenizer import XLMTokenizer


class PreprocessedData:
    """A preprocess output dir: `.manifest`, `.languages`, `.lang2id`, `.pairs` (`"en-fr"` names, l1 < l2),
    `.dictionary`, `.mono(split, lang)`, `.parallel(split, l1, l2)`, `.tokenizer()`."""

    def __init__(self, directory: str | Path) -> None:
        """Raises FileNotFoundError when `directory/manifest.json` is missing."""
        self.directory = Path(directory)
        path = self.directory / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run `python -m xlmtrain.preprocess input=RAW output={directory}`")
        self.manifest: dict[str, Any] = json.loads(path.read_text())
        self.languages: list[str] = self.manifest["languages"]
        self.lang2id: dict[str, int] = self.manifest["lang2id"]
        self.pairs: list[str] = self.manifest["pairs"]

    @cached_property
    def dictionary(self) -> Dictionary:
        return Dictionary.read_vocab(self.directory / "vocab.txt")

    def _split(self, split: str) -> None:
        if split not in self.manifest["splits"]:
            raise KeyError(f"split {split!r} not in {self.manifest['splits']} ({self.directory})")

    def mono(self, split: str, lang: str) -> IndexedCorpus:
        """The monolingual corpus `{split}.{lang}`. Raises KeyError naming the available languages."""
        self._split(split)
        if lang not in self.manifest["monolingual"]:
            raise KeyError(f"no monolingual data for {lang!r} in {self.directory} (have {self.manifest['monolingual']})")
        return IndexedCorpus(self.directory / f"{split}.{lang}")

    def parallel(self, split: str, l1: str, l2: str) -> tuple[IndexedCorpus, IndexedCorpus]:
        """The aligned corpora of the pair, `l1` side first (either order may be asked for)."""
        self._split(split)
        name = "-".join(sorted((l1, l2)))
        if name not in self.pairs:
            raise KeyError(f"no parallel data for {l1}-{l2} in {self.directory} (have {self.pairs})")
        return IndexedCorpus(self.directory / f"{split}.{name}.{l1}"), IndexedCorpus(self.directory / f"{split}.{name}.{l2}")

    def tokenizer(self) -> XLMTokenizer:
        return XLMTokenizer.from_pretrained(self.directory)


def ensure_preprocessed(raw_dir: str | Path, cache_dir: str | Path, **settings: Any) -> Path:
    """Preprocess `raw_dir` into `cache_dir/<key>` (key = input hashes + output settings) unless it is there.

    `settings` are `PreprocessSettings` fields. Returns the output dir.
    """
    s = PreprocessSettings(**settings)
    blob = json.dumps({"inputs": input_hashes(raw_dir), "settings": s.output_settings()}, sort_keys=True)
    out = Path(cache_dir) / hashlib.sha256(blob.encode()).hexdigest()[:16]
    preprocess(raw_dir, out, s)
    return out


