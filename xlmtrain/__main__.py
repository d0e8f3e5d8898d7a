"""`python -m xlmtrain ...`: Hydra config -> typed settings -> a job (`xlmtrain.cli.train`).

`run(cfg)` runs the same job from a config already composed with Hydra's compose API (tests, notebooks, benchmarks);
`pretrain_settings(cfg)` / `finetune_settings(cfg)` give a job's typed settings from such a config; `run_name` and
`swept_keys` are how a run (or a sweep job) is named from its overrides."""

from xlmtrain.cli.run_names import run_name
from xlmtrain.cli.sweep import swept_keys
from xlmtrain.cli.train import finetune_settings, main, pretrain_settings, run

__all__ = ["finetune_settings", "main", "pretrain_settings", "run", "run_name", "swept_keys"]

if __name__ == "__main__":
    main()
