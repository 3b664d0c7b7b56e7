"""The settings of `charnn serve`: where it listens and every limit, one flag each.

Kept apart from server.py so that the CLI can show the defaults without importing the web
stack (the [serve] extra).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeConfig:
    """Where to listen and every limit; the `charnn serve` flags map onto these one to one."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # None = no authentication
    max_tokens: int = 4096  # ceiling on max_tokens (characters per choice)
    max_prompt: int = 4096  # characters per prompt
    max_n: int = 16  # choices per request (n x number of prompts)
    max_batch: int = 64  # streams stepped together, per model
    max_queue: int = 256  # streams waiting for a place in the batch, per model
    max_body: int = 1 << 20  # bytes per request body
    timeout: float = 300.0  # seconds per request, queueing included
    device: str = "cpu"
    backend: str = "auto"  # sampling engine (inference.make_stepper): auto | torch | onnx
    quantize: str = "none"  # none | int8
    # torch / ONNX Runtime threads for the model steps. 1 by default: the engine thread then
    # keeps one core and the HTTP side the other; on a 2-core machine 32 streams ran ~30 %
    # faster than with 2 threads (README, "Throughput"). 0 = torch's default.
    threads: int = 1

    def problems(self) -> list[str]:
        p = []
        if not 0 <= self.port <= 65535:
            p.append(f"--port must be in 0..65535 (0 = any free port), got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            p.append("--api-key must not be empty; leave it out to serve without a key")
        for name in ("max_tokens", "max_prompt", "max_n", "max_batch", "max_body"):
            if getattr(self, name) < 1:
                p.append(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.max_queue < 0:
            p.append(f"--max-queue must be >= 0 (0 = no waiting), got {self.max_queue}")
        if self.max_n > self.max_batch:
            p.append(f"--max-n ({self.max_n}) must not exceed --max-batch ({self.max_batch})")
        if self.backend not in ("auto", "torch", "onnx"):
            p.append(f"--backend must be one of auto, torch, onnx, got {self.backend!r}")
        if self.quantize not in ("none", "int8"):
            p.append(f"--quantize must be one of none, int8, got {self.quantize!r}")
        if self.threads < 0:
            p.append(f"--threads must be >= 0 (0 = torch's default), got {self.threads}")
        if not self.timeout > 0:
            p.append(f"--timeout must be > 0 seconds, got {self.timeout}")
        return p
