"""One source for every setting: a config field carries its default, help, choices and bounds.

    @dataclass
    class SampleConfig:
        temperature: float = setting(1.0, "softmax temperature", note="0 = greedy", ge=0)

From that one line come the `--temperature` flag and its `--help` text (`add_flags`), the check
and its message (`field_problems`: "--temperature must be >= 0 (0 = greedy), got -1"), the
Python API's keyword default, and the server's request default (`default_of`). Nothing else
writes the default, the help or the choice list again.

Bounds: `ge`/`gt`/`le`/`lt` (a non-finite number is always out of bounds), `choices` (a
tuple; for list settings every item must be one of them), `positive=True` for an integer that
must be >= 1. `note` names the sentinel ("0 = off") and appears in both the help and the
message. A `list[int]`, `list[float]` or `list[str]` setting is one comma-separated flag
(`--hidden 4,8,16`); `items` names its items where the flag does not parse ("must be a
comma-separated list of core names, got ''"; by default "positive integers", "integers",
"numbers" or "names"); `repeat=True` makes it a flag given once per item instead (`--stop A
--stop B`). `shown` replaces the default as `--help` shows it, where the default is not the
whole story (`--max-time`: 150 s when no other stopping flag is given); `shown=""` leaves the
default out where the help already says what happens without the flag. `flag=False` keeps a
field out of the command line (it is set from elsewhere).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, Field, field, fields
from typing import Any

from charnn.errors import CharnnError

_KEY = "charnn"


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple | list | None = None,
    note: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    positive: bool = False,
    shown: str | None = None,
    metavar: str | None = None,
    items: str | None = None,
    repeat: bool = False,
    flag: bool = True,
) -> Any:
    """A dataclass field with everything its flag, its check and its API default need."""
    meta = {
        "help": help, "choices": tuple(choices) if choices is not None else None, "note": note,
        "ge": ge, "gt": gt, "le": le, "lt": lt, "positive": positive, "shown": shown,
        "metavar": metavar, "items": items, "repeat": repeat, "flag": flag,
    }
    if isinstance(default, list):  # each instance gets its own copy
        values = list(default)
        return field(default_factory=lambda: list(values), metadata={_KEY: meta})
    if isinstance(default, dict):
        entries = dict(default)
        return field(default_factory=lambda: dict(entries), metadata={_KEY: meta})
    return field(default=default, metadata={_KEY: meta})


def meta(f: Field) -> dict:
    return f.metadata.get(_KEY, {})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def default_of(cls, name: str) -> Any:
    """The default of `cls.name`, the one place it is written."""
    f = {f.name: f for f in fields(cls)}[name]
    return f.default if f.default is not MISSING else f.default_factory()


def defaults(cls) -> dict[str, Any]:
    return {f.name: default_of(cls, f.name) for f in fields(cls)}


def _type_of(f: Field) -> str:
    """The field's annotation as written ("int", "list[int]", "str|None"), whether the module
    uses `from __future__ import annotations` (a string) or not (a type: `list[int]` must not
    become its origin's name, "list")."""
    t = f.type
    if not isinstance(t, str):
        t = t.__name__ if isinstance(t, type) else str(t)
    return t.replace(" ", "")


def _show(value: Any) -> str:
    """A default as `--help` shows it; a list as Python writes it (`['rnn', 'lstm']`), as
    `charnn capacity --help` always has."""
    if value is None:
        return "none"
    return str(value)


def _items(m: dict, item_type: str) -> str:
    """What the items of a list setting are called in its messages."""
    if m["items"]:
        return m["items"]
    if item_type == "int":
        return "positive integers" if m["positive"] else "integers"
    return {"float": "numbers"}.get(item_type, "names")


def _list_parser(cast, what: str):
    """The type of a list flag: "4, 8,16" -> [4, 8, 16]; no item, or one that does not parse,
    is argparse's error. Choices and bounds are checked later (field_problems), with the rest."""

    def parse(value: str):
        try:
            items = [cast(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError:
            items = []
        if not items:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of {what}, got {value!r}")
        return items

    return parse


def help_of(cls, name: str) -> str:
    """The `--help` line of a setting: its help, its sentinel and its default."""
    f = {f.name: f for f in fields(cls)}[name]
    m = meta(f)
    text = m["help"] + (f", {m['note']}" if m["note"] else "")
    if m["repeat"]:
        return f"{text} (repeatable)"
    if m["shown"] == "":
        return text
    shown = m["shown"] if m["shown"] is not None else _show(default_of(cls, name))
    return f"{text} (default: {shown})"


def add_flags(group, cls, names: list[str] | None = None, *, skip: tuple[str, ...] = ()) -> None:
    """Add `--kebab-name` for each flag field of `cls` (in field order, or in `names`' order).

    A flag not given is absent from the parsed namespace (argparse.SUPPRESS), so the config's
    own default (or, on resume, the run's saved value) applies.
    """
    by_name = {f.name: f for f in fields(cls)}
    chosen = names if names is not None else [f.name for f in fields(cls) if meta(f).get("flag")]
    for name in chosen:
        if name in skip:
            continue
        f = by_name[name]
        m = meta(f)
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_of(cls, name)}
        t = _type_of(f)
        if t == "bool":
            kw["action"] = "store_true"
        elif m["repeat"]:
            kw["action"] = "append"
        elif t.startswith("list["):
            item = t[5:-1]
            kw["type"] = _list_parser({"int": int, "float": float}.get(item, str), _items(m, item))
        else:
            base = t.split("|")[0]
            kw["type"] = {"int": int, "float": float}.get(base, str)
            if m["choices"] is not None:
                kw["choices"] = list(m["choices"])
        if m["metavar"]:
            kw["metavar"] = m["metavar"]
        group.add_argument(flag_name(name), **kw)


def _bounds_message(m: dict) -> str | None:
    ge, gt, le, lt = m["ge"], m["gt"], m["le"], m["lt"]
    if m["positive"]:
        return "a positive integer"
    if (ge is not None or gt is not None) and (le is not None or lt is not None):
        lo = f"[{_num(ge)}" if ge is not None else f"({_num(gt)}"
        hi = f"{_num(le)}]" if le is not None else f"{_num(lt)})"
        return f"in {lo}, {hi}"
    if ge is not None:
        return f">= {_num(ge)}"
    if gt is not None:
        return f"> {_num(gt)}"
    if le is not None:
        return f"<= {_num(le)}"
    if lt is not None:
        return f"< {_num(lt)}"
    return None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _in_bounds(v: Any, m: dict, is_int: bool) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if is_int and not isinstance(v, int):
        return False
    if not math.isfinite(v):
        return False
    if m["positive"] and v < 1:
        return False
    return not ((m["ge"] is not None and not v >= m["ge"]) or (m["gt"] is not None and not v > m["gt"])
                or (m["le"] is not None and not v <= m["le"]) or (m["lt"] is not None and not v < m["lt"]))


def field_problems(config, names: list[str] | None = None) -> list[str]:
    """Every field of `config` outside its declared choices or bounds, as one message each."""
    problems = []
    for f in fields(config):
        m = meta(f)
        if not m or (names is not None and f.name not in names):
            continue
        v = getattr(config, f.name)
        flag = flag_name(f.name)
        t = _type_of(f)
        if m["choices"] is not None:
            if t.startswith("list["):
                if not isinstance(v, list) or not v or any(x not in m["choices"] for x in v):
                    shown = ",".join(map(str, v)) if isinstance(v, list) else v
                    problems.append(f"{flag} must be a comma-separated list of {', '.join(m['choices'])}, "
                                    f"got {shown!r}")
            elif v not in m["choices"]:
                problems.append(f"{flag} must be one of {', '.join(m['choices'])}, got {v!r}")
            continue
        bounds = _bounds_message(m)
        if bounds is None:
            continue
        if t.startswith("list["):
            item = t[5:-1]
            if not isinstance(v, list) or not v or any(not _in_bounds(x, m, item == "int") for x in v):
                shown = ",".join(map(str, v)) if isinstance(v, list) else v
                what = _items(m, item) + ("" if m["positive"] else f" {bounds}")
                problems.append(f"{flag} must be a comma-separated list of {what}, got {shown!r}")
            continue
        if v is None and "None" in t:
            continue
        if not _in_bounds(v, m, t.startswith("int")):
            note = f" ({m['note']})" if m["note"] else ""
            problems.append(f"{flag} must be {bounds}{note}, got {v}")
    return problems


# annotation -> (accepted types, what one is called, what several are called)
_TYPES = {"int": ((int,), "an integer", "integers"), "float": ((int, float), "a number", "numbers"),
          "str": ((str,), "a string", "strings"), "bool": ((bool,), "True or False", "booleans")}


def type_problems(config, names: list[str] | None = None) -> list[str]:
    """The fields that field_problems does not check (no bounds, no choices) whose value has the
    wrong type, e.g. from the Python API (`train(seed="x")`): one message each. A bool is not an
    integer here. A field that is not a flag is named by its keyword, not as a flag."""
    problems = []
    for f in fields(config):
        m = meta(f)
        if not m or (names is not None and f.name not in names):
            continue
        if m["choices"] is not None or _bounds_message(m) is not None:
            continue  # field_problems checks the type with the value
        v, t = getattr(config, f.name), _type_of(f)
        name = flag_name(f.name) if m["flag"] else f.name
        if v is None and "None" in t:
            continue
        base = t.split("|")[0]
        if base.startswith("list["):
            kinds, _, several = _TYPES.get(base[5:-1], ((object,), "", "values"))
            if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, kinds) for x in v):
                problems.append(f"{name} must be a list of {several}, got {v!r}")
        elif base in _TYPES:
            kinds, what, _ = _TYPES[base]
            if (isinstance(v, bool) and base != "bool") or not isinstance(v, kinds):
                problems.append(f"{name} must be {what}, got {v!r}")
    return problems


def from_settings(cls, settings: dict, what: str):
    """`cls(**settings)`, refusing names it does not have (one line naming them)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise CharnnError(f"unknown {what} setting(s): {', '.join(unknown)}")
    return cls(**settings)
