"""The settings of `charnn serve`: where it listens and every limit, one flag each.

Kept apart from the app so that the CLI can show the defaults without importing the web
stack (the [serve] extra).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from charnn.infer.steps import BACKENDS, QUANTIZE
from charnn.settings import field_problems, setting

# The names a server bound to loopback answers to by default (with any port): a web page that
# makes its own name resolve to 127.0.0.1 (DNS rebinding) still sends that name as its Host.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")  # a host name or an IPv4 address
_WHITESPACE = " \t\r\n\f\v"  # what a key read from a file or a variable may carry around it


def is_loopback(host: str) -> bool:
    """Whether an address (or "localhost") is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str | None:
    """A host name or address as compared: lower case, without a trailing dot, IPv6 in brackets
    ("::1" -> "[::1]"); None for anything else (a scheme, a port, a path, other characters)."""
    value = value.strip().lower()
    if ":" in value:
        try:
            return f"[{ipaddress.IPv6Address(value.removeprefix('[').removesuffix(']'))}]"
        except ValueError:
            return None
    value = value.removesuffix(".")
    return value if _NAME.fullmatch(value) else None


@dataclass
class ServeConfig:
    """Where to listen and every limit; the `charnn serve` flags map onto these one to one."""

    host: str = setting("127.0.0.1", "address to listen on; anything but loopback is reachable from other machines")
    port: int = setting(8000, "TCP port", note="0 = any free port", ge=0, le=65535)
    api_key: str | None = setting(None, "require 'Authorization: Bearer KEY' on every route but the page (/) and "
                                  "/health; printable ASCII (as HTTP headers carry it), surrounding whitespace "
                                  "stripped (a key file's newline)", shown="$CHARNN_API_KEY, else none", metavar="KEY")
    allowed_hosts: list[str] = setting([], "host names the server answers to, with any port (* = any); a request "
                                       "with another Host header gets 400, so that a web page cannot reach a local "
                                       "server by pointing its own name here (DNS rebinding)",
                                       shown="localhost,127.0.0.1,[::1] and --host when --host is loopback, else *",
                                       metavar="HOSTS")
    max_tokens: int = setting(4096, "most characters one choice may ask for", positive=True)
    max_prompt: int = setting(4096, "most characters in one prompt", positive=True)
    max_n: int = setting(16, "most choices in one request (n x prompts)", positive=True)
    max_batch: int = setting(64, "most streams generated together, per model", positive=True)
    max_queue: int = setting(256, "most streams waiting for a place, per model; beyond it: 429 with Retry-After",
                             note="0 = no waiting", ge=0)
    max_body: int = setting(1 << 20, "most bytes in a request body; beyond it: 413", positive=True)
    timeout: float = setting(300.0, "seconds a request may take, queueing included", gt=0)
    device: str = setting("cpu", "torch device: cpu, cuda, cuda:N, mps")
    backend: str = setting("auto", "sampling engine: auto = ONNX Runtime when the run has an export, else torch; "
                           "native = one LSTM stream in a C kernel compiled on first use", choices=BACKENDS)
    quantize: str = setting("none", "int8 = dynamically quantised weights: faster, slightly lower quality",
                            choices=QUANTIZE)
    # 1 by default: the engine thread then keeps one core and the HTTP side the other; on a
    # 2-core machine 32 streams ran ~30 % faster than with 2 threads (README, "Throughput").
    threads: int = setting(1, "CPU threads for the model steps (1 leaves a core to the HTTP side)",
                           note="0 = torch's default", ge=0)

    def __post_init__(self) -> None:
        if self.api_key is not None:
            self.api_key = self.api_key.strip(_WHITESPACE)

    def problems(self) -> list[str]:
        p = field_problems(self)
        if self.api_key is not None and not self.api_key:
            p.append("--api-key must not be empty; leave it out to serve without a key")
        elif self.api_key is not None:
            bad = next((i for i, c in enumerate(self.api_key) if not " " <= c <= "~"), None)
            if bad is not None:  # named by position: the key itself never goes into a message or a log
                p.append(f"--api-key must be printable ASCII (letters, digits, punctuation, spaces), the only "
                         f"characters an HTTP header carries reliably; its character {bad + 1} is not")
        odd = [h for h in self.allowed_hosts if h != "*" and host_name(h) is None]
        if odd:
            p.append(f"--allowed-hosts takes host names or addresses without a scheme, port or path (any port "
                     f"is allowed), e.g. localhost,example.com,[::1], or * for any; got {odd[0]!r}")
        if self.max_n > self.max_batch:
            p.append(f"--max-n ({self.max_n}) must not exceed --max-batch ({self.max_batch})")
        return p

    def host_allow_list(self) -> frozenset[str] | None:
        """The Host names answered (compared by host_name), or None for any."""
        if "*" in self.allowed_hosts:
            return None
        if self.allowed_hosts:
            return frozenset(host_name(h) for h in self.allowed_hosts)
        if not is_loopback(self.host):  # reachable by address anyway; exposure_warning says so
            return None
        return frozenset([*LOOPBACK_NAMES, host_name(self.host) or self.host])
