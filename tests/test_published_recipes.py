"""The published-scale presets `+recipe=xlm_en_fr`, `xlm_xnli15`, `xlm_xnli15_finetune` against XLM's own commands.

`XLM_COMMANDS` is transcribed from facebookresearch/XLM's README at commit cd281d3 (the flags each command
passes) and `XLM_DEFAULTS` from the argparse defaults of its train.py / glue-xnli.py / xlm/optim.py (the values
a command inherits); ../shared/XLM_REFERENCE.md quotes them. Each preset is composed with Hydra's compose API
and every value is compared with what XLM ran.
"""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR
from xlmtrain.objectives.streams import StreamMixture, StreamSpec, expand_langs

XLM_COMMANDS = {
    # README "III. Applications: Supervised / Unsupervised MT", MLM pretraining en-fr, with the README's next
    # sentence: "To train with both the MLM and TLM objective, you can use --mlm_steps 'en,fr,en-fr'".
    # Data: get-data-nmt.sh (CODES=60000, no lowercase). GPUs: not published; the preset declares 8.
    "xlm_en_fr": {
        "train.py": "--lgs 'en-fr' --clm_steps '' --mlm_steps 'en,fr,en-fr' --emb_dim 1024 --n_layers 6 --n_heads 8 "
        "--dropout 0.1 --attention_dropout 0.1 --gelu_activation true --batch_size 32 --bptt 256 "
        "--optimizer adam,lr=0.0001 --epoch_size 200000 --validation_metrics _valid_mlm_ppl "
        "--stopping_criterion _valid_mlm_ppl,10",
        "bpe_codes": 60000,
        "lowercase_and_remove_accent": False,
        "max_vocab": -1,
        "gpus": 8,
    },
    # README "IV. Cross-lingual language model pretraining (XLM)", "Train your XLM (MLM+TLM)". Data: XLM-15
    # ("tokenize + lowercase + no accent + BPE", codes_xnli_15 = 80k codes, --max_vocab 95000). GPUs: the
    # paper's 64 V100s.
    "xlm_xnli15": {
        "train.py": "--lgs 'ar-bg-de-el-en-es-fr-hi-ru-sw-th-tr-ur-vi-zh' --clm_steps '' --mlm_steps "
        "'ar,bg,de,el,en,es,fr,hi,ru,sw,th,tr,ur,vi,zh,en-ar,en-bg,en-de,en-el,en-es,en-fr,en-hi,en-ru,en-sw,"
        "en-th,en-tr,en-ur,en-vi,en-zh,ar-en,bg-en,de-en,el-en,es-en,fr-en,hi-en,ru-en,sw-en,th-en,tr-en,ur-en,"
        "vi-en,zh-en' --emb_dim 1024 --n_layers 12 --n_heads 8 --dropout 0.1 --attention_dropout 0.1 "
        "--gelu_activation true --batch_size 32 --bptt 256 "
        "--optimizer adam_inverse_sqrt,beta1=0.9,beta2=0.98,lr=0.0001,weight_decay=0 --epoch_size 200000 "
        "--validation_metrics _valid_mlm_ppl --stopping_criterion _valid_mlm_ppl,10",
        "bpe_codes": 80000,
        "lowercase_and_remove_accent": True,
        "max_vocab": 95000,
        "gpus": 64,
    },
    # README "IV", "Fine-tune your XLM model on cross-lingual classification (XNLI)".
    "xlm_xnli15_finetune": {
        "glue-xnli.py": "--model_path mlm_tlm_xnli15_1024.pth --transfer_tasks XNLI,SST-2 "
        "--optimizer_e adam,lr=0.000025 --optimizer_p adam,lr=0.000025 --finetune_layers 0:_1 --batch_size 8 "
        "--n_epochs 250 --epoch_size 20000 --max_len 256 --max_vocab 95000",
    },
}

