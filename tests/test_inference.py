"""Fill-mask, sentence embeddings, bitext retrieval: library functions and CLIs on tiny models saved here."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from xlmtrain import embed as embed_cli
from xlmtrain import fill_mask as fill_mask_cli
from xlmtrain import retrieval as retrieval_cli
from xlmtrain.data.dictionary import N_SPECIALS
from xlmtrain.data.preprocessed import PreprocessedData
from xlmtrain.inference import (
    LineCountMismatchError,
    NoMaskError,
    UnknownLanguageError,
    best_matches,
    embed_file,
    embed_sentences,
    evaluate_retrieval,
    fill_mask,
    load_inference_model,
    retrieval_p_at_1,
)
from xlmtrain.interop.load import save_model
from xlmtrain.model.config import XLMConfig
from xlmtrain.model.heads import XLMWithLMHead

MAX_POS = 24  # small position table, so that truncation is easy to trigger


def _save_tiny(prep: Path, out: Path, *, use_lang_emb: bool, special_bias: float | None = None) -> Path:
    data = PreprocessedData(prep)
    torch.manual_seed(0)
    config = XLMConfig(
        vocab_size=len(data.dictionary),
        emb_dim=32,
        n_layers=2,
        n_heads=4,
        n_langs=2,
        use_lang_emb=use_lang_emb,
        lang2id=data.lang2id,
        id2lang={i: lang for lang, i in data.lang2id.items()},
        max_position_embeddings=MAX_POS,
    )
    model = XLMWithLMHead(config)
    if special_bias is not None:
        with torch.no_grad():
            model.pred_layer.proj.bias[:N_SPECIALS] = special_bias
    save_model(model, out, format="hf")
    data.tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def model_dir(synthetic_prep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny(synthetic_prep, tmp_path_factory.mktemp("model") / "lm", use_lang_emb=True)


@pytest.fixture(scope="module")
def no_lang_model_dir(synthetic_prep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny(synthetic_prep, tmp_path_factory.mktemp("model") / "nolang", use_lang_emb=False)


@pytest.fixture(scope="module")
def bitext(synthetic_prep: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """20 aligned io/vo lines of the raw synthetic corpus."""
    raw = synthetic_prep.parent.parent / "raw"
    out = tmp_path_factory.mktemp("bitext")
    paths = []
    for lang in ("io", "vo"):
        lines = (raw / f"io-vo.{lang}").read_text(encoding="utf-8").splitlines()[:20]
        paths.append(out / f"bitext.{lang}")
        paths[-1].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths[0], paths[1]


def _direct_probs(model, ids: list[int], lang_id: int | None) -> torch.Tensor:
    """Softmax over the vocabulary at every position of one unpadded sequence, straight from the model."""
    x = torch.tensor([ids])
    langs = torch.full_like(x, lang_id) if lang_id is not None else None
    with torch.no_grad():
        return model(x, langs=langs).logits[0].softmax(-1)  # (slen, vocab)


# ---------------------------------------------------------------- fill-mask


def test_fill_mask_matches_a_direct_forward(model_dir: Path) -> None:
    m = load_inference_model(model_dir)
    tok, eos, mask = m.tokenizer, m.dictionary.eos_index, m.dictionary.mask_index
    left, right = "tage", "dega ."
    ids = [eos, *tok.encode(left, "io"), mask, *tok.encode(right, "io"), eos]
    column = ids.index(mask)
    for lang in ("io", "vo"):
        probs = _direct_probs(m.model, ids, m.languages[lang])[column]
        words = probs.clone()
        words[:N_SPECIALS] = 0
        expected = words.topk(3)
        (prediction,) = fill_mask(m, f"{left} <mask> {right}", lang, top_k=3)
        got = prediction.completions
        # The lang ids reach the model: io and vo give different probabilities for the same ids (io and vo
        # Moses rules are the same default rules, so the ids are identical).
        assert [c.token_id for c in got] == expected.indices.tolist()
        torch.testing.assert_close(torch.tensor([c.probability for c in got]), expected.values, rtol=1e-5, atol=1e-7)
        assert got[0].token == m.dictionary[got[0].token_id]
        assert "<mask>" not in got[0].sequence and got[0].sequence.startswith("tage")
    io_p = fill_mask(m, "tage <mask> dega .", "io", top_k=1)[0].completions[0].probability
    vo_p = fill_mask(m, "tage <mask> dega .", "vo", top_k=1)[0].completions[0].probability
    assert io_p != pytest.approx(vo_p, rel=1e-6)
    # <special1> is the same mask as <mask>.
    assert fill_mask(m, "tage <special1> dega .", "io", top_k=3) == fill_mask(m, "tage <mask> dega .", "io", top_k=3)


def test_transformers_fill_mask_pipeline_equals_xlmtrain_fill_mask(synthetic_prep: Path, tmp_path: Path) -> None:
    # The exported tokenizer starts a sentence with </s>, as XLM trained (its bos_token is </s>): transformers'
    # pipeline then feeds the same ids and gives the same candidates and scores. (A model with language
    # embeddings also needs its `langs`, which the pipeline cannot pass: hence the model without them.)
    # xlmtrain never proposes special tokens, the pipeline does: this untrained model gives them no mass (as a
    # trained one), so both rank the same words; the scores are full-vocabulary softmax on both sides.
    from transformers import pipeline

    model_dir = _save_tiny(synthetic_prep, tmp_path / "lm", use_lang_emb=False, special_bias=-30.0)
    pipe = pipeline("fill-mask", model=str(model_dir), tokenizer=str(model_dir), top_k=5)
    for text in ("tage <mask> dega .", "solu pinu <mask> ruge ."):
        theirs = pipe(text.replace("<mask>", "<special1>"))
        (ours,) = fill_mask(load_inference_model(model_dir), text, "io", top_k=5)
        assert [t["token"] for t in theirs] == [c.token_id for c in ours.completions]
        torch.testing.assert_close(
            torch.tensor([t["score"] for t in theirs]), torch.tensor([c.probability for c in ours.completions]),
            rtol=1e-5, atol=1e-7,
        )  # fmt: skip


def test_fill_mask_several_masks_in_one_pass(model_dir: Path) -> None:
    m = load_inference_model(model_dir)
    eos, mask = m.dictionary.eos_index, m.dictionary.mask_index
    ids = [eos, mask, *m.tokenizer.encode("ne reven", "io"), mask, *m.tokenizer.encode(".", "io"), eos]
    probs = _direct_probs(m.model, ids, m.languages["io"])
    probs[:, :N_SPECIALS] = 0
    predictions = fill_mask(m, "<mask> ne reven <mask> .", "io", top_k=2)
    assert [p.index for p in predictions] == [0, 1]
    for p, column in zip(predictions, [j for j, i in enumerate(ids) if i == mask]):
        assert p.completions[0].token_id == int(probs[column].argmax())
        assert p.completions[0].sequence.count("<mask>") == 1  # the other mask is left in place


def test_fill_mask_bad_input(model_dir: Path) -> None:
    m = load_inference_model(model_dir)
    with pytest.raises(NoMaskError, match="no <mask>"):
        fill_mask(m, "tage dega .", "io")
    with pytest.raises(UnknownLanguageError, match="unknown language 'fr'.*io, vo"):
        fill_mask(m, "tage <mask> .", "fr")
    with pytest.raises(ValueError, match="beyond the model's 24 positions"):
        fill_mask(m, "tage " * 30 + "<mask> .", "io")


def _printed_completions(out: str) -> list[tuple[float, str]]:
    """`(probability, token)` of every `   k. P  TOKEN  SEQUENCE` line the fill-mask CLI printed."""
    return [(float(m[1]), m[2]) for m in re.finditer(r"^\s+\d+\. ([0-9.]+)\s+(\S+)", out, flags=re.M)]


def _direct_top(m, text_ids: list[int], k: int) -> list[tuple[float, str]]:
    """Top-k words (specials excluded) at the mask of `</s> ids </s>`, from a forward of the model itself."""
    ids = [m.dictionary.eos_index, *text_ids, m.dictionary.eos_index]
    probs = _direct_probs(m.model, ids, m.languages["io"])[ids.index(m.dictionary.mask_index)]
    probs[:N_SPECIALS] = 0
    top = probs.topk(k)
    return [(p, m.dictionary[i]) for p, i in zip(top.values.tolist(), top.indices.tolist())]


def _io_ids(m, left: str, right: str) -> list[int]:
    return [*m.tokenizer.encode(left, "io"), m.dictionary.mask_index, *m.tokenizer.encode(right, "io")]


def test_fill_mask_cli(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = load_inference_model(model_dir)
    batch = tmp_path / "batch.txt"
    batch.write_text("tage <mask> dega .\n\nlodas <mask> reven .\n", encoding="utf-8")
    assert fill_mask_cli.main([str(model_dir), "--lang", "io", "--top-k", "2", "--input", str(batch)]) == 0
    out = capsys.readouterr().out
    assert "lodas <mask> reven ." in out
    # The printed words and probabilities are the model's own top 2 at each mask (4 decimals printed).
    expected = _direct_top(m, _io_ids(m, "tage", "dega ."), 2) + _direct_top(m, _io_ids(m, "lodas", "reven ."), 2)
    printed = _printed_completions(out)
    assert [t for _, t in printed] == [t for _, t in expected]
    assert [p for p, _ in printed] == pytest.approx([p for p, _ in expected], abs=5e-5)
    batch.write_text("tage <mask> dega .\nno mask here\n", encoding="utf-8")
    assert fill_mask_cli.main([str(model_dir), "--lang", "io", "--input", str(batch)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {batch}:2: no <mask> (or <special1>) in 'no mask here'"
    assert fill_mask_cli.main([str(model_dir), "tage <mask> .", "--lang", "xx"]) == 2
    assert "unknown language 'xx'" in capsys.readouterr().err


def test_fill_mask_module_entry_point(model_dir: Path) -> None:
    """`python -m xlmtrain.fill_mask` prints the model's own top prediction with its probability."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xlmtrain.fill_mask",
            str(model_dir),
            "tage <mask> dega .",
            "--lang",
            "io",
            "--top-k",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    m = load_inference_model(model_dir)
    ((p, token),) = _printed_completions(proc.stdout)
    ((p_expected, token_expected),) = _direct_top(m, _io_ids(m, "tage", "dega ."), 1)
    assert token == token_expected and p == pytest.approx(p_expected, abs=5e-5)


