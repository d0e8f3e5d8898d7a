"""`python -m xlmtrain.preprocess input=DIR output=DIR [knob=value ...]`: the knobs are `PreprocessSettings`' fields.

Sharded: `step=learn`, then `shard=I/N` for I in 0..N-1 (anywhere that sees the same paths), then `step=merge`.
"""

from __future__ import annotations

import json
import sys
import time

import hydra
from omegaconf import DictConfig, OmegaConf

from xlmtrain.cli.defaults import store_defaults
from xlmtrain.config_dir import conf_dir
from xlmtrain.data.pipeline import PreprocessSettings, preprocess
from xlmtrain.settings import typed

CONF_DIR = str(conf_dir())

# conf/preprocess.yaml starts from the knobs' defaults as `PreprocessSettings` holds them (the training config's
# data.preprocess starts from the same node): every knob can still be set on the command line (`bpe_merges=100`)
# and listed (`python -m xlmtrain.preprocess --cfg job input=. output=.`).
store_defaults("preprocess_defaults", PreprocessSettings)


@hydra.main(config_path=CONF_DIR, config_name="preprocess", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run the preprocessor (or one step of a sharded build); bad input exits 2 with a one-line error."""
    knobs = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(knobs, dict)
    input_dir, output_dir = knobs.pop("input"), knobs.pop("output")
    force, step, shard = knobs.pop("force"), knobs.pop("step"), knobs.pop("shard")
    start = time.perf_counter()
    try:
        manifest = preprocess(
            input_dir,
            output_dir,
            typed(PreprocessSettings, knobs, ""),
            force=force,
            step=step,
            shard=None if shard is None else str(shard),
        )
    except (ValueError, ImportError, OSError) as err:  # PreprocessError and the others name the file/setting
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    elapsed = time.perf_counter() - start
    if "counts" not in manifest:
        print(f"{manifest['step']} done in {elapsed:.1f}s: {manifest['output']}")
        return
    counts = {name: c["sentences"] for name, c in manifest["counts"].items()}
    print(
        f"{output_dir}: {len(manifest['languages'])} languages, vocab {manifest['vocab_size']}, "
        f"{elapsed:.1f}s; sentences {json.dumps(counts)}"
    )


if __name__ == "__main__":
    main()
