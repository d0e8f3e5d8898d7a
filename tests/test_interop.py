"""Checkpoint interop: transformers dirs, original XLM .pth files, xlmtrain dirs, the convert CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import xlmtrain
from xlmtrain.convert import main as convert_main
from xlmtrain.interop import CheckpointError, load_model, read_checkpoint, save_model
from xlmtrain.model import UnsupportedFeatureError, XLMConfig, build_model

REPO = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=40, emb_dim=32, n_layers=2, n_heads=4, max_position_embeddings=64)
LANGS = {"de": 0, "en": 1, "fr": 2}


def hf_lm(**changes) -> transformers.XLMWithLMHeadModel:
    torch.manual_seed(0)
    id2lang = {i: lang for lang, i in LANGS.items()}
    config = transformers.XLMConfig(**TINY, n_langs=3, lang2id=LANGS, id2lang=id2lang, **changes)
    model = transformers.XLMWithLMHeadModel(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    path = tmp_path / "hf"
    hf_lm().save_pretrained(path)
    return path


def logits_diff(a, b) -> float:
    """Max-abs difference of two LM models' logits on `sample_inputs()`."""
    with torch.no_grad():
        return (a(**sample_inputs()).logits - b(**sample_inputs()).logits).abs().max().item()


def sample_inputs() -> dict:
    ids = torch.randint(14, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "langs": torch.ones_like(ids), "lengths": torch.tensor([7, 4])}


def test_load_model_matches_transformers_on_a_new_configuration(hf_dir: Path) -> None:
    hf = transformers.XLMWithLMHeadModel.from_pretrained(hf_dir).eval()
    ours = xlmtrain.load_model(hf_dir)
    assert not ours.training
    with torch.no_grad():
        assert (hf(**sample_inputs()).logits - ours(**sample_inputs()).logits).abs().max() <= 1e-5