# ---------------------------------------------------------------- embeddings


@pytest.mark.parametrize("pooling,layer", [("first", -1), ("mean", -1), ("first", 0), ("mean", 1)])
def test_embeddings_match_unbatched_forward(model_dir: Path, pooling: str, layer: int) -> None:
    m = load_inference_model(model_dir)
    lines = ["tage daguar dega .", "lodas .", "fupu sanas ne fugon rabas dega tage .", "lodas ne reven fara ."]
    vectors, stats = embed_sentences(m, lines, "io", pooling=pooling, layer=layer, batch_size=3)
    assert vectors.shape == (4, 32) and vectors.dtype == np.float32
    assert (stats.lines, stats.empty, stats.truncated) == (4, 0, 0)
    for row, line in enumerate(lines):  # each alone, unpadded: padding and sorting must not change a row
        x = torch.tensor([[1, *m.tokenizer.encode(line, "io"), 1]])
        with torch.no_grad():
            hidden = m.model.transformer.encode(
                x, langs=torch.full_like(x, m.languages["io"]), output_hidden_states=True
            )
        h = hidden.hidden_states[layer][0]  # (slen, dim)
        expected = h[0] if pooling == "first" else h.mean(0)
        np.testing.assert_allclose(vectors[row], expected.numpy(), rtol=1e-4, atol=1e-5)