XLM_DEFAULTS = {
    # train.py argparse defaults the pretraining commands inherit.
    "train.py": {
        "tokens_per_batch": "-1",
        "max_len": "100",
        "clip_grad_norm": "5",
        "lambda_mlm": "1",
        "lg_sampling_factor": "-1",
        "word_pred": "0.15",
        "sample_alpha": "0",
        "word_mask_keep_rand": "0.8,0.1,0.1",
        "group_by_size": "true",
    },
    # glue-xnli.py defaults: classifier dropout 0; its XNLI loop never clips gradients.
    "glue-xnli.py": {"dropout": "0"},
    # xlm/optim.py: Adam(betas=(0.9, 0.999), eps=1e-8, weight_decay=0); adam_inverse_sqrt adds
    # warmup_updates=4000, warmup_init_lr=1e-7.
    "optimizer": {
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "weight_decay": 0.0,
        "warmup_updates": 4000,
        "warmup_init_lr": 1e-7,
    },
}


def parse_flags(command: str) -> dict[str, str]:
    """`--key value` pairs of a transcribed command (quotes stripped)."""
    words = command.split()
    return {words[i][2:]: words[i + 1].strip("'") for i in range(0, len(words), 2)}


def parse_optimizer(spec: str) -> dict[str, float | str]:
    """XLM's `name,key=value,...` optimizer string with xlm/optim.py's defaults filled in."""
    name, *items = spec.split(",")
    out: dict[str, float | str] = {"name": name, **XLM_DEFAULTS["optimizer"]}
    out.update({k: float(v) for k, v in (item.split("=") for item in items)})
    return out


