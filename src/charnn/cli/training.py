"""charnn train, charnn prepare and charnn export: making runs and what they are read from or
turned into. Each command is one library call."""

from __future__ import annotations

import argparse
import sys

from charnn.cli.common import EXIT_INTERRUPTED, given_settings, write_stream
from charnn.settings import add_flags


# --- train ------------------------------------------------------------------------------------
def add_train(sub) -> None:
    from charnn.models import ModelConfig
    from charnn.settings import help_of
    from charnn.train.config import DEFAULT_BUDGET_S, TrainConfig

    p = sub.add_parser(
        "train", help="train a model on text",
        description=(
            "Train a character-level language model. With no CORPUS, trains on the bundled tiny "
            f"Shakespeare; with no --max-steps, --max-time or --epochs, trains for "
            f"{DEFAULT_BUDGET_S:g} seconds; with a time budget and no --preset or model flag, first "
            "picks the model for this machine and budget (--preset auto)."
        ),
    )
    p.add_argument("corpus", nargs="*", default=argparse.SUPPRESS, metavar="CORPUS",
                   help=help_of(TrainConfig, "corpus"))
    add_flags(p, TrainConfig, ["out"])
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue a run where it stopped; only stopping, logging and device flags may change")
    add_flags(p, TrainConfig, ["preset"])
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    add_flags(p.add_argument_group("fine-tuning (charnn train NEW_TEXT --init-from RUN)"), TrainConfig,
              ["init_from", "vocab", "unknown"])
    add_flags(p.add_argument_group("model"), ModelConfig,
              ["model", "layers", "hidden", "embed", "dropout", "input", "block", "expand", "mlp", "conv"])
    add_flags(p.add_argument_group("data"), TrainConfig,
              ["val_fraction", "encoding", "errors", "transliterate", "batching", "reset_prob", "batch_size", "seq_len",
               "documents", "doc_sep", "doc_field", "val_docs"])
    add_flags(p.add_argument_group("optimisation"), TrainConfig,
              ["lr", "min_lr_ratio", "warmup", "weight_decay", "grad_clip", "dtype"])
    add_flags(p.add_argument_group("stopping, evaluation, saving"), TrainConfig,
              ["max_steps", "max_time", "epochs", "eval_every", "eval_streams", "patience", "save_every", "log_every"])
    add_flags(p.add_argument_group("other"), TrainConfig, ["seed", "sample_chars", "device", "threads"])
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from charnn.train.api import format_summary, run_training

    if args.list_presets:
        from charnn.train.presets import format_presets

        print(format_presets())
        return 0
    settings = given_settings(args, "resume", "quiet", "list_presets")
    # Under torchrun every process runs this; they train one model and rank 0 speaks.
    trained = run_training(settings, resume=args.resume, progress=not args.quiet)
    summary = trained.summary
    if not trained.is_main:
        return EXIT_INTERRUPTED if summary.stop_reason == "interrupted" else 0
    if summary.stop_reason == "finished earlier":
        print(f"run {summary.run_dir} already finished at step {summary.step}; "
              f"pass a larger --max-steps to train it further")
        return 0
    print(format_summary(summary))
    if summary.stop_reason == "interrupted":
        print(f"resume with: charnn train --resume {summary.run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if trained.config.sample_chars:
        from charnn.infer.model import load

        model = load(summary.run_dir)
        if model.documents is not None:  # ten whole documents, each at most --sample-chars long
            print(f"--- 10 documents (temperature 0.8, seeds 0-9) from {summary.run_dir} ---")
            for doc in model.sample_documents(10, "", trained.config.sample_chars, temperature=0.8, seed=0):
                print(doc.line())
            return 0
        print(f"--- sample (temperature 0.8, seed 0) from {summary.run_dir} ---")
        write_stream(model.stream("", trained.config.sample_chars, temperature=0.8, seed=0))
        print()
    return 0


# --- prepare ----------------------------------------------------------------------------------
def add_prepare(sub) -> None:
    from charnn.settings import default_of
    from charnn.train.config import TrainConfig

    p = sub.add_parser(
        "prepare", help="encode a large corpus once into a token file that training reads as it goes",
        description=(
            "Read text files or directories in a streaming pass and write DIR/tokens.bin (one "
            "small unsigned integer per character), DIR/vocab.json and DIR/prepared.json. "
            "`charnn train DIR` then trains without loading the corpus into memory."
        ),
    )
    p.add_argument("corpus", nargs="*", metavar="CORPUS",
                   help="text files or directories (default: the bundled tiny Shakespeare)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write (required)")
    # The same flags as charnn train's, so a prepared corpus reads its text the same way.
    add_flags(p, TrainConfig, ["encoding", "errors"])
    p.set_defaults(**{name: default_of(TrainConfig, name) for name in ("encoding", "errors")})
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args) -> int:
    from charnn.data.prepare import prepare

    summary = prepare(args.corpus, args.out, args.encoding, args.errors, progress=not args.quiet)
    print(summary.format())
    return 0


# --- export -----------------------------------------------------------------------------------
def add_export(sub) -> None:
    from charnn.infer.export import ExportConfig

    p = sub.add_parser("export", help="export a run's one-step function (ONNX)",
                       description="Export the one-step function (ids, state -> logits, state) of a run's best "
                                   "weights, and check it against PyTorch.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by charnn train")
    add_flags(p, ExportConfig)
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from charnn.infer.export import ExportConfig, export_run

    config = ExportConfig(**given_settings(args, "run_dir"))
    r = export_run(args.run_dir, config)
    print(f"wrote {r.path} ({r.bytes / 1e6:.1f} MB); max |logit difference| vs PyTorch over "
          f"{r.steps} steps: {r.max_logit_diff:.2e}")
    if r.bpc_torch is not None:
        print(f"validation ({r.chars:,} characters, stepwise): {r.bpc_export:.4f} bpc exported vs "
              f"{r.bpc_torch:.4f} bpc PyTorch ({r.bpc_export - r.bpc_torch:+.4f})")
    return 0