def test_embed_file_streams_chunks_counts_empty_and_truncated(model_dir: Path, tmp_path: Path) -> None:
    m = load_inference_model(model_dir)
    lines = ["tage daguar dega .", "", "lodas .", "tage " * 40 + ".", "fupu sanas .", "lodas ne reven fara ."]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines), encoding="utf-8")  # no final newline: the last line still counts
    out = tmp_path / "out.npy"
    stats = embed_file(m, src, "io", out, batch_size=2, chunk_lines=4, progress=False)
    assert (stats.lines, stats.empty, stats.truncated) == (6, 1, 1)
    expected, _ = embed_sentences(m, lines, "io")
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-4, atol=1e-5)
    # The truncated line is the first MAX_POS - 2 pieces between two </s>.
    cut = m.encode(lines[3], "io")
    assert cut.truncated and len(cut.ids) == MAX_POS and cut.ids[-1] == 1


def test_embed_cli(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.txt"
    src.write_text("tage daguar dega .\nlodas .\n", encoding="utf-8")
    out = tmp_path / "e.npy"
    args = [
        str(model_dir),
        "--input",
        str(src),
        "--lang",
        "io",
        "--output",
        str(out),
        "--pooling",
        "mean",
        "--no-progress",
    ]
    assert embed_cli.main(args) == 0
    assert "wrote 2 x 32 embeddings" in capsys.readouterr().out
    args.append("--overwrite")  # the output exists now (tests/test_cli_outputs.py: refused without it)
    # The vectors are the model's: mean of the last block over `</s> ids </s>` of each line, with io's lang id;
    # and --layer picks the hidden state (1 = the first block's output).
    m = load_inference_model(model_dir)
    for layer in (None, 1):
        if layer is not None:
            assert embed_cli.main([*args, "--layer", str(layer)]) == 0
        for row, line in enumerate(["tage daguar dega .", "lodas ."]):
            x = torch.tensor([[1, *m.tokenizer.encode(line, "io"), 1]])
            with torch.no_grad():
                hidden = m.model.transformer.encode(
                    x, langs=torch.full_like(x, m.languages["io"]), output_hidden_states=True
                )
            expected = hidden.hidden_states[-1 if layer is None else layer][0].mean(0)
            np.testing.assert_allclose(np.load(out)[row], expected.numpy(), rtol=1e-4, atol=1e-5)
    capsys.readouterr()
    assert embed_cli.main([*args, "--layer", "7"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "error: layer 7 out of range for a 2-layer model (0 = embeddings, -1 = last block)"
    )
    src.write_bytes(b"ok\n\xff\xfe\n")
    assert embed_cli.main(args) == 2
    assert f"{src}:2: not valid UTF-8" in capsys.readouterr().err


def test_model_without_language_embeddings_warns_once(
    no_lang_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m = load_inference_model(no_lang_model_dir)
    with caplog.at_level(logging.WARNING):
        a, _ = embed_sentences(m, ["tage dega ."], "io")
        b, _ = embed_sentences(m, ["tage dega ."], "vo")
        fill_mask(m, "tage <mask> .", "io")
    assert sum("has no language embeddings" in r.getMessage() for r in caplog.records) == 1
    np.testing.assert_array_equal(a, b)  # the language changes nothing but (here identical) Moses rules
    with pytest.raises(UnknownLanguageError):
        m.lang_id("de")


# ---------------------------------------------------------------- retrieval


def test_retrieval_hand_checked_cosine_vs_margin() -> None:
    # Unit vectors at angles (degrees). Targets: t0 = 45 (a hub between the others), t1 = 0, t2 = 90.
    # Sources: s0 = 45 (-> t0), s1 = 25 (-> t1), s2 = 65 (-> t2).
    # Cosine, src -> tgt: s1 is 20 deg from t0 but 25 from t1, s2 likewise: both pick the hub t0: P@1 = 1/3.
    # tgt -> src: t0 -> s0 (0 deg), t1 -> s1 (25), t2 -> s2 (25): P@1 = 1.
    # Margin with k = 1: r(s0) = 1, r(s1) = r(s2) = cos 20 = .940; r(t0) = 1, r(t1) = r(t2) = cos 25 = .906.
    # s1: t0 -> .940 / ((.940 + 1) / 2) = .969, t1 -> .906 / ((.940 + .906) / 2) = .982: t1 wins. P@1 = 1.
    angles = np.radians
    src = np.stack([np.cos(angles([45, 25, 65])), np.sin(angles([45, 25, 65]))], 1)
    tgt = np.stack([np.cos(angles([45, 0, 90])), np.sin(angles([45, 0, 90]))], 1) * 3.0  # scale must not matter
    s2t, t2s = best_matches(src, tgt, scoring="cosine")
    assert s2t.tolist() == [0, 0, 0] and t2s.tolist() == [0, 1, 2]
    assert retrieval_p_at_1(src, tgt, scoring="cosine") == pytest.approx((100 / 3, 100.0))
    assert retrieval_p_at_1(src, tgt, scoring="margin", k=1) == (100.0, 100.0)
    with pytest.raises(LineCountMismatchError):
        retrieval_p_at_1(src, tgt[:2])
    # Centring removes an offset shared by one side's rows. With (0, 10) added, every target points almost
    # straight up and t1 = (1, 10) leans furthest towards the sources (all at 25..65 degrees): raw cosine
    # sends every source to t1. Centring both sides restores the geometry: s_i -> t_i.
    shifted = tgt / 3.0 + np.array([0.0, 10.0])
    assert best_matches(src, shifted)[0].tolist() == [1, 1, 1]
    assert best_matches(src, shifted, center=True)[0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown scoring"):
        best_matches(src, tgt, scoring="dot")


def test_evaluate_retrieval_and_cli(model_dir: Path, bitext: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    import json

    m = load_inference_model(model_dir)
    src, tgt = bitext
    src_lines, tgt_lines = src.read_text().splitlines(), tgt.read_text().splitlines()
    result = evaluate_retrieval(m, src_lines, tgt_lines, "io", "vo", scoring="margin", pooling="first", center=False)
    a, _ = embed_sentences(m, src_lines, "io")
    b, _ = embed_sentences(m, tgt_lines, "vo")
    assert (result.p_at_1_src2tgt, result.p_at_1_tgt2src) == retrieval_p_at_1(a, b, scoring="margin")
    assert result.sentences == 20 and result.chance == 5.0

    out = tmp_path / "r.json"
    argv = [
        str(model_dir),
        "--src",
        str(src),
        "--tgt",
        str(tgt),
        "--src-lang",
        "io",
        "--tgt-lang",
        "vo",
        "--scoring",
        "margin",
        "--pooling",
        "first",
        "--no-center",
    ]
    assert retrieval_cli.main([*argv, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "io -> vo" in printed and "vo -> io" in printed and "chance" in printed
    saved = json.loads(out.read_text())
    assert saved["p_at_1_src2tgt"] == result.p_at_1_src2tgt and saved["sentences"] == 20

    short = tmp_path / "short.vo"
    short.write_text("\n".join(tgt_lines[:7]) + "\n")
    argv[4] = str(short)
    assert retrieval_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {src} has 20 lines but {short} has 7: aligned files need equal counts"


def test_original_pth_with_its_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_interop import original_checkpoint

    checkpoint, _ = original_checkpoint()
    torch.save(checkpoint, tmp_path / "mlm.pth")
    codes = tmp_path / "codes"
    codes.write_text("h e 10\nhe l 8\nl o</w> 5\n")
    m = load_inference_model(tmp_path / "mlm.pth", codes=codes)
    assert m.encode("Hello", "en").ids == [1, 14, 15, 1]  # lowercased, then fastBPE "hel@@ lo"
    probs = _direct_probs(m.model, [1, 14, 15, 5, 1], m.languages["en"])[3]
    probs[:N_SPECIALS] = 0
    assert fill_mask(m, "hello <mask>", "en", top_k=1)[0].completions[0].token_id == int(probs.argmax())
    assert fill_mask_cli.main([str(tmp_path / "mlm.pth"), "hello <mask>", "--lang", "en", "--codes", str(codes)]) == 0
    assert fill_mask_cli.main([str(tmp_path / "mlm.pth"), "hello <mask>", "--lang", "en"]) == 2
    assert "needs its fastBPE codes (--codes FILE)" in capsys.readouterr().err
