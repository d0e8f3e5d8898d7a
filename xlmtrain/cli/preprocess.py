"""`python -m xlmtrain.preprocess input=DIR output=DIR [knob=value ...]`: see conf/preprocess.yaml."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from xlmtrain.config_dir import conf_dir
from xlmtrain.data.pipeline import PreprocessError, PreprocessSettings, preprocess

CONF_DIR = str(conf_dir())


@hydra.main(config_path=CONF_DIR, config_name="preprocess", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Run the preprocessor; bad input exits with a one-line error."""
    knobs = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(knobs, dict)
    input_dir, output_dir, force = knobs.pop("input"), knobs.pop("output"), knobs.pop("force")
    start = time.perf_counter()
    try:
        manifest = preprocess(input_dir, output_dir, PreprocessSettings(**knobs), force=force)
    except (PreprocessError, ValueError, ImportError) as err:
        sys.exit(f"error: {err}")
    counts = {name: c["sentences"] for name, c in manifest["counts"].items()}
    print(f"{output_dir}: {len(manifest['languages'])} languages, vocab {manifest['vocab_size']}, "
          f"{time.perf_counter() - start:.1f}s; sentences {json.dumps(counts)}")  # fmt: skip


if __name__ == "__main__":
    main()
