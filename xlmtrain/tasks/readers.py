"""Readers for fine-tuning data: NLI sentence pairs (XNLI 1.0, MultiNLI, `datasets` xnli, generic TSV) and
CoNLL-style token tags; `find_nli_data` / `find_tagging_data` collect a data folder's files by split and language.

Labels use XLM's ids: contradiction 0, neutral 1, entailment 2 (`contradictory` is contradiction). The
Hugging Face `datasets` `xnli` schema numbers them the other way round (entailment 0, neutral 1,
contradiction 2); `read_hf_nli` converts. Every error names the file and line (or column).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

NLI_LABELS = ("contradiction", "neutral", "entailment")
"""XLM's label names in id order."""
_LABEL_IDS = {**{name: i for i, name in enumerate(NLI_LABELS)}, "contradictory": 0}
HF_XNLI_TO_XLM = {0: 2, 1: 1, 2: 0}
"""`datasets` xnli label id -> XLM label id (entailment 0 <-> 2)."""
SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "dev": "valid", "validation": "valid", "test": "test"}


class DataFormatError(ValueError):
    """Bad fine-tuning input; the message names the file and the line or column."""


@dataclass(frozen=True)
class NLIExample:
    """One sentence pair: raw (untokenised) `premise` and `hypothesis`, XLM label id, language code."""

    premise: str
    hypothesis: str
    label: int
    lang: str


@dataclass(frozen=True)
class TaggedSentence:
    """One CoNLL sentence: `words` and their `tags` (same length), language code."""

    words: tuple[str, ...]
    tags: tuple[str, ...]
    lang: str


def nli_label(name: str, where: str) -> int:
    """XLM label id of `name` (case-insensitive); DataFormatError naming `where` for anything else."""
    label = _LABEL_IDS.get(name.strip().lower())
    if label is None:
        raise DataFormatError(f"{where}: unknown label {name!r} (expected one of {', '.join(_LABEL_IDS)})")
    return label