def _compose(recipe: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("xlmtrain", overrides=[f"+recipe={recipe}"])
    return cfg


@pytest.mark.parametrize("recipe", ["xlm_en_fr", "xlm_xnli15"])
def test_pretraining_preset_equals_xlm_command(recipe: str) -> None:
    xlm = XLM_COMMANDS[recipe]
    flags = {**XLM_DEFAULTS["train.py"], **parse_flags(xlm["train.py"])}
    cfg = _compose(recipe)
    model, batching, trainer = cfg.model, cfg.data.batching, cfg.trainer
    # Model.
    assert (model.emb_dim, model.n_layers, model.n_heads) == (
        int(flags["emb_dim"]),
        int(flags["n_layers"]),
        int(flags["n_heads"]),
    )
    assert (model.dropout, model.attention_dropout) == (float(flags["dropout"]), float(flags["attention_dropout"]))
    assert model.gelu_activation is (flags["gelu_activation"] == "true")
    # Batches: ours are global, XLM's per GPU.
    gpus = trainer.devices * trainer.num_nodes
    assert gpus == xlm["gpus"] and trainer.strategy == "ddp"
    assert batching.batch_size == int(flags["batch_size"]) * gpus
    assert batching.bptt == int(flags["bptt"])
    assert batching.tokens_per_batch is None and flags["tokens_per_batch"] == "-1"
    assert batching.max_len == int(flags["max_len"])
    assert batching.group_by_size is (flags["group_by_size"] == "true")
    # Optimizer and schedule.
    opt = parse_optimizer(flags["optimizer"])
    o, sched = cfg.optim.optimizer, cfg.optim.scheduler
    assert o.lr == opt["lr"] and list(o.betas) == [opt["beta1"], opt["beta2"]]
    assert (o.eps, o.weight_decay) == (opt["eps"], opt["weight_decay"])
    if opt["name"] == "adam_inverse_sqrt":
        assert (sched.kind, sched.warmup_steps, sched.warmup_init_lr) == (
            "inverse_sqrt", opt["warmup_updates"], opt["warmup_init_lr"])  # fmt: skip
    else:
        assert opt["name"] == "adam" and (sched.kind, sched.warmup_steps) == ("constant", 0)
    assert trainer.gradient_clip_val == float(flags["clip_grad_norm"])
    # Epoch = epoch_size sentences, counted batch_size (per GPU) per step: the validation interval.
    assert trainer.val_check_interval == int(flags["epoch_size"]) // int(flags["batch_size"])
    assert cfg.checkpoint.every_n_train_steps == trainer.val_check_interval
    # Streams: XLM's mlm_steps list, both directions where XLM lists both, with lambda_mlm.
    mono, pairs = [], []
    for step in flags["mlm_steps"].split(","):
        (pairs if "-" in step else mono).append(step)
    lgs = sorted(flags["lgs"].split("-"))
    stored = sorted({"-".join(sorted(p.split("-"))) for p in pairs})
    streams = [
        StreamSpec(s.objective, lang, lambda_=s.lambda_, weight=s.weight)
        for s in cfg.objective.streams
        for lang in expand_langs(OmegaConf.to_container(s.langs), lgs, stored)
    ]
    assert [(s.objective, s.lang_key) for s in streams] == [("mlm", m) for m in mono] + [("tlm", p) for p in pairs]
    assert all(s.schedule(0) == float(flags["lambda_mlm"]) and s.weight == 1 for s in streams)
    assert cfg.objective.mixture == "xlm"
    mixture = StreamMixture(streams, {s.name: 1000 for s in streams}, alpha=cfg.objective.lg_sampling_factor)
    assert mixture.steps_per_iteration == min(5, len(mono)) + min(5, len(pairs))
    assert cfg.objective.lg_sampling_factor == float(flags["lg_sampling_factor"])
    m = cfg.objective.masking
    assert m.word_pred == float(flags["word_pred"]) and m.sample_alpha == float(flags["sample_alpha"])
    assert list(m.keep_rand) == [float(x) for x in flags["word_mask_keep_rand"].split(",")]
    # Model selection and stopping.
    metric = flags["validation_metrics"]
    assert metric.startswith("_") and (cfg.objective.monitor, cfg.objective.monitor_mode) == (metric[1:], "min")
    criterion, patience = flags["stopping_criterion"].split(",")
    stop = cfg.callbacks.early_stopping
    assert (stop.monitor, stop.mode) == (criterion[1:], "min")
    assert (
        stop.patience == int(patience) + 1
    )  # XLM stops when its counter EXCEEDS N; Lightning when it REACHES patience
    # Data.
    pre = cfg.data.preprocess
    assert pre.bpe_merges == xlm["bpe_codes"]
    assert pre.lowercase_and_strip_accents is xlm["lowercase_and_remove_accent"]
    assert pre.get("max_vocab", 0) == max(xlm["max_vocab"], 0)
    assert OmegaConf.is_missing(cfg.data, "dir")


def test_finetune_preset_equals_xlm_command() -> None:
    flags = {**XLM_DEFAULTS["glue-xnli.py"], **parse_flags(XLM_COMMANDS["xlm_xnli15_finetune"]["glue-xnli.py"])}
    cfg = _compose("xlm_xnli15_finetune")
    task, o = cfg.task, cfg.optim
    enc, head = parse_optimizer(flags["optimizer_e"]), parse_optimizer(flags["optimizer_p"])
    assert enc["name"] == head["name"] == "adam"
    assert (o.optimizer.lr, o.head_lr) == (enc["lr"], head["lr"])
    assert list(o.optimizer.betas) == [enc["beta1"], enc["beta2"]] and o.optimizer.eps == enc["eps"]
    assert o.optimizer.weight_decay == enc["weight_decay"]
    assert (o.scheduler.kind, o.scheduler.warmup_steps) == ("constant", 0)
    assert flags["finetune_layers"] == "0:_1" and task.finetune_layers is None
    assert task.batch_size == int(flags["batch_size"])
    assert cfg.trainer.max_epochs == int(flags["n_epochs"])
    assert task.epoch_size == int(flags["epoch_size"])
    assert task.max_len == int(flags["max_len"])
    assert task.head_dropout == float(flags["dropout"])
    assert cfg.trainer.gradient_clip_val is None
    assert flags["transfer_tasks"].split(",")[0] == "XNLI" and list(task.train_langs) == ["en"]
    assert task.kind == "pair_classification" and cfg.pretrained.lowercase is True
