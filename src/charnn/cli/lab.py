"""charnn serve, and the analyses: charnn memorize, charnn capacity, charnn cells. Each command is
one library call."""

from __future__ import annotations

import argparse
import json
import os

from charnn.cli.common import given_settings
from charnn.errors import CharnnError
from charnn.settings import add_flags


# --- serve ------------------------------------------------------------------------------------
def add_serve(sub) -> None:
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
    settings = given_settings(args, "run_dirs", "quiet")
    serve(args.run_dirs, ServeConfig(**settings), quiet=args.quiet)
    return 0


# --- memorize ---------------------------------------------------------------------------------
def add_memorize(sub) -> None:
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
    settings = given_settings(args, "json", "list_presets")
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
def add_capacity(sub) -> None:
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

    settings = given_settings(args, "quiet")
    config = CapacityConfig(**settings)
    result = sweep(config, log=(lambda line: None) if args.quiet else None)
    print(result.table)
    plot = f", plot {result.plot}" if result.plot else " (no plot: pip install 'charnn[plot]')"
    print(f"\n{result.ran} runs now, {result.skipped} already in {result.jsonl}; table {result.markdown}{plot}")
    return 0


# --- cells ------------------------------------------------------------------------------------
def add_cells(sub) -> None:
    from charnn.lab.cells import CellsConfig
    from charnn.settings import help_of

    p = sub.add_parser(
        "cells", help="find the units that track structure (columns, quotes, brackets, ...) and compare with n-grams",
        description=(
            "Run a run's model over text (its validation split, or CORPUS), record every unit of every layer, "
            "and for each structural feature of the text report the single unit that tracks it best and a "
            "linear probe over all units, on held-out text; then compare the model with character n-gram "
            "models on the same characters (Karpathy, Johnson & Fei-Fei 2015)."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by charnn train")
    p.add_argument("text", nargs="?", default=argparse.SUPPRESS, metavar="CORPUS", help=help_of(CellsConfig, "text"))
    add_flags(p, CellsConfig, ["max_chars", "syntax", "held_out", "streams", "ngram", "html", "unknown", "encoding",
                               "errors", "device"])
    p.add_argument("--json", action="store_true", help="print one JSON object (no progress)")
    p.set_defaults(func=_cmd_cells)


def _cmd_cells(args) -> int:
    from charnn.lab.cells import CellsConfig
    from charnn.lab.report import cells, dumps, format_table

    result = cells(args.run_dir, CellsConfig(**given_settings(args, "run_dir", "json")), progress=not args.json)
    print(dumps(result) if args.json else format_table(result))
    return 0