def _tsv_rows(path: Path, required: dict[str, tuple[str, ...]]) -> list[tuple[int, dict[str, str]]]:
    """(line number, {canonical column: value}) for a TSV with a header; `required` maps a canonical
    column to its accepted header names. Quotes are literal, as in the XNLI files."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise DataFormatError(f"{path}: empty file (expected a header line)")
        columns = {}
        for name, accepted in required.items():
            found = [i for i, h in enumerate(header) if h.strip() in accepted]
            if not found:
                raise DataFormatError(f"{path}:1: missing column {name!r} (header has {header})")
            columns[name] = found[0]
        rows = []
        for lineno, fields in enumerate(reader, start=2):
            if not any(fields):
                continue
            if len(fields) <= max(columns.values()):
                raise DataFormatError(f"{path}:{lineno}: {len(fields)} fields, the header has {len(header)}")
            rows.append((lineno, {name: fields[i] for name, i in columns.items()}))
    if not rows:
        raise DataFormatError(f"{path}: no examples after the header")
    return rows


def read_xnli_tsv(path: str | Path, langs: list[str] | None = None) -> dict[str, list[NLIExample]]:
    """XNLI 1.0 `xnli.dev.tsv` / `xnli.test.tsv` -> examples by language (`langs` keeps only those)."""
    path = Path(path)
    columns = {
        "language": ("language",),
        "label": ("gold_label",),
        "premise": ("sentence1",),
        "hypothesis": ("sentence2",),
    }
    out: dict[str, list[NLIExample]] = {}
    for lineno, row in _tsv_rows(path, columns):
        lang = row["language"].strip()
        if langs is None or lang in langs:
            label = nli_label(row["label"], f"{path}:{lineno}")
            out.setdefault(lang, []).append(NLIExample(row["premise"], row["hypothesis"], label, lang))
    return out


def read_pair_tsv(path: str | Path, lang: str) -> list[NLIExample]:
    """Generic TSV with a header naming `premise`, `hypothesis` (or XLM's `hypo`) and `label`."""
    path = Path(path)
    columns = {"premise": ("premise",), "hypothesis": ("hypothesis", "hypo"), "label": ("label",)}
    return [
        NLIExample(row["premise"], row["hypothesis"], nli_label(row["label"], f"{path}:{lineno}"), lang)
        for lineno, row in _tsv_rows(path, columns)
    ]


def read_mnli(path: str | Path, lang: str = "en") -> list[NLIExample]:
    """MultiNLI `multinli_1.0_train.jsonl` or `.txt` (TSV with `gold_label`, `sentence1`, `sentence2`).

    Pairs whose gold label is `-` (no annotator consensus) are skipped, as in MultiNLI's own evaluation.
    """
    path = Path(path)
    if path.suffix != ".jsonl":
        columns = {"label": ("gold_label",), "premise": ("sentence1",), "hypothesis": ("sentence2",)}
        rows = [(n, r) for n, r in _tsv_rows(path, columns) if r["label"].strip() != "-"]
    else:
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    row = {
                        "label": record["gold_label"],
                        "premise": record["sentence1"],
                        "hypothesis": record["sentence2"],
                    }
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise DataFormatError(f"{path}:{lineno}: not a MultiNLI record ({error!r})") from None
                if row["label"] != "-":
                    rows.append((lineno, row))
        if not rows:
            raise DataFormatError(f"{path}: no examples")
    return [NLIExample(r["premise"], r["hypothesis"], nli_label(r["label"], f"{path}:{n}"), lang) for n, r in rows]


def read_hf_nli(path: str | Path, lang: str) -> dict[str, list[NLIExample]]:
    """A `datasets` DatasetDict saved with `save_to_disk` in the xnli schema (`premise`, `hypothesis`,
    integer `label` with entailment 0, neutral 1, contradiction 2) -> examples by split (train/valid/test),
    labels converted to XLM's ids."""
    from datasets import load_from_disk

    path = Path(path)
    loaded = load_from_disk(str(path))
    out: dict[str, list[NLIExample]] = {}
    for split_name, dataset in loaded.items():
        split = _SPLIT_ALIASES.get(split_name)
        if split is None:
            continue
        missing = {"premise", "hypothesis", "label"} - set(dataset.column_names)
        if missing:
            raise DataFormatError(
                f"{path}/{split_name}: missing column(s) {sorted(missing)} (have {dataset.column_names})"
            )
        examples = []
        for i, row in enumerate(dataset):
            if row["label"] not in HF_XNLI_TO_XLM:
                raise DataFormatError(f"{path}/{split_name} row {i}: label {row['label']!r} is not 0, 1 or 2")
            examples.append(NLIExample(row["premise"], row["hypothesis"], HF_XNLI_TO_XLM[row["label"]], lang))
        out[split] = examples
    return out


def read_conll(path: str | Path, lang: str) -> list[TaggedSentence]:
    """`token<TAB>tag` per line (extra middle columns are ignored: the tag is the last field), a blank line
    between sentences; `-DOCSTART-` lines are skipped."""
    path = Path(path)
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                if words:
                    sentences.append(TaggedSentence(tuple(words), tuple(tags), lang))
                    words, tags = [], []
                continue
            if line.startswith("-DOCSTART-"):
                continue
            fields = line.split("\t")
            if len(fields) < 2 or not fields[0] or not fields[-1]:
                raise DataFormatError(f"{path}:{lineno}: expected 'token<TAB>tag', got {line!r}")
            words.append(fields[0])
            tags.append(fields[-1])
    if words:
        sentences.append(TaggedSentence(tuple(words), tuple(tags), lang))
    if not sentences:
        raise DataFormatError(f"{path}: no sentences")
    return sentences


# `{split}.{lang}[.ext]`, e.g. train.en.tsv, dev.fr, test.de.conll
_SPLIT_LANG_FILE = re.compile(r"^(train|valid|dev|validation|test)\.([A-Za-z_]+)(\.(tsv|conll|txt))?$")
XNLI_FILES = {"valid": "xnli.dev.tsv", "test": "xnli.test.tsv"}
MNLI_FILES = ("multinli_1.0_train.jsonl", "multinli_1.0_train.txt")

Split = dict[str, dict[str, list]]  # split -> lang -> examples


def _split_lang_files(directory: Path) -> list[tuple[str, str, Path]]:
    found = []
    for path in sorted(directory.iterdir()):
        match = _SPLIT_LANG_FILE.match(path.name)
        if match and path.is_file():
            found.append((_SPLIT_ALIASES[match.group(1)], match.group(2), path))
    return found


def _first(directory: Path, names: tuple[str, ...] | list[str]) -> Path | None:
    """The first of `names` found in `directory` or one level below it (XNLI-1.0/, multinli_1.0/)."""
    for name in names:
        for path in (directory / name, *sorted(directory.glob(f"*/{name}"))):
            if path.is_file():
                return path
    return None


def find_nli_data(directory: str | Path, train_langs: list[str]) -> Split:
    """Collect NLI examples by split and language from `directory`, which holds any of:

    - `xnli.dev.tsv` / `xnli.test.tsv` (XNLI 1.0, also inside one sub-folder such as `XNLI-1.0/`): valid / test;
    - `multinli_1.0_train.jsonl` or `.txt` (also in a sub-folder): English train;
    - `{split}.{lang}.tsv` generic TSV files (`split` train, valid/dev or test);
    - `{lang}/` folders saved by `datasets` (`save_to_disk`) in the xnli schema.

    Train examples are kept only for `train_langs`. Raises FileNotFoundError listing the layouts when
    nothing is found, DataFormatError on bad content.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such data directory")
    data: Split = {split: {} for split in SPLITS}

    def add(split: str, lang: str, examples: list[NLIExample]) -> None:
        if split != "train" or lang in train_langs:
            data[split].setdefault(lang, []).extend(examples)

    for split, name in XNLI_FILES.items():
        path = _first(directory, [name])
        if path is not None:
            for lang, examples in read_xnli_tsv(path).items():
                add(split, lang, examples)
    mnli = _first(directory, MNLI_FILES)
    if mnli is not None:
        add("train", "en", read_mnli(mnli, "en"))
    for split, lang, path in _split_lang_files(directory):
        add(split, lang, read_pair_tsv(path, lang))
    for sub in sorted(p for p in directory.iterdir() if (p / "dataset_dict.json").is_file()):
        for split, examples in read_hf_nli(sub, sub.name).items():
            add(split, sub.name, examples)
    _check_found(
        directory,
        data,
        train_langs,
        "xnli.dev.tsv/xnli.test.tsv, multinli_1.0_train.jsonl|.txt, "
        "{split}.{lang}.tsv, or {lang}/ folders saved by datasets",
    )
    return data


def find_tagging_data(directory: str | Path, train_langs: list[str]) -> Split:
    """Collect CoNLL files `{split}.{lang}[.conll|.tsv|.txt]` (`split` train, valid/dev or test) from
    `directory`; train sentences only for `train_langs`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such data directory")
    data: Split = {split: {} for split in SPLITS}
    for split, lang, path in _split_lang_files(directory):
        if split != "train" or lang in train_langs:
            data[split].setdefault(lang, []).extend(read_conll(path, lang))
    _check_found(directory, data, train_langs, "{split}.{lang}[.conll|.tsv|.txt] files")
    return data


def _check_found(directory: Path, data: Split, train_langs: list[str], layouts: str) -> None:
    missing = [lang for lang in train_langs if lang not in data["train"]]
    if missing:
        raise FileNotFoundError(f"{directory}: no training data for {missing} (looked for {layouts})")
    if not data["valid"]:
        raise FileNotFoundError(f"{directory}: no validation data (looked for {layouts})")
