"""A synthetic cross-lingual NLI task in the bundled artificial languages (`xlmtrain.data.synthetic`).

Labels come from the semantics of `Meaning`; premises are affirmative:
- entailment: the premise with some adjectives dropped (a more general statement; possibly identical);
- contradiction: that generalisation, negated;
- neutral: the generalisation with one thing changed (another verb, subject or object, or an added
  adjective), negated with probability 0.3 (so that negation alone does not give the label away).

Valid and test pairs are the same meanings rendered in every language (as XNLI's translated dev/test), so
the per-language accuracies compare like with like.
"""

from __future__ import annotations

import random
from dataclasses import replace

from xlmtrain.data.synthetic import Meaning, render, sample_meaning
from xlmtrain.tasks.readers import NLI_LABELS, NLIExample, Split

CONTRADICTION, NEUTRAL, ENTAILMENT = (NLI_LABELS.index(n) for n in ("contradiction", "neutral", "entailment"))


def _generalise(meaning: Meaning, rng: random.Random) -> Meaning:
    """Drop each adjective with probability 1/2: the premise entails the result."""
    return replace(
        meaning,
        subject_adj=meaning.subject_adj if rng.random() < 0.5 else None,
        obj_adj=meaning.obj_adj if rng.random() < 0.5 else None,
    )


def _change(meaning: Meaning, premise: Meaning, rng: random.Random, shared_names: int) -> Meaning:
    """`meaning` (a generalisation of `premise`) with one change the premise neither entails nor
    contradicts; alternatives are drawn with `sample_meaning`, so this follows the lexicon of
    `xlmtrain.data.synthetic` whatever its size."""
    while True:
        other = sample_meaning(rng, shared_names)
        field = rng.choice(("verb", "subject", "obj", "subject_adj", "obj_adj"))
        if field.endswith("_adj"):
            # Adding an adjective makes a more specific claim; replacing one would be a near-contradiction.
            if getattr(meaning, field) is not None:
                continue
            value = rng.choice([a for a in (other.subject_adj, other.obj_adj) if a] or [None])
        else:
            value = getattr(other, field)
        # An added adjective must not be the one the premise had (that would restore an entailment).
        if value is not None and value != getattr(meaning, field) and value != getattr(premise, field):
            return replace(meaning, **{field: value})


def nli_pair(rng: random.Random, shared_names: int = 0) -> tuple[Meaning, Meaning, int]:
    """(premise, hypothesis, XLM label id) with the three labels equally likely; `shared_names` as in
    `sample_meaning` (names spelt the same in every language)."""
    premise = replace(sample_meaning(rng, shared_names), negated=False)
    label = rng.choice((CONTRADICTION, NEUTRAL, ENTAILMENT))
    hypothesis = _generalise(premise, rng)
    if label == CONTRADICTION:
        hypothesis = replace(hypothesis, negated=True)
    elif label == NEUTRAL:
        hypothesis = replace(_change(hypothesis, premise, rng, shared_names), negated=rng.random() < 0.3)
    return premise, hypothesis, label


def _render_pairs(pairs: list[tuple[Meaning, Meaning, int]], lang: str) -> list[NLIExample]:
    return [NLIExample(render(p, lang), render(h, lang), label, lang) for p, h, label in pairs]


def synthetic_nli_data(
    train_langs: list[str],
    eval_langs: list[str],
    *,
    n_train: int,
    n_valid: int,
    n_test: int,
    seed: int,
    shared_names: int = 0,
) -> Split:
    """Examples by split and language: `n_train` pairs per training language, `n_valid` / `n_test` pairs
    (the same meanings in every language) for each of `eval_langs`. Deterministic in `seed`; `shared_names`
    should match the pretraining corpus (`data.synthetic.shared_names` of the `+recipe=tlm` run)."""
    data: Split = {"train": {}, "valid": {}, "test": {}}
    for lang in train_langs:
        rng = random.Random(f"{seed}-nli-train-{lang}")
        data["train"][lang] = _render_pairs([nli_pair(rng, shared_names) for _ in range(n_train)], lang)
    for split, n in (("valid", n_valid), ("test", n_test)):
        rng = random.Random(f"{seed}-nli-{split}")
        pairs = [nli_pair(rng, shared_names) for _ in range(n)]
        data[split] = {lang: _render_pairs(pairs, lang) for lang in eval_langs}
    return data
