"""One source for every setting: the flags, the help and the checks derived from a config field.

The first part tests the mechanism (charnn.settings) on a toy config; the second builds the
real `charnn` parser and checks that every flag that fills a setting() field says exactly that
field's default and offers exactly its choices.
"""

from __future__ import annotations

import argparse
import importlib
import math
from dataclasses import dataclass, fields, make_dataclass

import pytest

from charnn.cli import build_parser
from charnn.errors import CharnnError
from charnn.settings import (
    add_flags,
    default_of,
    defaults,
    field_problems,
    flag_name,
    from_settings,
    help_of,
    meta,
    setting,
)


@dataclass
class Toy:
    name: str = setting("x", "a name")
    count: int = setting(3, "how many", positive=True)
    rate: float = setting(0.5, "a rate", note="0 = off", ge=0, le=1)
    frac: float = setting(0.5, "a fraction", gt=0, lt=1)
    temp: float = setting(1.0, "a temperature", gt=0)
    low: float = setting(-1.0, "below zero", lt=0)
    cap: int = setting(10, "at most ten", le=10)
    mode: str = setting("a", "a mode", choices=("a", "b"))
    fast: bool = setting(False, "go fast")
    sizes: list[int] = setting([4, 8], "sizes", positive=True)
    tags: list[str] = setting(["p"], "tags", choices=("p", "q"), items="tag names")
    weights: list[float] = setting([0.5], "weights", ge=0)
    key: str | None = setting(None, "a key", shown="$KEY, else none", metavar="KEY")
    limit: int | None = setting(None, "a limit", ge=0)
    internal: int = setting(0, "set from elsewhere", flag=False)
    plain: int = 7  # no setting(): no flag, no check


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise ValueError(message)


def toy_parser(names=None, **kw) -> argparse.ArgumentParser:
    parser = _Parser()
    add_flags(parser, Toy, names, **kw)
    return parser


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)}


# --- add_flags --------------------------------------------------------------------------------
def test_flags_are_typed_and_absent_unless_given():
    parser = toy_parser()
    assert vars(parser.parse_args([])) == {}  # SUPPRESS: the config's own default applies
    args = parser.parse_args(["--name", "y", "--count", "4", "--rate", "0.25", "--mode", "b", "--fast",
                              "--sizes", "4, 16,", "--tags", "p,q", "--weights", "0.5,1.5", "--key", "k",
                              "--limit", "5"])
    assert vars(args) == {"name": "y", "count": 4, "rate": 0.25, "mode": "b", "fast": True, "sizes": [4, 16],
                          "tags": ["p", "q"], "weights": [0.5, 1.5], "key": "k", "limit": 5}
    assert Toy(**vars(args)).sizes == [4, 16]


def test_flags_are_kebab_case_in_field_order_and_skip_what_is_not_a_flag():
    parser = toy_parser()
    flags = [a.option_strings[0] for a in options(parser).values()]
    assert flags == [flag_name(f.name) for f in fields(Toy) if meta(f).get("flag")]
    assert "--internal" not in flags and "--plain" not in flags
    assert flag_name("batch_size") == "--batch-size"
    chosen = toy_parser(["mode", "count", "rate"], skip=("rate",))
    assert [a.dest for a in options(chosen).values()] == ["mode", "count"]


def test_choices_and_bool_flags():
    parser = toy_parser()
    with pytest.raises(ValueError, match="argument --mode: invalid choice: 'c'"):
        parser.parse_args(["--mode", "c"])
    assert options(parser)["mode"].choices == ["a", "b"]
    assert options(parser)["tags"].choices is None  # list items are checked by field_problems
    assert parser.parse_args(["--tags", "p,z"]).tags == ["p", "z"]
    fast = options(parser)["fast"]
    assert isinstance(fast, argparse._StoreTrueAction) and fast.nargs == 0
    with pytest.raises(ValueError, match="invalid int value"):
        parser.parse_args(["--count", "many"])


@pytest.mark.parametrize("flag,value,what", [
    ("--sizes", "x", "positive integers"),
    ("--sizes", "4.5", "positive integers"),
    ("--sizes", "", "positive integers"),
    ("--tags", ",", "tag names"),
    ("--weights", "a,1", "numbers"),
])
def test_a_list_flag_that_does_not_parse_names_its_items(flag, value, what):
    with pytest.raises(ValueError) as e:
        toy_parser().parse_args([flag, value])
    assert str(e.value) == f"argument {flag}: must be a comma-separated list of {what}, got {value!r}"


def test_help_has_the_text_the_note_and_the_default():
    assert help_of(Toy, "rate") == "a rate, 0 = off (default: 0.5)"
    assert help_of(Toy, "name") == "a name (default: x)"
    assert help_of(Toy, "fast") == "go fast (default: False)"
    assert help_of(Toy, "sizes") == "sizes (default: [4, 8])"
    assert help_of(Toy, "limit") == "a limit (default: none)"
    assert help_of(Toy, "key") == "a key (default: $KEY, else none)"  # shown replaces the default
    opts = options(toy_parser())
    assert all(a.help == help_of(Toy, dest) for dest, a in opts.items())
    assert opts["key"].metavar == "KEY" and opts["count"].metavar is None


