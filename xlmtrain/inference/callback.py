"""`RetrievalCallback`: bitext retrieval P@1 on held-out parallel data at every validation.

Enabled with `python -m xlmtrain ... callbacks=retrieval` (`conf/callbacks/retrieval.yaml`). After each
validation epoch it embeds the first `n_sentences` aligned sentences of every parallel pair of the
data's `split` (already tokenised and binarised, so no text round-trip) with the model being trained,
and logs `valid_<l1>-<l2>_retrieval_p@1` (l1 -> l2) and `valid_<l2>-<l1>_retrieval_p@1` (l2 -> l1), in
percent, next to the other validation metrics. The data is given to it explicitly: the pretraining job
calls `use_data(data)` with the run's `PreprocessedData` before training.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl

from xlmtrain.data.preprocessed import PreprocessedData
from xlmtrain.inference.embeddings import POOLINGS, Pooling, check_pooling, embed_ids
from xlmtrain.inference.loading import wrap_sentence
from xlmtrain.inference.retrieval import SCORINGS, Scoring, retrieval_p_at_1


class RetrievalCallback(pl.Callback):
    """Log bitext retrieval P@1 of the model under training on a held-out slice of each parallel pair."""

    def __init__(
        self,
        pairs: Sequence[str] | None = None,
        n_sentences: int = 500,
        split: str = "valid",
        scoring: Scoring = "cosine",
        pooling: Pooling = "first",
        layer: int = -1,
        center: bool = False,
        batch_size: int = 64,
    ) -> None:
        """
        Args:
            pairs: pairs to evaluate as `l1-l2` (either order); None = every parallel pair of the data.
            n_sentences: the first this many aligned sentences of `split` (all of them if fewer).
            split: `valid` or `test`.
            scoring: `cosine` or `margin` (see `xlmtrain.inference.retrieval`).
            pooling, layer: sentence embedding (see `xlmtrain.inference.embeddings`).
            center: subtract each side's mean embedding before scoring.
            batch_size: sentences per forward pass.

        Raises ValueError on a malformed pair, an unknown scoring or pooling, or `n_sentences < 1`.
        """
        if scoring not in SCORINGS:
            raise ValueError(f"retrieval callback: unknown scoring {scoring!r}; choose one of {', '.join(SCORINGS)}")
        if pooling not in POOLINGS:
            raise ValueError(f"retrieval callback: unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if n_sentences < 1:
            raise ValueError(f"retrieval callback: n_sentences must be >= 1, got {n_sentences}")
        for pair in pairs or ():
            if len(str(pair).split("-")) != 2:
                raise ValueError(f"retrieval callback: pair {pair!r} is not of the form l1-l2")
        self.pairs = [str(p) for p in pairs] if pairs else None
        self.n_sentences, self.split = n_sentences, split
        self.scoring, self.pooling, self.layer, self.center, self.batch_size = (
            scoring,
            pooling,
            layer,
            center,
            batch_size,
        )
        self.data: PreprocessedData | None = None

    def use_data(self, data: PreprocessedData) -> None:
        """The preprocessed data whose parallel `split` is embedded (the run's own data)."""
        self.data = data

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Embed each pair's slice with `pl_module.model` and log P@1 in both directions."""
        if trainer.sanity_checking:
            return
        data = self.data
        if data is None:
            raise RuntimeError("callbacks=retrieval: no data given (the pretraining job calls use_data(data))")
        model = pl_module.model
        config = model.config
        check_pooling(self.pooling, self.layer, config.n_layers)
        for pair in self.pairs or data.pairs:
            l1, l2 = pair.split("-")
            sides = []
            for lang, corpus in zip((l1, l2), data.parallel(self.split, l1, l2)):
                n = min(self.n_sentences, len(corpus))
                lines = [
                    wrap_sentence(corpus[i].tolist(), data.dictionary.eos_index, config.max_position_embeddings).ids
                    for i in range(n)
                ]
                sides.append(
                    embed_ids(
                        model,
                        lines,
                        lang_id=data.lang2id[lang],
                        pooling=self.pooling,
                        layer=self.layer,
                        batch_size=self.batch_size,
                    )
                )
            p12, p21 = retrieval_p_at_1(sides[0], sides[1], scoring=self.scoring, center=self.center)
            # Every rank computes the same numbers on the same slice; sync_dist only averages equal values.
            pl_module.log(f"valid_{l1}-{l2}_retrieval_p@1", p12, sync_dist=True)
            pl_module.log(f"valid_{l2}-{l1}_retrieval_p@1", p21, sync_dist=True)
