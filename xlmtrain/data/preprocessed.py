"""Read access to a preprocess output directory, and preprocessing on demand into a cache."""

from __future__ import annotations

import os
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any

from xlmtrain.data.dictionary import Dictionary
from xlmtrain.data.indexed import IndexedCorpus
from xlmtrain.data.pipeline import PreprocessSettings, build, file_lock, plan_build, read_manifest
from xlmtrain.data.tokenizer import XLMTokenizer


class PreprocessedData:
    """A preprocess output dir: `.manifest`, `.languages`, `.lang2id`, `.pairs` (`"en-fr"` names, l1 < l2),
    `.dictionary`, `.mono(split, lang)`, `.parallel(split, l1, l2)`, `.tokenizer()`."""

    def __init__(self, directory: str | Path) -> None:
        """Raises FileNotFoundError when `directory/manifest.json` is missing, PreprocessError (a ValueError)
        naming it when it is corrupt."""
        self.directory = Path(directory)
        path = self.directory / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: not found; run `python -m xlmtrain.preprocess input=RAW output={directory}`"
            )
        self.manifest: dict[str, Any] = read_manifest(path)
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
            raise KeyError(
                f"no monolingual data for {lang!r} in {self.directory} (have {self.manifest['monolingual']})"
            )
        return IndexedCorpus(self.directory / f"{split}.{lang}")

    def parallel(self, split: str, l1: str, l2: str) -> tuple[IndexedCorpus, IndexedCorpus]:
        """The aligned corpora of the pair, `l1` side first (either order may be asked for)."""
        self._split(split)
        name = "-".join(sorted((l1, l2)))
        if name not in self.pairs:
            raise KeyError(f"no parallel data for {l1}-{l2} in {self.directory} (have {self.pairs})")
        return IndexedCorpus(self.directory / f"{split}.{name}.{l1}"), IndexedCorpus(
            self.directory / f"{split}.{name}.{l2}"
        )

    def tokenizer(self) -> XLMTokenizer:
        return XLMTokenizer.from_pretrained(self.directory)


def ensure_preprocessed(raw_dir: str | Path, cache_dir: str | Path, **settings: Any) -> Path:
    """Preprocess `raw_dir` into `cache_dir/<key>` unless it is there; returns that folder.

    `settings` are `PreprocessSettings` fields; the key is `pipeline.build_key` (output settings, input hashes,
    format versions; the inputs are scanned once). Safe when many processes (srun/torchrun ranks, concurrent
    runs) ask at once: one builds under an exclusive lock on `cache_dir/<key>.lock`, the others wait, then reuse
    it. The build happens in `cache_dir/.<key>.partial` (a killed build is continued by the next caller) and is
    renamed into place when complete, so `cache_dir/<key>` is always a finished build.
    """
    plan = plan_build(raw_dir, PreprocessSettings(**settings))
    name = plan.key[:16]
    out = Path(cache_dir) / name
    if (out / "manifest.json").is_file():
        return out
    with file_lock(Path(cache_dir) / f"{name}.lock"):
        if (out / "manifest.json").is_file():  # built by the process that held the lock before us
            return out
        partial = Path(cache_dir) / f".{name}.partial"
        build(plan, partial)
        if out.exists():  # not a finished build (no manifest): a leftover of an older layout
            shutil.rmtree(out)
        os.replace(partial, out)
    return out
