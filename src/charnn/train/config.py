"""The settings of a training run: TrainConfig, and resolve() from keywords to the configs a run uses.

Each TrainConfig field carries its default, help, choices and bounds once (charnn.settings):
the `charnn train` flags, their --help, the keywords of charnn.train() and the validation
messages all come from it. resolve() layers them: the field defaults <- a preset <- the
settings given, the model's taken from the parent run when fine-tuning (--init-from,
finetune.py), --preset auto when no preset and no model flag is given (presets.uses_auto:
auto.py then chooses the model when the run starts); or, for `--resume`, the run's saved
settings <- the few that may change. It refuses a resume that would train a run from step 0
over what it holds (check_resumable), and sizes that cannot fit in memory (check_memory),
before anything is read or built.
Imports data, models, checkpoint, devices and settings; nothing of the loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

from charnn import checkpoint
from charnn.data import documents
from charnn.data.batching import LAYOUTS
from charnn.data.corpus import ERROR_POLICIES, TRANSLITERATIONS
from charnn.data.documents import FORMATS as DOC_FORMATS
from charnn.data.vocab import UNKNOWN_POLICIES, VOCAB_POLICIES
from charnn.devices import (
    DTYPES,
    check_dtype,
    format_bytes,
    memory_limit,
    resolve_device,
    resolve_dtype,
)
from charnn.errors import CharnnError
from charnn.models import ModelConfig
from charnn.settings import field_problems, flag_name, setting, type_problems
from charnn.train import finetune
from charnn.train.presets import check_auto, preset_settings, uses_auto

DEFAULT_BUDGET_S = 150.0  # with no stopping flag at all: fits `charnn train` into 3 minutes
# --lr and --warmup when not given: from scratch, and fine-tuning (--init-from). A fine-tuned
# run has little text and starts from weights worth keeping: a peak 3x lower than from scratch,
# reached over twice the steps, so that AdamW's first steps (moments estimated from a few
# batches, each weight moved by about lr whatever its gradient) do not shake the parent's
# weights up before they adapt. Measured fine-tuning the default run on Python's documentation
# (benchmarks/finetune.py's text; validation loss, steps of 32 x 96): on 200 KB, after 400
# steps, lr 1e-3 1.334, 2e-3 1.244, 3e-3 1.205, 6e-3 1.180 (higher adapts faster); on 20 KB
# every run overfits within ~100 steps, and a lower lr reaches its best later and stays near it
# longer, which counts when the best weights are kept only at evaluations (2e-3: 2.00 at step
# 100, 2.18 at 150; 6e-3: 2.07 at 50, 2.45 at 100). 2e-3 is the middle of that trade.
LR, FINETUNE_LR = 6e-3, 2e-3
WARMUP, FINETUNE_WARMUP = 50, 100


@dataclass
class TrainConfig:
    """How a model is trained; the `charnn train` flags map onto these one to one."""

    corpus: list[str] = setting([], "text files or directories, or one directory made by charnn prepare",
                                shown="the bundled tiny Shakespeare", flag=False)  # the positional CORPUS
    out: str = setting("", "run directory to create", shown="runs/<corpus name>, numbered if taken",
                       metavar="DIR")
    encoding: str = setting("utf-8", "text encoding of the corpus files")
    errors: str = setting("strict", "what to do with bytes invalid in --encoding", choices=ERROR_POLICIES)
    transliterate: str = setting("none", "ascii = map the text to ASCII with unidecode (the [ascii] extra) "
                                 "over a printable-ASCII vocabulary; none = keep it", choices=TRANSLITERATIONS)
    val_fraction: float = setting(0.1, "fraction of the corpus (its end) held out for validation; with "
                                  "--documents, a seeded random share of the documents", ge=0, lt=1)
    documents: str = setting("none", "read the corpus as separate documents, each <start> text <end>: lines = one "
                             "per line, blank = separated by blank lines, sep = by --doc-sep, jsonl = one JSON "
                             "object per line; none = one stream of text", choices=DOC_FORMATS)
    doc_sep: str = setting("", "--documents sep: the string between documents (escapes \\n \\t \\r \\\\)",
                           metavar="STRING", shown="")
    doc_field: str = setting("text", "--documents jsonl: the field that holds each document's text", metavar="NAME")
    val_docs: int = setting(0, "--documents: hold out exactly N whole documents, 0 = --val-fraction of them", ge=0)
    batching: str = setting("streams", "batch layout: stateful TBPTT streams or random windows (a "
                       "--documents corpus is read one document per row)", choices=LAYOUTS)
    reset_prob: float = setting(0.05, "streams: chance per window that a stream forgets its state "
                                "(cold-start practice)", ge=0, le=1)
    batch_size: int = setting(32, "sequences per step; under torchrun the global batch, split over the "
                              "processes", positive=True)
    seq_len: int = setting(96, "characters per sequence (the TBPTT window)", positive=True)
    # None = the default for the run: from scratch, or fine-tuning (resolve() sets it).
    lr: float | None = setting(None, "peak learning rate of AdamW", gt=0,
                               shown=f"{LR:g}; {FINETUNE_LR:g} with --init-from")
    min_lr_ratio: float = setting(0.1, "final learning rate as a fraction of --lr (cosine decay)", ge=0, le=1)
    warmup: int | None = setting(None, "steps of linear learning-rate warmup", ge=0,
                                 shown=f"{WARMUP}; {FINETUNE_WARMUP} with --init-from")
    weight_decay: float = setting(0.0, "AdamW weight decay on weight matrices", ge=0)
    grad_clip: float = setting(1.0, "maximum gradient norm, 0 = off", ge=0)
    # The sentinels ("0 = no limit") are part of the help, not a `note`: the messages of a bad
    # value name only the bound ("--max-steps must be >= 0, got -1").
    max_steps: int = setting(0, "stop after this many steps in all, 0 = no limit", ge=0)
    max_time: float = setting(0.0, "stop after this many seconds of training, 0 = no limit", ge=0,
                              shown=f"{DEFAULT_BUDGET_S:g} when neither --max-steps nor --epochs is given, else 0")
    epochs: float = setting(0.0, "stop after this many passes over the training text, 0 = no limit", ge=0)
    eval_every: int = setting(500, "evaluate on the validation split every N steps, 0 = only at the end", ge=0)
    eval_streams: int = setting(8, "parallel segments of the stateful validation pass", positive=True)
    patience: int = setting(0, "stop after N evaluations without improvement, 0 = off", ge=0)
    save_every: int = setting(0, "save a resume point every N steps, 0 = only at the end", ge=0)
    log_every: int = setting(50, "steps between metrics lines", positive=True)
    seed: int = setting(1337, "random seed (weights, dropout, batch order)", ge=0, lt=2**63)  # torch's range, with room
    sample_chars: int = setting(300, "characters of sample printed at the end, 0 = none", ge=0)
    dtype: str = setting("auto", "autocast precision; auto = bfloat16 where the hardware has it natively",
                         choices=("auto", *DTYPES))
    device: str = setting("auto", "torch device: auto, cpu, cuda, cuda:N, mps")
    threads: int = setting(0, "CPU threads for torch, 0 = torch's default", ge=0, le=1024)  # 65536: libgomp aborts
    # The named bundle of settings this run started from (presets.py); its flag is --preset NAME.
    preset: str = setting("", "start from a named bundle of settings; flags given still win (see --list-presets); "
                          "with none and no model flag, a run with a time budget is --preset auto",
                          metavar="NAME", shown="", flag=False)
    # What --preset auto chose and why (auto.py): set by the run, recorded in config.json.
    auto: dict = setting({}, "the automatic choice of --preset auto, made when the run starts", shown="",
                         flag=False)
    # Fine-tuning (finetune.py): a new run that starts from a trained run's best weights.
    init_from: str = setting("", "fine-tune: start from this run's best weights, with its architecture, a fresh "
                             "optimizer and schedule, and fine-tuning's --lr and --warmup; the run is only read",
                             metavar="RUN", shown="")
    vocab: str = setting("extend", "with --init-from: extend = add the corpus's new characters to the model "
                         "(its predictions start unchanged); keep = the run's own vocabulary, other characters "
                         "per --unknown", choices=VOCAB_POLICIES)
    unknown: str = setting("error", "with --init-from --vocab keep: characters outside the run's vocabulary are "
                           "an error, dropped (skip) or read as <unk> (replace)", choices=UNKNOWN_POLICIES)

    def problems(self) -> list[str]:
        problems = field_problems(self) + type_problems(self) + finetune.check_settings(self)
        return problems or documents.problems(self.documents, self.doc_sep, self.doc_field, self.val_docs)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# Settings that a resumed run may change: when and how it stops, logs and saves, where it
# runs. Everything else would make the resumed run a different run.
RESUME_OVERRIDES = frozenset(
    {"max_steps", "max_time", "epochs", "eval_every", "patience", "save_every", "log_every",
     "sample_chars", "threads", "device"}
)


def split_settings(settings: dict) -> tuple[dict, dict]:
    """Route keyword settings to ModelConfig and TrainConfig fields; reject unknown names."""
    model_names = {f.name for f in fields(ModelConfig)} - {"vocab_size"}
    train_names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings) - model_names - train_names)
    if unknown:
        raise CharnnError(f"unknown training setting(s): {', '.join(unknown)}")
    model = {k: v for k, v in settings.items() if k in model_names}
    train = {k: v for k, v in settings.items() if k in train_names}
    return model, train


def resolve(settings: dict, resume: str | None = None, world: int = 1) -> tuple[ModelConfig, TrainConfig]:
    """The configs a run will use: defaults <- settings (or: the saved run <- allowed settings),
    checked to fit in memory (with `world` processes sharing each batch)."""
    model_kw, train_kw = split_settings(settings)
    if resume is not None:
        files, model_config, cfg = _resolve_resume(model_kw, train_kw, resume)
        check_memory(model_config, cfg, world, cfg.device, files)
        return model_config, cfg
    if "auto" in train_kw:
        raise CharnnError("auto is the record --preset auto writes when a run starts; ask for --preset auto instead")
    if uses_auto({**model_kw, **train_kw}):
        train_kw["preset"] = "auto"
    if train_kw.get("preset"):
        if train_kw.get("init_from"):
            raise CharnnError("--preset and --init-from do not go together: a preset is a recipe for training "
                              "from scratch, a fine-tuned run takes its model from the --init-from run; drop "
                              "--preset and give the training flags you want")
        preset_model, preset_train = split_settings(preset_settings(train_kw["preset"]))
        model_kw, train_kw = {**preset_model, **model_kw}, {**preset_train, **train_kw}
    model_config = ModelConfig(**model_kw)
    cfg = TrainConfig(**train_kw)
    problems = model_config.problems() + cfg.problems()
    if problems:
        raise CharnnError("; ".join(problems))
    if cfg.init_from:
        model_config = finetune.parent_model(cfg.init_from, model_kw)
    if cfg.lr is None:
        cfg.lr = FINETUNE_LR if cfg.init_from else LR
    if cfg.warmup is None:
        cfg.warmup = FINETUNE_WARMUP if cfg.init_from else WARMUP
    if not (cfg.max_steps or cfg.max_time or cfg.epochs):
        cfg.max_time = DEFAULT_BUDGET_S
    if cfg.preset == "auto":
        check_auto(cfg)
    if not cfg.out:
        cfg.out = _default_out(cfg.corpus)
    cfg.corpus = [str(Path(c).resolve()) if Path(c).exists() else c for c in cfg.corpus]
    cfg.device = resolve_device(cfg.device)
    cfg.dtype = resolve_dtype(cfg.dtype, cfg.device)
    check_dtype(cfg.dtype, cfg.device)
    check_memory(model_config, cfg, world, cfg.device)  # the vocabulary is not known yet: a lower bound
    return model_config, cfg


def _resolve_resume(
    model_kw: dict, train_kw: dict, resume: str
) -> tuple[checkpoint.RunFiles, ModelConfig, TrainConfig]:
    files = checkpoint.read_run(resume)
    check_resumable(files.path)
    saved = TrainConfig.from_dict(files.train)
    if problems := saved.problems():  # named as settings of the file, not as flags given
        shown = "; ".join(re.sub(r"^--([a-z-]+)", lambda m: m[1].replace("-", "_"), p) for p in problems)
        raise CharnnError(f"{files.path / checkpoint.CONFIG} holds invalid training settings ({shown}); "
                          f"restore it, or start a new run with --out")

    def then(k: str):
        return getattr(files.model_config if k in model_kw else saved, k)

    changed = sorted(k for k, v in {**model_kw, **train_kw}.items() if k not in RESUME_OVERRIDES and then(k) != v)
    if changed:
        shown = ", ".join(f"--{k.replace('_', '-')} (the run has {then(k)!r})" for k in changed)
        raise CharnnError(f"cannot change {shown} when resuming {resume}; drop the flag, or start a new run with --out")
    cfg = replace(saved, **{k: v for k, v in train_kw.items() if k in RESUME_OVERRIDES}, out=str(resume))
    if problems := cfg.problems():  # the flags given now
        raise CharnnError("; ".join(problems))
    cfg.device = resolve_device(cfg.device)  # the run's GPU may be missing here: say so
    check_dtype(cfg.dtype, cfg.device)
    return files, files.model_config, cfg


def check_resumable(run: Path) -> None:
    """Refuse to resume a run that trained before but has lost its resume point: training
    from step 0 would overwrite its best weights and its metrics history. A run killed before
    it wrote anything (only config.json and vocab.json) starts from step 0, as it should."""
    if checkpoint.has_checkpoint(run):
        return
    held = []
    try:
        if (run / checkpoint.BEST).exists():
            held.append(f"trained weights ({checkpoint.BEST})")
        metrics = run / checkpoint.METRICS
        if n := sum(1 for line in metrics.read_bytes().splitlines() if line.strip()) if metrics.exists() else 0:
            held.append(f"{n} metrics line{'s' if n != 1 else ''} ({checkpoint.METRICS})")
    except OSError as e:
        raise CharnnError(f"cannot read {e.filename}: {e.strerror}") from None
    if held:
        raise CharnnError(
            f"{run} has no resume point ({checkpoint.LAST} is missing) but holds {' and '.join(held)}; "
            f"resuming would train from step 0 over them: restore {checkpoint.LAST}, or start a new "
            f"run with --out (a run writes its resume point at the end, and every N steps with --save-every N)"
        )


# The settings that size the model and the batch, in the order they are weighed.
SIZE_FLAGS = ("hidden", "layers", "embed", "expand", "mlp", "conv", "batch_size", "seq_len")


def check_memory(model_config: ModelConfig, cfg: TrainConfig, world: int, device: str,
                 run: checkpoint.RunFiles | None = None) -> None:
    """Refuse, before anything is built, a model whose weights, gradients, AdamW moments and one
    batch's activations cannot fit in the device's memory (a lower bound: what is refused
    cannot train; what passes may still be too big). The message names the setting to lower:
    the one whose least value would shrink the estimate most; for a resumed `run`, a setting
    of its config.json (they cannot change on resume)."""
    limit = memory_limit(device)
    if limit is None or model_config.problems() or cfg.problems():  # the problems are reported elsewhere
        return
    available, where = limit

    def needed(m: ModelConfig, c: TrainConfig) -> int:
        return m.estimated_bytes(training=True, batch_size=c.batch_size // world, seq_len=c.seq_len,
                                 value_bytes=4 if c.dtype == "float32" else 2)

    need = needed(model_config, cfg)
    if need <= available:
        return
    smallest, culprit = need, "hidden"
    for name in SIZE_FLAGS:
        is_model = name in {f.name for f in fields(ModelConfig)}
        config = model_config if is_model else cfg
        least = 0 if name in ("mlp", "conv") else 1
        if getattr(config, name) > least:
            smaller = replace(config, **{name: least})
            n = needed(smaller, cfg) if is_model else needed(model_config, smaller)
            if n < smallest:
                smallest, culprit = n, name
    names = ("batch_size", "seq_len") if culprit in ("batch_size", "seq_len") else (culprit,)
    values = {n: getattr(cfg if n in ("batch_size", "seq_len") else model_config, n) for n in names}
    shown = {n: v if isinstance(v, int) else format(v, "g") for n, v in values.items()}
    if run is None:
        given = " x ".join(f"{flag_name(n)} {v}" for n, v in shown.items())
        fix = f"lower {' or '.join(map(flag_name, names))}"
    else:
        given = f"the run {run.path} ({', '.join(f'{n} {v}' for n, v in shown.items())} in its {checkpoint.CONFIG})"
        fix = "resume it on a machine with more memory"
    raise CharnnError(
        f"{given} needs at least {format_bytes(need)} of memory to train ({model_config.parameter_count():,} "
        f"parameters with their gradients and AdamW's two moments, and one batch's activations), more than "
        f"{where} ({format_bytes(available)}); {fix}"
    )


def _default_out(corpus: list[str]) -> str:
    stem = Path(corpus[0]).stem if corpus else "tinyshakespeare"
    base = Path("runs") / (stem or "run")
    out, k = base, 2
    while out.exists():
        out, k = base.with_name(f"{base.name}-{k}"), k + 1
    return str(out)