def test_real_annotations_work_like_string_ones():
    # Without `from __future__ import annotations` a field's type is an object: list[int]
    # must still be a list flag, int | None an int flag.
    Real = make_dataclass("Real", [("sizes", list[int], setting([4], "sizes", positive=True)),
                                   ("limit", int | None, setting(None, "a limit", ge=0)),
                                   ("fast", bool, setting(False, "go fast"))])
    parser = _Parser()
    add_flags(parser, Real)
    assert vars(parser.parse_args(["--sizes", "4,5", "--limit", "3", "--fast"])) == {
        "sizes": [4, 5], "limit": 3, "fast": True}
    assert field_problems(Real(sizes=[0], limit=-1)) == [
        "--sizes must be a comma-separated list of positive integers, got '0'", "--limit must be >= 0, got -1"]


# --- field_problems ---------------------------------------------------------------------------
def test_defaults_have_no_problems():
    assert field_problems(Toy()) == []


@pytest.mark.parametrize("name,value,message", [
    ("count", 0, "--count must be a positive integer, got 0"),
    ("count", 2.5, "--count must be a positive integer, got 2.5"),
    ("count", True, "--count must be a positive integer, got True"),
    ("rate", 1.5, "--rate must be in [0, 1] (0 = off), got 1.5"),
    ("rate", -0.1, "--rate must be in [0, 1] (0 = off), got -0.1"),
    ("frac", 1, "--frac must be in (0, 1), got 1"),
    ("temp", 0, "--temp must be > 0, got 0"),
    ("temp", math.nan, "--temp must be > 0, got nan"),
    ("temp", math.inf, "--temp must be > 0, got inf"),
    ("temp", "hot", "--temp must be > 0, got hot"),
    ("low", 0.0, "--low must be < 0, got 0.0"),
    ("low", -math.inf, "--low must be < 0, got -inf"),
    ("cap", 11, "--cap must be <= 10, got 11"),
    ("cap", 5.0, "--cap must be <= 10, got 5.0"),  # an int setting refuses a float
    ("limit", -1, "--limit must be >= 0, got -1"),
    ("mode", "c", "--mode must be one of a, b, got 'c'"),
    ("mode", None, "--mode must be one of a, b, got None"),
    ("sizes", [4, 0], "--sizes must be a comma-separated list of positive integers, got '4,0'"),
    ("sizes", [], "--sizes must be a comma-separated list of positive integers, got ''"),
    ("sizes", [2.5], "--sizes must be a comma-separated list of positive integers, got '2.5'"),
    ("sizes", 4, "--sizes must be a comma-separated list of positive integers, got 4"),
    ("tags", ["p", "z"], "--tags must be a comma-separated list of p, q, got 'p,z'"),
    ("tags", [], "--tags must be a comma-separated list of p, q, got ''"),
    ("weights", [0.5, -1.0], "--weights must be a comma-separated list of numbers >= 0, got '0.5,-1.0'"),
    ("weights", [math.nan], "--weights must be a comma-separated list of numbers >= 0, got 'nan'"),
])
def test_each_bound_kind_has_its_message(name, value, message):
    assert field_problems(Toy(**{name: value})) == [message]


def test_problems_come_in_field_order_and_names_filter_them():
    bad = Toy(count=0, mode="c", sizes=[], plain=-5, internal=-5)  # no setting(), no bound: not checked
    assert field_problems(bad) == [
        "--count must be a positive integer, got 0",
        "--mode must be one of a, b, got 'c'",
        "--sizes must be a comma-separated list of positive integers, got ''",
    ]
    assert field_problems(bad, ["mode"]) == ["--mode must be one of a, b, got 'c'"]
    assert field_problems(Toy(limit=None, key=None)) == []  # None is allowed where the type says so


# --- defaults ---------------------------------------------------------------------------------
def test_default_of_gives_each_caller_its_own_list():
    assert default_of(Toy, "sizes") == [4, 8] and default_of(Toy, "rate") == 0.5
    default_of(Toy, "sizes").append(99)
    a, b = Toy(), Toy()
    a.sizes.append(99)
    assert b.sizes == [4, 8] and default_of(Toy, "sizes") == [4, 8]
    d = defaults(Toy)
    assert d["sizes"] == [4, 8] and d["internal"] == 0 and d["plain"] == 7 and d["key"] is None


def test_from_settings_refuses_unknown_names():
    assert from_settings(Toy, {"count": 2}, "toy") == Toy(count=2)
    with pytest.raises(CharnnError, match=r"^unknown toy setting\(s\): colour, size$"):
        from_settings(Toy, {"size": 1, "colour": "red", "count": 2}, "toy")


