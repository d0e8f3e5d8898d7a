"""Convert the dictionary an original checkpoint carries into transformers' XLMTokenizer files."""

from __future__ import annotations

import json
from pathlib import Path

from xlmtrain.interop.weights import CheckpointError

N_SPECIAL = 14  # <s> </s> <pad> <unk> <special0..9>, ids 0..13
SPECIAL_TOKENS = {
    "unk_token": "<unk>",
    "bos_token": "</s>",  # XLM's sentence start (see data/tokenizer.py: save_pretrained)
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "cls_token": "</s>",
    "mask_token": "<special1>",
    "additional_special_tokens": [f"<special{i}>" for i in range(10)],
}


def hf_vocab(word2id: dict[str, int]) -> dict[str, int]:
    """fastBPE pieces -> transformers pieces: specials kept, `@@` removed, else `</w>` appended (word-final)."""
    out = {}
    for word, index in sorted(word2id.items(), key=lambda item: item[1]):
        if index < N_SPECIAL:
            out[word] = index
        elif "@@" in word:
            out[word.replace("@@", "")] = index
        else:
            out[word + "</w>"] = index
    return out


def write_merges(codes: Path, dst: Path) -> None:
    """fastBPE `codes` (`left right count` per line) -> merges.txt (`left right`, newline-terminated)."""
    lines = []
    for number, line in enumerate(codes.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if len(fields) < 2:
            raise CheckpointError(f"{codes}:{number}: expected 'left right [count]', got {line!r}")
        lines.append(f"{fields[0]} {fields[1]}\n")
    dst.write_text("".join(lines), encoding="utf-8")


def write_tokenizer_files(
    word2id: dict[str, int],
    dst: Path,
    *,
    lang2id: dict[str, int] | None,
    codes: Path | None = None,
    do_lowercase_and_remove_accent: bool = True,
) -> list[str]:
    """Write vocab.json, tokenizer_config.json and (given `codes`) merges.txt; returns notes for the user."""
    dst.mkdir(parents=True, exist_ok=True)
    vocab = hf_vocab(word2id)
    (dst / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "XLMTokenizer",
        "do_lowercase_and_remove_accent": do_lowercase_and_remove_accent,
        "model_max_length": 512,
        **SPECIAL_TOKENS,
    }
    if lang2id is not None:
        config["lang2id"] = lang2id
        config["id2lang"] = {str(i): lang for lang, i in lang2id.items()}
    (dst / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if codes is not None:
        write_merges(codes, dst / "merges.txt")
        return []
    return [
        f"{dst / 'merges.txt'} was not written: the checkpoint does not carry its BPE codes. "
        "Pass the codes file the model was trained with (e.g. codes_xnli_15) as --codes CODES."
    ]
