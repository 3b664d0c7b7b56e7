"""The `charnn` command: argparse subcommands mapped onto plain library functions.

Nothing below this module reads sys.argv. A user mistake (CharnnError, or a flag argparse
rejects) is one line on stderr and exit status 2; a bug is a traceback and exit status 1.
Flags are kebab-case spellings of the settings' field names; a flag not given keeps the
setting's default (or, with --resume, the run's saved value).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from charnn.errors import CharnnError
from charnn.settings import add_flags

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise CharnnError(f"{message} (see {self.prog} --help)")


def _settings(args, *besides: str) -> dict:
    """The settings the user gave: the parsed flags, less the command's own arguments."""
    return {k: v for k, v in vars(args).items() if k not in ("func", "command", *besides)}


# --- train ------------------------------------------------------------------------------------
def _add_train(sub) -> None:
    from charnn.models import ModelConfig
    from charnn.settings import help_of
    from charnn.train.config import DEFAULT_BUDGET_S, TrainConfig

    p = sub.add_parser(
        "train", help="train a model on text",
        description=(
            "Train a character-level language model. With no CORPUS, trains on the bundled tiny "
            f"Shakespeare; with no --max-steps, --max-time or --epochs, trains for "
            f"{DEFAULT_BUDGET_S:g} seconds."
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
              ["val_fraction", "encoding", "errors", "transliterate", "batching", "reset_prob", "batch_size", "seq_len"])
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
    settings = _settings(args, "resume", "quiet", "list_presets")
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
        print(f"--- sample (temperature 0.8, seed 0) from {summary.run_dir} ---")
        _write_stream(model.stream("", trained.config.sample_chars, temperature=0.8, seed=0))
        print()
    return 0


# --- sample -----------------------------------------------------------------------------------
def _add_sample(sub) -> None:
    from charnn.infer.model import SampleCommand

    p = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text from a run's best weights, streamed as it is generated.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by charnn train")
    add_flags(p, SampleCommand, ["prime", "length", "temperature", "top_k", "top_p", "seed", "num_samples", "stop",
                                 "unknown", "device", "backend", "quantize"])
    p.set_defaults(func=_cmd_sample)


def _write_stream(pieces) -> None:
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()


def _cmd_sample(args) -> int:
    from charnn.infer.model import SampleCommand, sample_run

    config = SampleCommand(**_settings(args, "run_dir"))
    samples = sample_run(args.run_dir, config)
    if config.seed is None:
        print(f"(seed {samples.seed})", file=sys.stderr)
    for i, pieces in enumerate(samples):
        if i:
            print("\n" + "-" * 40)
        sys.stdout.write(config.prime)
        _write_stream(pieces)
    print()
    return 0


# --- eval -------------------------------------------------------------------------------------
def _add_eval(sub) -> None:
    from charnn.infer.evalrun import EvalConfig

    p = sub.add_parser("eval", help="loss, bits per character and perplexity of a run",
                       description="Score a run's best weights on its validation split or on a text file.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by charnn train")
    add_flags(p, EvalConfig, ["text", "protocol", "window", "streams", "unknown", "encoding", "errors"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_flags(p, EvalConfig, ["device"])
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from charnn.infer.evalrun import EvalConfig, evaluate_run

    config = EvalConfig(**_settings(args, "run_dir", "json"))
    result, what = evaluate_run(args.run_dir, config)
    if args.json:
        print(json.dumps({**result.to_dict(), "text": what, "run": str(args.run_dir)}))
    else:
        print(f"{what}: {result.chars:,} characters, {result.protocol} protocol: loss {result.loss:.4f} "
              f"nats/char, {result.bpc:.4f} bits/char, perplexity {result.perplexity:.3f}")
    return 0


# --- prepare ----------------------------------------------------------------------------------
def _add_prepare(sub) -> None:
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
def _add_export(sub) -> None:
    from charnn.infer.export import ExportConfig

    p = sub.add_parser("export", help="export a run's one-step function (ONNX)",
                       description="Export the one-step function (ids, state -> logits, state) of a run's best "
                                   "weights, and check it against PyTorch.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by charnn train")
    add_flags(p, ExportConfig)
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from charnn.infer.export import ExportConfig, export_run

    config = ExportConfig(**_settings(args, "run_dir"))
    r = export_run(args.run_dir, config)
    print(f"wrote {r.path} ({r.bytes / 1e6:.1f} MB); max |logit difference| vs PyTorch over "
          f"{r.steps} steps: {r.max_logit_diff:.2e}")
    if r.bpc_torch is not None:
        print(f"validation ({r.chars:,} characters, stepwise): {r.bpc_export:.4f} bpc exported vs "
              f"{r.bpc_torch:.4f} bpc PyTorch ({r.bpc_export - r.bpc_torch:+.4f})")
    return 0


# --- serve ------------------------------------------------------------------------------------
def _add_serve(sub) -> None:
    from charnn.serve.config import ServeConfig

    p = sub.add_parser(
        "serve", help="serve runs over an OpenAI-compatible HTTP API, with a playground page",
        description=(
            "Serve trained runs over HTTP: POST /v1/completions (OpenAI's API; a token is a "
            "character; stream: true for server-sent events), GET /v1/models, GET /health, and a "
            "playground page at /. A model's id is its run directory's name; ID=RUN_DIR names it."
        ),
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories made by charnn train (or ID=RUN_DIR)")
    add_flags(p, ServeConfig)
    p.set_defaults(api_key=os.environ.get("CHARNN_API_KEY"))
    p.add_argument("--quiet", action="store_true", help="no access log")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args) -> int:
    from charnn.serve.config import ServeConfig

    try:
        from charnn.serve.run import serve
    except ImportError as e:
        raise CharnnError(f"charnn serve needs the [serve] extra ({e.name} is missing): "
                          f"pip install 'charnn[serve]'") from None
    settings = _settings(args, "run_dirs", "quiet")
    serve(args.run_dirs, ServeConfig(**settings), quiet=args.quiet)
    return 0


# --- memorize ---------------------------------------------------------------------------------
def _add_memorize(sub) -> None:
    from charnn.lab.memorize import MemorizeConfig

    p = sub.add_parser(
        "memorize", help="train a model to recite one text and measure its recall",
        description=(
            "Train a model to recite TEXT from a <start> token (one update per epoch on the whole "
            "text), then report its greedy recall, exact match, character and teacher-forced "
            "accuracy, and the first epoch with an exact recall."
        ),
    )
    p.add_argument("text", nargs="?", default=argparse.SUPPRESS, metavar="TEXT",
                   help="the text to memorise (a --preset supplies one)")
    p.add_argument("--preset", dest="preset", default=argparse.SUPPRESS, metavar="NAME",
                   help="the seed notebook's experiments; flags given still win (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    # Field order but --input before --embed, as the help has always read (the fields keep their
    # order: it is the key order of the --json output's config).
    add_flags(p, MemorizeConfig, ["alphabet", "cell", "layers", "hidden", "input", "embed", "loss", "lr",
                                  "epochs", "batch_size", "feedback", "seed", "stop_when_exact", "threads"])
    p.add_argument("--json", action="store_true", help="print one JSON object (no progress)")
    p.set_defaults(func=_cmd_memorize)


def _cmd_memorize(args) -> int:
    from charnn.lab.memorize import describe, format_presets, format_result, memorize, resolve

    if args.list_presets:
        print(format_presets())
        return 0
    settings = _settings(args, "json", "list_presets")
    config = resolve(settings)
    on_epoch = None
    if not args.json:
        print(describe(config), flush=True)
        every = max(1, config.epochs // 10)

        def on_epoch(epoch: int, loss: float) -> None:
            if epoch == 1 or epoch % every == 0:
                print(f"epoch {epoch:>6}  loss {loss:.4g}", flush=True)

    result = memorize(config, on_epoch)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print(format_result(result))
    return 0


# --- capacity ---------------------------------------------------------------------------------
def _add_capacity(sub) -> None:
    from charnn.lab.capacity import CapacityConfig

    p = sub.add_parser(
        "capacity", help="sweep cells x sizes x text lengths: how long a text can each cell recite?",
        description=(
            "Run the memorisation experiment over cells x hidden sizes x text lengths x seeds with a "
            "fixed update budget; append one JSON line per run to OUT/capacity.jsonl (a rerun skips "
            "runs already there), and write OUT/capacity.md (table) and OUT/capacity.png (plot)."
        ),
    )
    add_flags(p, CapacityConfig)
    p.add_argument("--quiet", action="store_true", help="no line per run")
    p.set_defaults(func=_cmd_capacity)


def _cmd_capacity(args) -> int:
    from charnn.lab.capacity import CapacityConfig, sweep

    settings = _settings(args, "quiet")
    config = CapacityConfig(**settings)
    result = sweep(config, log=(lambda line: None) if args.quiet else None)
    print(result.table)
    plot = f", plot {result.plot}" if result.plot else " (no plot: pip install 'charnn[plot]')"
    print(f"\n{result.ran} runs now, {result.skipped} already in {result.jsonl}; table {result.markdown}{plot}")
    return 0


# --- main -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from charnn import __version__

    parser = _Parser(prog="charnn", description="Character-level recurrent language models.")
    parser.add_argument("--version", action="version", version=f"charnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_train(sub)
    _add_sample(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_serve(sub)
    _add_prepare(sub)
    _add_memorize(sub)
    _add_capacity(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from charnn.train.distributed import ReportedByRankZero

    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except ReportedByRankZero:
        return EXIT_USER_ERROR  # rank 0 of a torchrun job printed it
    except CharnnError as e:
        print(f"charnn: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("charnn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (charnn sample ... | head): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