# --- the real command line --------------------------------------------------------------------
# Each subcommand -> the config classes its flags fill ("module:Class"; the first one found of
# a name is used, so a class may move). A flag is checked against the first class that has a
# setting() field of its dest; commands and fields not (yet) declared with setting() are
# skipped, so this test covers more as configs are converted.
CONFIGS = {
    "train": ["charnn.models:ModelConfig", "charnn.train.config:TrainConfig", "charnn.train.loop:TrainConfig"],
    "sample": ["charnn.infer.model:SampleCommand"],
    "eval": ["charnn.infer.evalrun:EvalConfig"],
    "score": ["charnn.infer.score:ScoreConfig"],
    "export": ["charnn.infer.export:ExportConfig"],
    "prepare": [],
    "serve": ["charnn.serve.config:ServeConfig"],
    "memorize": ["charnn.lab.memorize:MemorizeConfig"],
    "capacity": ["charnn.lab.capacity:CapacityConfig"],
    "cells": ["charnn.lab.cells:CellsConfig"],
}


def config_classes(command: str) -> list[type]:
    found: dict[str, type] = {}
    for spec in CONFIGS[command]:
        module, name = spec.split(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        found.setdefault(name, cls)
    return list(found.values())


def setting_field(classes: list[type], dest: str):
    """(class, field) of the first setting() field named `dest`, or None."""
    for cls in classes:
        for f in fields(cls):
            if f.name == dest and meta(f):
                return cls, f
    return None


@pytest.fixture(scope="module")
def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_command_is_mapped_and_every_flag_has_help(subcommands):
    assert set(subcommands) == set(CONFIGS)
    for command, parser in subcommands.items():
        for dest, action in options(parser).items():
            assert action.help and action.help.strip(), (command, dest)


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_flags_show_their_settings_default_and_choices(subcommands, command):
    classes = config_classes(command)
    checked = []
    for dest, action in options(subcommands[command]).items():
        found = setting_field(classes, dest)
        if found is None:
            continue
        cls, f = found
        m = meta(f)
        assert flag_name(dest) in action.option_strings, (command, dest)
        assert action.help == help_of(cls, dest), (command, dest)
        shown = m["shown"] if m["shown"] is not None else default_of(cls, dest)
        shown = "none" if shown is None else shown
        if shown != "" and not m["repeat"]:  # these helps say what happens without the flag
            assert action.help.endswith(f"(default: {shown})"), (command, dest)
        assert action.default is argparse.SUPPRESS or action.default == default_of(cls, dest), (command, dest)
        is_list = isinstance(default_of(cls, dest), list)
        expected = list(m["choices"]) if m["choices"] is not None and not is_list else None
        assert (list(action.choices) if action.choices is not None else None) == expected, (command, dest)
        checked.append(dest)
    if any(meta(f) for cls in classes for f in fields(cls)):
        assert checked, f"{command}: no flag fills a setting() field of {classes}"


@pytest.mark.parametrize("command", ["serve", "memorize", "capacity"])
def test_every_setting_of_a_converted_command_is_a_flag(subcommands, command):
    [cls] = config_classes(command)
    flags = set(options(subcommands[command]))
    assert {f.name for f in fields(cls) if meta(f).get("flag")} <= flags


def test_type_problems_check_what_field_problems_leaves_unchecked():
    """A value of the wrong type for a field without bounds or choices (from the Python API)."""
    from charnn.settings import type_problems

    assert type_problems(Toy()) == [] and type_problems(Toy(key=None)) == []
    bad = Toy(name=5, fast="yes", internal=True, key=3, count="x", mode=1, plain="z")
    assert type_problems(bad) == [  # count and mode: field_problems' own messages; plain: no setting()
        "--name must be a string, got 5",
        "--fast must be True or False, got 'yes'",
        "--key must be a string, got 3",
        "internal must be an integer, got True",  # not a flag: named by its keyword
    ]
    assert type_problems(bad, ["key"]) == ["--key must be a string, got 3"]
    Listy = make_dataclass("Listy", [("paths", list[str], setting([], "paths", flag=False))])
    assert type_problems(Listy(paths="a.txt")) == ["paths must be a list of strings, got 'a.txt'"]
    assert type_problems(Listy(paths=["a", 1])) == ["paths must be a list of strings, got ['a', 1]"]
    assert type_problems(Listy(paths=["a"])) == []


@pytest.mark.parametrize("module,cls", [
    ("charnn.models", "ModelConfig"), ("charnn.train.config", "TrainConfig"),
    ("charnn.infer.sampling", "SampleConfig"), ("charnn.serve.config", "ServeConfig"),
])
def test_every_default_has_the_type_its_field_declares(module, cls):
    from charnn.settings import type_problems

    assert type_problems(getattr(importlib.import_module(module), cls)()) == []
