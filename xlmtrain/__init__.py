"""xlmtrain: pretrain and fine-tune XLM cross-lingual language models on PyTorch + Lightning + Hydra.

Public API (imported lazily so that `import xlmtrain` stays cheap):

- `xlmtrain.load_model(path, head="lm")`: any supported checkpoint -> model in eval mode.
- `xlmtrain.load_tokenizer(path)`: a preprocessed data dir, a model dir or a run dir -> `XLMTokenizer`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_model", "load_tokenizer", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from xlmtrain.interop.load import load_model

        return load_model
    if name == "load_tokenizer":
        from xlmtrain.data.tokenizer import load_tokenizer

        return load_tokenizer
    raise AttributeError(f"module 'xlmtrain' has no attribute {name!r}")
