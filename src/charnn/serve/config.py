"""The settings of `charnn serve`: where it listens and every limit, one flag each.

Kept apart from the app so that the CLI can show the defaults without importing the web
stack (the [serve] extra).
"""

from __future__ import annotations

from dataclasses import dataclass

from charnn.infer.steps import BACKENDS, QUANTIZE
from charnn.settings import field_problems, setting


@dataclass
class ServeConfig:
    """Where to listen and every limit; the `charnn serve` flags map onto these one to one."""

    host: str = setting("127.0.0.1", "address to listen on; anything but loopback is reachable from other machines")
    port: int = setting(8000, "TCP port", note="0 = any free port", ge=0, le=65535)
    api_key: str | None = setting(None, "require 'Authorization: Bearer KEY' on every /v1 route",
                                  shown="$CHARNN_API_KEY, else none", metavar="KEY")
    max_tokens: int = setting(4096, "most characters one choice may ask for", positive=True)
    max_prompt: int = setting(4096, "most characters in one prompt", positive=True)
    max_n: int = setting(16, "most choices in one request (n x prompts)", positive=True)
    max_batch: int = setting(64, "most streams generated together, per model", positive=True)
    max_queue: int = setting(256, "most streams waiting for a place, per model; beyond it: 429 with Retry-After",
                             note="0 = no waiting", ge=0)
    max_body: int = setting(1 << 20, "most bytes in a request body; beyond it: 413", positive=True)
    timeout: float = setting(300.0, "seconds a request may take, queueing included", gt=0)
    device: str = setting("cpu", "torch device: cpu, cuda, cuda:N, mps")
    backend: str = setting("auto", "sampling engine: auto = ONNX Runtime when the run has an export, else torch",
                           choices=BACKENDS)
    quantize: str = setting("none", "int8 = dynamically quantised weights: faster, slightly lower quality",
                            choices=QUANTIZE)
    # 1 by default: the engine thread then keeps one core and the HTTP side the other; on a
    # 2-core machine 32 streams ran ~30 % faster than with 2 threads (README, "Throughput").
    threads: int = setting(1, "CPU threads for the model steps (1 leaves a core to the HTTP side)",
                           note="0 = torch's default", ge=0)

    def problems(self) -> list[str]:
        p = field_problems(self)
        if self.api_key is not None and not self.api_key.strip():
            p.append("--api-key must not be empty; leave it out to serve without a key")
        if self.max_n > self.max_batch:
            p.append(f"--max-n ({self.max_n}) must not exceed --max-batch ({self.max_batch})")
        return p
