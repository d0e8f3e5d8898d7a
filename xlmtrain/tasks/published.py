"""Published XNLI results of XLM, transcribed for side-by-side reports (`python -m xlmtrain.report`).

Source: Lample & Conneau 2019, "Cross-lingual Language Model Pretraining" (arXiv 1901.07291), Table 1,
zero-shot cross-lingual classification ("Machine translation baselines" excluded): XNLI test accuracy (%)
after fine-tuning on English MultiNLI only. The XLM README (facebookresearch/XLM, commit cd281d3) repeats the
en/es/de/ar/zh/ur columns with the same values. The authors selected hyper-parameters per language on that
language's dev set (XLM issue #110), i.e. this repository's `select=target_dev` rule.
"""

from __future__ import annotations

XNLI_LANGS = ("en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th", "zh", "hi", "sw", "ur")
"""The paper's column order."""

_MLM = (83.2, 76.5, 76.3, 74.2, 73.1, 74.0, 73.1, 67.8, 68.5, 71.2, 69.2, 71.9, 65.7, 64.6, 63.4)
_MLM_TLM = (85.0, 78.7, 78.9, 77.8, 76.6, 77.4, 75.3, 72.5, 73.1, 76.1, 73.2, 76.5, 69.6, 68.4, 67.3)
PUBLISHED_XNLI: dict[str, dict[str, float]] = {
    "XLM (MLM)": dict(zip(XNLI_LANGS, _MLM, strict=True)),
    "XLM (MLM+TLM)": dict(zip(XNLI_LANGS, _MLM_TLM, strict=True)),
}
"""Row name -> language -> test accuracy (%)."""

PUBLISHED_XNLI_AVG = {"XLM (MLM)": 71.5, "XLM (MLM+TLM)": 75.1}
"""The paper's printed averages (the mean of the 15 columns, rounded)."""
