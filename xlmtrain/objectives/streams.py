"""Typed training streams (objective x language or pair) and how a run mixes them (reference §A4.1, §A4.6).

XLM runs every stream step as its own optimizer update. xlmtrain maps that onto Lightning as one
stream per batch: each training batch is drawn from one stream, chosen at random with probability
proportional to its (language-smoothed) weight among the streams whose lambda is non-zero at that
step; the loss is `lambda(step) * mean CE`, as in XLM. With the default equal weights, `mlm io`,
`mlm vo`, `tlm io-vo` gives XLM's iteration of 2 MLM steps + 1 TLM step in expectation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from xlmtrain.objectives.schedule import LambdaSchedule

OBJECTIVES = ("clm", "mlm", "tlm", "trans_rank", "xlco")
PAIR_OBJECTIVES = ("tlm", "trans_rank", "xlco")  # objectives that need a translation pair
ALIGNMENT_OBJECTIVES = ("trans_rank", "xlco")  # sentence-level, on two separately encoded sides


@dataclass(frozen=True)
class StreamSpec:
    """One training stream.

    Attributes:
        objective: `clm` (causal LM), `mlm` (masked LM on monolingual text), `tlm` (masked LM on a
            translation pair), `trans_rank` (translation ranking) or `xlco` (InfoXLM's cross-lingual
            contrast), the last two on pairs (`xlmtrain.objectives.alignment`).
        langs: a language (`en`) or an ordered pair (`en-fr`, en first; `fr-en` is another stream).
            `mlm` needs a language, `tlm`/`trans_rank`/`xlco` a pair, `clm` takes either.
        lambda_: loss coefficient, a constant or an XLM schedule such as `'0:1,1000:0.5'`; while it is
            0 the stream is never drawn.
        weight: relative sampling weight among streams (before language smoothing).
    """

    objective: str
    langs: str
    lambda_: str | float = 1.0
    weight: float = 1.0
    schedule: LambdaSchedule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"stream {self.objective} {self.langs!r}"
        if self.objective not in OBJECTIVES:
            raise ValueError(f"{where}: objective must be one of {', '.join(OBJECTIVES)}")
        parts = self.langs.split("-")
        if len(parts) > 2 or not all(parts) or (len(parts) == 2 and parts[0] == parts[1]):
            raise ValueError(f"{where}: langs must be 'xx' or 'xx-yy' with two different languages")
        if self.objective in PAIR_OBJECTIVES and len(parts) != 2:
            raise ValueError(f"{where}: {self.objective} needs a language pair such as 'en-fr'")
        if self.objective == "mlm" and len(parts) != 1:
            raise ValueError(f"{where}: mlm on a pair is tlm; use objective tlm")
        if not self.weight > 0:
            raise ValueError(f"{where}: weight must be > 0, got {self.weight}")
        object.__setattr__(self, "schedule", LambdaSchedule.parse(self.lambda_))

    @property
    def is_pair(self) -> bool:
        """True for a translation-pair stream."""
        return "-" in self.langs

    @property
    def lang_list(self) -> tuple[str, ...]:
        """`('en',)` or `('en', 'fr')` in stream order."""
        return tuple(self.langs.split("-"))

    @property
    def name(self) -> str:
        """Metric-friendly name: `en_mlm`, `en-fr_tlm`, `en_clm`, `en-fr_trans_rank`."""
        return f"{self.langs}_{self.objective}"

    @property
    def average_group(self) -> str | None:
        """The validation average this stream counts in (XLM's): `mlm` / `clm` for monolingual streams, `tlm`
        for TLM pairs; None for a CLM pair or an alignment stream (in no average)."""
        if self.objective == "tlm":
            return "tlm"
        return None if self.is_pair else self.objective


def smoothed_probs(counts: Sequence[float], alpha: float) -> list[float]:
    """XLM's `set_sampling_probs`: `p_i = n_i / sum n`, then `q_i = p_i^alpha / sum p^alpha`.

    `alpha < 0` means uniform (XLM's default -1). Raises `ValueError` on an empty or zero count.
    """
    if not counts or min(counts) <= 0:
        raise ValueError(f"language sampling needs positive sentence counts, got {list(counts)}")
    if alpha < 0:
        return [1.0 / len(counts)] * len(counts)
    total = float(sum(counts))
    powered = [(n / total) ** alpha for n in counts]
    norm = sum(powered)
    return [p / norm for p in powered]


class StreamMixture:
    """Chooses the stream of each training batch.

    Streams sharing an objective and kind (monolingual or pair) form a group; the group keeps the
    sum of its weights, redistributed inside it by `smoothed_probs(sizes, alpha)` times each stream's
    weight. Drawing excludes streams whose lambda is 0 at the step and renormalises.
    """

    def __init__(self, specs: Sequence[StreamSpec], sizes: Mapping[str, int], alpha: float) -> None:
        """`sizes` maps each `spec.name` to its training sentence count; `alpha` is `lg_sampling_factor`."""
        if not specs:
            raise ValueError("at least one training stream is needed")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate streams in {names}")
        self.specs = list(specs)
        self.weights = [0.0] * len(specs)
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, spec in enumerate(specs):
            groups.setdefault((spec.objective, spec.is_pair), []).append(i)
        for members in groups.values():
            total = sum(specs[i].weight for i in members)
            q = smoothed_probs([sizes[specs[i].name] for i in members], alpha)
            scaled = [specs[i].weight * qi for i, qi in zip(members, q)]
            for i, s in zip(members, scaled):
                self.weights[i] = total * s / sum(scaled)

    def probabilities(self, step: int) -> list[float]:
        """Probability of each stream at optimizer step `step`; raises if every lambda is 0."""
        active = [w if spec.schedule(step) != 0 else 0.0 for w, spec in zip(self.weights, self.specs)]
        total = sum(active)
        if total == 0:
            raise ValueError(f"every stream has lambda 0 at step {step}")
        return [w / total for w in active]

    def draw(self, step: int, generator: torch.Generator) -> int:
        """Index of the stream for a batch at optimizer step `step`."""
        probs = torch.tensor(self.probabilities(step), dtype=torch.float64)
        return int(torch.multinomial(probs, 1, generator=generator))
