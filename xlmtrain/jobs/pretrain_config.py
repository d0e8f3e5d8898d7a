"""The typed blocks of the pretraining config: `data` (`DataSettings`, `SyntheticCorpus`) and `objective`
(`ObjectiveSettings`, `StreamSettings`). `PretrainSettings` (jobs/pretrain.py) gathers them with the built
`_target_` objects.

Free of Lightning (and of everything else the training needs) on purpose: `python -m xlmtrain` checks the whole
config against these types before it imports the training stack, so a bad value fails in a second or two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from xlmtrain.data.pipeline import PreprocessSettings
from xlmtrain.objectives.alignment import AlignmentSettings
from xlmtrain.objectives.data import BatchSettings, MaskingSettings
from xlmtrain.objectives.streams import StreamSpec


@dataclass(frozen=True)
class SyntheticCorpus:
    """`data.synthetic`: the bundled synthetic languages, generated when `data.dir` is null (conf/data/synthetic.yaml)."""

    langs: tuple[str, ...]
    n_mono: int
    """Monolingual sentences per language."""
    n_para: int
    """Parallel sentence pairs per language pair."""
    seed: int
    shared_names: int
    """Proper names spelt the same in every language (cross-lingual anchors); 0: none."""


@dataclass(frozen=True)
class DataSettings:
    """`data`: where the text comes from, how raw text is preprocessed, and how batches are cut."""

    dir: Path | None
    """Raw or preprocessed data folder; None: the synthetic corpus."""
    synthetic: SyntheticCorpus
    preprocess: PreprocessSettings
    batching: BatchSettings


@dataclass(frozen=True)
class StreamSettings:
    """One `objective.streams` entry: a `StreamSpec` whose `langs` may also be a pattern or a list
    (`expand_langs`); `expand_streams` turns it into `StreamSpec`s."""

    objective: str
    """clm, mlm, tlm, or an alignment objective on a pair (trans_rank, xlco)."""
    langs: str | tuple[str, ...]
    """A language (`en`), an ordered pair (`en-fr`), `*` (every language), `*-*` (every stored pair),
    `*<->*` (both directions of every pair), or a list of these (XLM's `--mlm_steps` list)."""
    lambda_: str | float = StreamSpec.lambda_
    """Loss coefficient: a constant or an XLM schedule such as `'0:1,1000:0.5'` (default: StreamSpec's, 1)."""
    weight: float = StreamSpec.weight
    """Relative sampling weight among streams, before language smoothing (default: StreamSpec's, 1)."""


@dataclass(frozen=True)
class ObjectiveSettings:
    """`objective` (conf/objective/*.yaml): the streams, their mixture and masking."""

    name: str
    """The objective's name (the default run name)."""
    streams: tuple[StreamSettings, ...]
    lg_sampling_factor: float
    """XLM's --lg_sampling_factor: < 0 uniform over languages; 0.5 / 0.7 as the paper / XLM-100."""
    masking: MaskingSettings
    monitor: str
    """Validation metric that selects the best checkpoint (read by `callbacks.best`)."""
    monitor_mode: Literal["min", "max"]
    alignment: AlignmentSettings = AlignmentSettings()
    """Pooling, margin, scales, gathering and XLCo's queue of the `trans_rank` / `xlco` streams."""
    mixture: Literal["xlm", "weights"] = "xlm"
    """How stream groups share the steps: `xlm` (XLM's loop: min(5, n) steps per group) or `weights` (the sum of
    each group's stream weights); see `xlmtrain.objectives.streams`."""
