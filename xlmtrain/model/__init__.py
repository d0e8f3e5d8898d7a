"""The XLM model core: plain PyTorch, no Lightning, Hydra or data imports."""

from xlmtrain.model.config import ConfigError, UnsupportedFeatureError, XLMConfig
from xlmtrain.model.heads import (
    HEADS,
    XLMForMultipleChoice,
    XLMForQuestionAnswering,
    XLMForQuestionAnsweringSimple,
    XLMForSequenceClassification,
    XLMForTokenClassification,
    XLMHeadModel,
    XLMWithLMHead,
    build_model,
)
from xlmtrain.model.transformer import XLMTransformer

__all__ = [
    "HEADS",
    "ConfigError",
    "UnsupportedFeatureError",
    "XLMConfig",
    "XLMForMultipleChoice",
    "XLMForQuestionAnswering",
    "XLMForQuestionAnsweringSimple",
    "XLMForSequenceClassification",
    "XLMForTokenClassification",
    "XLMHeadModel",
    "XLMTransformer",
    "XLMWithLMHead",
    "build_model",
]
