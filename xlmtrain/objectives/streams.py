"""Typed training streams (objective x language or pair) and how a run mixes them (reference §A4.1, §A4.6).

XLM runs every stream step as its own optimizer update. xlmtrain maps that onto Lightning as one
stream per batch: each training batch is drawn from one stream, chosen at random among the streams whose
lambda is non-zero at that step; the loss is `lambda(step) * mean CE`, as in XLM.

Streams form groups by objective and kind: XLM's `--mlm_steps` splits into monolingual (MLM) and pair
(TLM) entries, `--clm_steps` likewise. How the groups share the steps (`mixture`):
- `xlm` (default): as XLM's `shuf_order`, whose loop iteration runs min(5, #mono) monolingual and
  min(5, #pair) pair steps of each objective: a group of n streams gets the share min(5, n) / sum over
  groups. XNLI-15 (15 MLM + 28 TLM streams) trains MLM:TLM 5:5 = 50:50; `en,fr,en-fr` 2:1.
- `weights`: a group's share is the sum of its streams' weights (15:28 = 35:65 for XNLI-15).
Inside a group, each stream's probability is its weight times XLM's language smoothing
(`smoothed_probs` of the training sentence counts, `lg_sampling_factor`), renormalised.

The lambda time axis is the optimizer step (one Lightning step = one stream step). XLM's schedules count
loop iterations (`n_total_iter`), each of `steps_per_iteration` = sum over groups of min(5, n) steps (10 for
XNLI-15, 3 for `en,fr,en-fr`): XLM's point `ITER:VALUE` is xlmtrain's `ITER * steps_per_iteration:VALUE`,
e.g. `--lambda_mlm '0:1,100000:0.1'` with 10 steps per iteration is `lambda_: '0:1,1000000:0.1'`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from xlmtrain.objectives.schedule import LambdaSchedule

OBJECTIVES = ("clm", "mlm", "tlm", "trans_rank", "xlco")
PAIR_OBJECTIVES = ("tlm", "trans_rank", "xlco")  # objectives that need a translation pair
ALIGNMENT_OBJECTIVES = ("trans_rank", "xlco")  # sentence-level, on two separately encoded sides
MIXTURES = ("xlm", "weights")
XLM_STEPS_PER_GROUP = 5
"""XLM's `shuf_order(..., n=5)`: at most this many monolingual and this many pair steps per loop iteration."""


@dataclass(frozen=True)
class StreamSpec:
    """One training stream.

    Attributes:
        objective: `clm` (causal LM), `mlm` (masked LM on monolingual text), `tlm` (masked LM on a
            translation pair), `trans_rank` (translation ranking) or `xlco` (InfoXLM's cross-lingual
            contrast), the last two on pairs (`xlmtrain.objectives.alignment`).
        langs: `('en',)` or an ordered pair `('en', 'fr')` (en first; `('fr', 'en')` is another stream); given
            as config spells it (`'en'`, `'en-fr'`) or as a sequence, always stored as a tuple.
            `mlm` needs a language, `tlm`/`trans_rank`/`xlco` a pair, `clm` takes either.
        lambda_: loss coefficient, a constant or an XLM schedule such as `'0:1,1000:0.5'`; while it is
            0 the stream is never drawn.
        weight: relative sampling weight among streams (before language smoothing).
    """

    objective: str
    langs: tuple[str, ...]
    lambda_: str | float = 1.0
    weight: float = 1.0
    schedule: LambdaSchedule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        given = self.langs
        parts = tuple(given.split("-") if isinstance(given, str) else given)
        object.__setattr__(self, "langs", parts)
        where = f"stream {self.objective} {'-'.join(parts)!r}"
        if self.objective not in OBJECTIVES:
            raise ValueError(f"{where}: objective must be one of {', '.join(OBJECTIVES)}")
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
        return len(self.langs) == 2

    @property
    def lang_key(self) -> str:
        """The languages as config and metric names spell them: `en`, `en-fr`."""
        return "-".join(self.langs)

    @property
    def name(self) -> str:
        """Metric-friendly name: `en_mlm`, `en-fr_tlm`, `en_clm`, `en-fr_trans_rank`."""
        return f"{self.lang_key}_{self.objective}"

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


def expand_langs(langs: str | Sequence[str], mono: Sequence[str], pairs: Sequence[str]) -> list[str]:
    """The stream languages an `objective.streams` entry stands for.

    `langs` is one of: a language or ordered pair (`en`, `en-fr`); `'*'` = every monolingual language of
    `mono`; `'*-*'` = every stored pair of `pairs` in its stored order (`l1 < l2`); `'*<->*'` = both
    directions of every stored pair (`en-fr`, `fr-en`, ...: XLM's XNLI-15 list); or a list of those
    (XLM's comma list `--mlm_steps 'ar,bg,en-ar,ar-en'` is `[ar, bg, en-ar, ar-en]`). Order is kept.
    """
    if not isinstance(langs, str):
        return [lang for item in langs for lang in expand_langs(str(item), mono, pairs)]
    if langs == "*":
        return list(mono)
    if langs == "*-*":
        return list(pairs)
    if langs == "*<->*":
        return [d for pair in pairs for d in (pair, "-".join(reversed(pair.split("-"))))]
    return [langs]


class StreamMixture:
    """Chooses the stream of each training batch (see the module docstring for `mixture`).

    Streams sharing an objective and kind (monolingual or pair) form a group; the group's share is
    min(5, n streams) (`mixture="xlm"`) or the sum of its weights (`"weights"`), redistributed inside it by
    `smoothed_probs(sizes, alpha)` times each stream's weight. Drawing excludes streams whose lambda is 0
    at the step and renormalises.
    """

    def __init__(
        self, specs: Sequence[StreamSpec], sizes: Mapping[str, int], alpha: float, mixture: str = "xlm"
    ) -> None:
        """`sizes` maps each `spec.name` to its training sentence count; `alpha` is `lg_sampling_factor`;
        `mixture` is `xlm` or `weights`. Raises ValueError on no stream, a duplicate or an unknown mixture."""
        if not specs:
            raise ValueError("at least one training stream is needed")
        if mixture not in MIXTURES:
            raise ValueError(f"objective.mixture={mixture!r}: expected one of {', '.join(MIXTURES)}")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate streams in {names}")
        self.specs = list(specs)
        self.weights = [0.0] * len(specs)
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, spec in enumerate(specs):
            groups.setdefault((spec.objective, spec.is_pair), []).append(i)
        self.steps_per_iteration = sum(min(XLM_STEPS_PER_GROUP, len(m)) for m in groups.values())
        """Optimizer steps in one XLM loop iteration of these streams (the lambda time-axis conversion)."""
        for members in groups.values():
            if mixture == "xlm":
                total = float(min(XLM_STEPS_PER_GROUP, len(members)))
            else:
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