def test_round_trip_hf_xlmtrain_hf_is_lossless(hf_dir: Path, tmp_path: Path) -> None:
    assert convert_main([str(hf_dir), str(tmp_path / "native"), "--to", "xlmtrain"]) == 0
    assert convert_main([str(tmp_path / "native"), str(tmp_path / "back"), "--to", "hf"]) == 0
    original, back = load_file(hf_dir / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert set(original) == set(back)
    assert all(torch.equal(original[k], back[k]) for k in original)
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["architectures"] == ["XLMWithLMHeadModel"] and config["id2lang"]["2"] == "fr"


def test_transformers_loads_what_convert_writes(hf_dir: Path, tmp_path: Path) -> None:
    assert convert_main([str(hf_dir), str(tmp_path / "out"), "--to", "hf"]) == 0
    hf, info = transformers.XLMWithLMHeadModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not any(info.values()), info
    assert hf.pred_layer.proj.weight.data_ptr() == hf.transformer.embeddings.weight.data_ptr()
    with torch.no_grad():
        expected = load_model(hf_dir)(**sample_inputs()).logits
        assert (hf.eval()(**sample_inputs()).logits - expected).abs().max() <= 1e-5


def test_pytorch_model_bin_and_bare_xlm_model(tmp_path: Path) -> None:
    hf = hf_lm()
    (tmp_path / "bin").mkdir()
    hf.config.save_pretrained(tmp_path / "bin")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert logits_diff(load_model(tmp_path / "bin"), hf) <= 1e-5
    hf.transformer.save_pretrained(tmp_path / "base")  # keys without the transformer. prefix
    checkpoint = read_checkpoint(tmp_path / "base")
    assert "transformer.embeddings.weight" in checkpoint.state_dict


def test_head_from_lm_checkpoint_reports_fresh_parameters(hf_dir: Path, tmp_path: Path, caplog) -> None:
    model = load_model(hf_dir, head="sequence_classification", num_labels=3)
    assert model.sequence_summary.summary.weight.shape == (3, 32)
    assert "sequence_summary.summary.weight" in caplog.text and "pred_layer.proj.bias" in caplog.text
    save_model(model, tmp_path / "cls", format="hf")
    hf = transformers.XLMForSequenceClassification.from_pretrained(tmp_path / "cls").eval()
    with torch.no_grad():
        assert (hf(**sample_inputs()).logits - model(**sample_inputs()).logits).abs().max() <= 1e-5


def test_run_dir_and_native_dir(hf_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    hf_lm().save_pretrained(run / "model")
    save_model(load_model(run), tmp_path / "native")
    assert json.loads((tmp_path / "native" / "xlmtrain_model.json").read_text())["head"] == "lm"
    assert logits_diff(load_model(tmp_path / "native"), load_model(hf_dir)) == 0


# --- original XLM .pth -------------------------------------------------------------------------------------

WORDS = ["<s>", "</s>", "<pad>", "<unk>"] + [f"<special{i}>" for i in range(10)]
WORDS += ["hel@@", "lo", "world", "wor@@", "ld@@"] + [f"w{i}" for i in range(21)]


def original_checkpoint(**param_changes) -> tuple[dict, transformers.XLMWithLMHeadModel]:
    """An original-layout checkpoint (DDP `module.` keys, numpy/tensor params, dico dicts) and its HF twin."""
    hf = hf_lm()
    model = OrderedDict()
    for key, value in hf.state_dict().items():
        model["module." + key.removeprefix("transformer.")] = value.clone()
    params = {
        "n_words": 40,
        "emb_dim": 32,
        "n_layers": 2,
        "n_heads": 4,
        "dropout": np.float64(0.1),
        "attention_dropout": torch.tensor(0.1),
        "gelu_activation": True,
        "sinusoidal_embeddings": False,
        "n_langs": 3,
        "use_lang_emb": True,
        "lang2id": LANGS,
        "id2lang": {i: lang for lang, i in LANGS.items()},
        "bos_index": 0,
        "eos_index": 1,
        "pad_index": 2,
        "unk_index": 3,
        "mask_index": 5,
        "asm": False,
        "use_memory": False,
        "mask_scores": np.ones(40, dtype=np.float64),
        "pred_probs": torch.FloatTensor([0.8, 0.1, 0.1]),
        "word_mask": np.float64(0.8),
        "mlm_steps": [("en", None), ("en", "fr")],
        "command": "python train.py",
        "mono_dataset": {("en", "train"): "train.en.pth"},
    }
    params.update(param_changes)
    checkpoint = {
        "model": model,
        "params": params,
        "dico_id2word": dict(enumerate(WORDS)),
        "dico_word2id": {w: i for i, w in enumerate(WORDS)},
        "dico_counts": {w: 0 if i < 14 else 100 - i for i, w in enumerate(WORDS)},
    }
    return checkpoint, hf


def test_original_pth_imports_and_converts(tmp_path: Path) -> None:
    checkpoint, hf = original_checkpoint()
    torch.save(checkpoint, tmp_path / "mlm.pth")
    assert logits_diff(load_model(tmp_path / "mlm.pth"), hf) <= 1e-5
    (tmp_path / "codes").write_text("h e 10\nhe l 8\nl o</w> 5\n")
    out = tmp_path / "out"
    assert convert_main([str(tmp_path / "mlm.pth"), str(out), "--to", "hf", "--codes", str(tmp_path / "codes")]) == 0
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["<special1>"] == 5 and vocab["hel"] == 14 and vocab["lo</w>"] == 15 and vocab["wor"] == 17
    assert (out / "merges.txt").read_text() == "h e\nhe l\nl o</w>\n"
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tokenizer_config["id2lang"] == {"0": "de", "1": "en", "2": "fr"}
    assert tokenizer_config["mask_token"] == "<special1>"
    assert not any(transformers.XLMWithLMHeadModel.from_pretrained(out, output_loading_info=True)[1].values())
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)  # fastBPE "hel@@ lo" is HF "hel", "lo</w>"
    # XLM's </s> (1) starts the sentence, not <s> (0): the exported bos_token is </s>.
    assert tokenizer("hello")["input_ids"] == [1, 14, 15, 1] and tokenizer.mask_token_id == 5


def test_original_without_codes_says_merges_are_missing(tmp_path: Path, capsys) -> None:
    torch.save(original_checkpoint()[0], tmp_path / "mlm.pth")
    assert convert_main([str(tmp_path / "mlm.pth"), str(tmp_path / "out"), "--to", "xlmtrain"]) == 0
    printed = capsys.readouterr().out
    assert "merges.txt was not written" in printed and "--codes CODES" in printed
    assert (tmp_path / "out" / "vocab.json").is_file() and not (tmp_path / "out" / "merges.txt").exists()


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_forbidden_global_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    checkpoint, _ = original_checkpoint(evil=_Exploit(marker))
    torch.save(checkpoint, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth.*(posix|os)\.system"):
        load_model(tmp_path / "evil.pth")
    assert not marker.exists()


def test_original_memory_layers_are_refused(tmp_path: Path) -> None:
    torch.save(original_checkpoint(use_memory=True)[0], tmp_path / "pkm.pth")
    with pytest.raises(UnsupportedFeatureError, match=r"pkm\.pth.*use_memory.*not supported by xlmtrain"):
        load_model(tmp_path / "pkm.pth")
    checkpoint, _ = original_checkpoint()
    checkpoint["model"]["module.memories.4_in.keys"] = torch.zeros(2)
    torch.save(checkpoint, tmp_path / "keys.pth")
    with pytest.raises(UnsupportedFeatureError, match="memories.4_in.keys"):
        load_model(tmp_path / "keys.pth")


# --- bad input ---------------------------------------------------------------------------------------------


def _edit_weights(hf_dir: Path, edit) -> None:
    state = load_file(hf_dir / "model.safetensors")
    edit(state)
    save_file(state, hf_dir / "model.safetensors", metadata={"format": "pt"})


def _edit_config(hf_dir: Path, **changes) -> None:
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("transformer.layer_norm2.1.bias"), r"missing \['transformer.layer_norm2.1.bias'\]"),
        (
            lambda s: s.update({"transformer.extra.weight": torch.zeros(1)}),
            r"unexpected \['transformer.extra.weight'\]",
        ),
        (
            lambda s: s.update({"transformer.ffns.0.lin1.bias": torch.zeros(3)}),
            r"transformer.ffns.0.lin1.bias: checkpoint \(3,\) vs model \(128,\)",
        ),
        (lambda s: s.update({"pred_layer.proj.bias": torch.zeros(2)}), r"pred_layer.proj.bias"),
    ],
)
def test_bad_weights_name_file_and_key(hf_dir: Path, edit, message: str) -> None:
    _edit_weights(hf_dir, edit)
    with pytest.raises(CheckpointError, match=r"hf.*" + message):
        load_model(hf_dir)


def test_vocab_mismatch_and_unsupported_config(hf_dir: Path) -> None:
    _edit_config(hf_dir, vocab_size=41)
    with pytest.raises(CheckpointError, match=r"vocabulary size mismatch: config vocab_size=41 .* 40 rows"):
        load_model(hf_dir)
    _edit_config(hf_dir, vocab_size=40, asm=True)
    with pytest.raises(UnsupportedFeatureError, match=r"config.json: adaptive softmax \(key 'asm'=true\) is not"):
        load_model(hf_dir)


def test_unknown_format_and_cli_exit_code(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="empty: unknown checkpoint format"):
        load_model(tmp_path / "empty")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable torch checkpoint"):
        load_model(tmp_path / "junk.pth")
    result = subprocess.run(
        [sys.executable, "-m", "xlmtrain.convert", str(tmp_path / "empty"), str(tmp_path / "o"), "--to", "hf"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2 and "unknown checkpoint format" in result.stderr


def test_build_model_rejects_unknown_head() -> None:
    with pytest.raises(ValueError, match="unknown head 'mlm'"):
        build_model(XLMConfig(**TINY), "mlm")
