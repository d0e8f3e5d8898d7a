"""Commands never destroy their inputs: embed and convert refuse to write onto an input or over an existing
output (unless --overwrite), write atomically, and convert refuses a tokenizer of another vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_inference import _save_tiny
from xlmtrain import embed as embed_cli
from xlmtrain.convert import main as convert_main
from xlmtrain.training.outputs import OutputError, atomic_output_dir, check_output


@pytest.fixture(scope="module")
def model_dir(synthetic_prep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny(synthetic_prep, tmp_path_factory.mktemp("model") / "lm", use_lang_emb=True)


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_embed_refuses_its_input_and_an_existing_output(model_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    text = tmp_path / "same.fr"
    text.write_text("tage daguar dega .\nlodas .\n", encoding="utf-8")
    before = text.read_bytes()
    base = [str(model_dir), "--lang", "io", "--no-progress", "--input", str(text)]
    assert embed_cli.main([*base, "--output", str(text)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --output {text} is the input {text}: refusing to write over it"
    assert text.read_bytes() == before
    link = tmp_path / "link.npy"
    link.symlink_to(text)
    assert embed_cli.main([*base, "--output", str(link), "--overwrite"]) == 2  # the same file under another name
    assert text.read_bytes() == before
    assert embed_cli.main([*base, "--output", str(model_dir / "e.npy")]) == 0  # next to the model is fine
    (model_dir / "e.npy").unlink()

    out = tmp_path / "e.npy"
    out.write_bytes(b"precious")
    assert embed_cli.main([*base, "--output", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert embed_cli.main([*base, "--output", str(out), "--overwrite"]) == 0
    assert np.load(out).shape == (2, 32)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_a_failed_embed_leaves_the_previous_output(model_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "in.txt"
    text.write_bytes(b"ok\n\xff\n")  # fails on line 2, after the output was opened
    out = tmp_path / "e.npy"
    out.write_bytes(b"previous")
    args = [str(model_dir), "--lang", "io", "--no-progress", "--input", str(text), "--output", str(out), "--overwrite"]
    assert embed_cli.main(args) == 2
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] and not any(".tmp-" in p.name for p in tmp_path.iterdir())


def test_convert_refuses_its_source_and_an_existing_destination(model_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    before = _tree(model_dir)
    assert convert_main([str(model_dir), str(model_dir), "--to", "xlmtrain", "--overwrite"]) == 2
    assert f"DST {model_dir} is the input {model_dir}" in capsys.readouterr().err
    assert convert_main([str(model_dir), str(model_dir.parent), "--to", "xlmtrain", "--overwrite"]) == 2
    assert "contains the input" in capsys.readouterr().err
    assert _tree(model_dir) == before

    dst = tmp_path / "native"
    assert convert_main([str(model_dir), str(dst), "--to", "xlmtrain"]) == 0
    first = _tree(dst)
    assert "xlmtrain_model.json" in first and "vocab.json" in first
    assert convert_main([str(model_dir), str(dst), "--to", "hf"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert _tree(dst) == first
    assert convert_main([str(model_dir), str(dst), "--to", "hf", "--overwrite"]) == 0
    assert "config.json" in _tree(dst) and "xlmtrain_model.json" not in _tree(dst)  # replaced as a whole


def test_convert_refuses_a_tokenizer_of_another_vocabulary(model_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    src = tmp_path / "mixed"
    src.mkdir()
    for name, data in _tree(model_dir).items():
        (src / name).write_bytes(data)
    vocab = json.loads((src / "vocab.json").read_text())
    vocab.pop(next(reversed(vocab)))
    (src / "vocab.json").write_text(json.dumps(vocab))
    assert convert_main([str(src), str(tmp_path / "out"), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer has" in err and "but the model's vocab_size is" in err
    assert not (tmp_path / "out").exists()


def test_atomic_output_dir_keeps_the_old_one_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dst = tmp_path / "d"
    dst.mkdir()
    (dst / "old").write_text("1")
    with pytest.raises(RuntimeError), atomic_output_dir(dst) as out:
        (out / "new").write_text("2")
        raise RuntimeError("crash")
    assert _tree(dst) == {"old": b"1"} and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    with pytest.raises(OutputError, match="contains the input"):
        check_output(tmp_path, [dst / "old"], overwrite=True)
    # The move into place itself fails (after the old output was moved aside): the old one comes back.
    import os

    real_replace, calls = os.replace, []

    def failing_second_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_second_replace)
    with pytest.raises(OSError, match="disk full"), atomic_output_dir(dst) as out:
        (out / "new").write_text("2")
    assert _tree(dst) == {"old": b"1"} and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
