"""Named bundles of training settings: `charnn train --preset NAME`, listed by --list-presets.

A preset sets defaults; flags given on the command line (or keywords to charnn.train) still
win. Each entry is a description and settings named like ModelConfig / TrainConfig fields.
"""

from __future__ import annotations

from charnn.errors import CharnnError

PRESETS: dict[str, tuple[str, dict]] = {
    "quick": (
        "a 30-second smoke run: 1-layer LSTM, 256 units",
        {"model": "lstm", "layers": 1, "hidden": 256, "max_time": 30.0, "eval_every": 200},
    ),
}


def preset_settings(name: str) -> dict:
    if name not in PRESETS:
        raise CharnnError(f"--preset must be one of {', '.join(sorted(PRESETS))}, got {name!r} (see --list-presets)")
    return dict(PRESETS[name][1])


def format_presets() -> str:
    width = max(len(n) for n in PRESETS)
    lines = []
    for name, (description, settings) in PRESETS.items():
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())
        lines.append(f"{name:<{width}}  {description}\n{'':<{width}}  {flags}")
    return "\n".join(lines)
