"""Using a trained model: fill-mask, sentence embeddings, bitext retrieval (and its pretraining callback).

    from xlmtrain.inference import load_inference_model, fill_mask, embed_sentences, evaluate_retrieval

    model = load_inference_model("runs/tlm")        # run dir, transformers/xlmtrain dir, or .pth + codes
    fill_mask(model, "Bonjour, je suis un modèle <mask>.", lang="fr", top_k=5)   # -> [MaskPrediction]
    vectors, stats = embed_sentences(model, ["Bonjour."], lang="fr", pooling="first", layer=-1)
    evaluate_retrieval(model, en_lines, fr_lines, "en", "fr", scoring="margin").table()

The command-line equivalents are `python -m xlmtrain.fill_mask`, `python -m xlmtrain.embed` and
`python -m xlmtrain.retrieval`; `callbacks=retrieval` logs P@1 during pretraining (`RetrievalCallback`).
"""

from xlmtrain.inference.embeddings import EmbedStats, embed_file, embed_ids, embed_sentences
from xlmtrain.inference.loading import InferenceModel, UnknownLanguageError, load_inference_model
from xlmtrain.inference.masked_lm import Completion, MaskPrediction, NoMaskError, fill_mask, fill_masks
from xlmtrain.inference.retrieval import (
    LineCountMismatchError,
    RetrievalResult,
    best_matches,
    evaluate_retrieval,
    retrieval_p_at_1,
)

__all__ = [
    "Completion",
    "EmbedStats",
    "InferenceModel",
    "LineCountMismatchError",
    "MaskPrediction",
    "NoMaskError",
    "RetrievalResult",
    "UnknownLanguageError",
    "best_matches",
    "embed_file",
    "embed_ids",
    "embed_sentences",
    "evaluate_retrieval",
    "fill_mask",
    "fill_masks",
    "load_inference_model",
    "retrieval_p_at_1",
]
