"""`--backend native`: one LSTM stream's step as one C call, near the memory-bandwidth limit.

A one-stream step reads every weight once, so its floor is bandwidth / bytes of weights.
torch's matrix products alone come close to it, but a step is ~30 separate torch calls and
those cost as much again (BENCHMARKS.md, "Sampling against the memory-bandwidth limit").
native_lstm.c does the whole step (both matrix products of every layer, the cells, the head)
in one call, its rows split between torch's threads, and hands the logits back to the same
draw as every other path: the same seed gives the same text up to float32 rounding (the
sums run in another order, ~1e-7), as with ONNX Runtime. `sample_steps` goes further for
sampling.generate: 32 characters per call, the draw itself in C on noise rows torch drew.
With `--quantize int8` the matrices are int8 with one scale per row and each layer's input is
quantised on the fly, so the products are exact integer sums (AVX-512 VNNI where the CPU has
it), 4x fewer bytes a step, at a quality cost measured in BENCHMARKS.md; opt-in like every
int8 path.

The kernel is compiled on first use by the machine's C compiler (`$CC`, else cc, gcc or
clang; -O3 -march=native, OpenMP where the compiler has it) into the user's cache
(`$XDG_CACHE_HOME/charnn/native`, else ~/.cache), named by a hash of the source, the
compiler and the CPU, loaded once before it is kept, and written atomically; later loads
reuse it. LSTMs with float32 weights on the CPU only; a batch of several streams goes to the torch step (there the products are
matrix-matrix and torch is the faster). May import errors and files.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

from charnn.errors import CharnnError
from charnn.files import reason

SOURCE = Path(__file__).with_name("native_lstm.c")
# Tried in order: the last needs nothing but a C compiler (one thread, generic code).
FLAG_SETS = (["-fopenmp", "-march=native"], ["-march=native"], [])
BASE_FLAGS = ["-O3", "-fno-math-errno", "-shared", "-fPIC"]


POINTERS = ("table", "w0", "w", "b", "wh", "bh", "q0", "q", "qh", "s0", "s", "sh", "r0", "r", "rh")


class _Model(ctypes.Structure):  # native_lstm.c's charnn_lstm
    _fields_ = [(name, ctypes.c_int) for name in ("layers", "hidden", "vocab", "int8")] + [
        (name, ctypes.c_void_p) for name in POINTERS
    ]


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 rows and one float32 scale per row (symmetric: the row's largest |w| becomes 127)."""
    scale = w.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale.float()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "charnn" / "native"


def compiler() -> str:
    """The C compiler to build with: $CC, else the first of cc, gcc, clang on the PATH."""
    cc = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if not cc:
        raise CharnnError("--backend native compiles a small C kernel on first use and found no C compiler "
                          "(cc, gcc or clang; or set CC); use --backend torch")
    return cc


def _cpu() -> str:
    """What -march=native depends on: the CPU's model and feature flags where Linux says them."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(dict.fromkeys(lines))
    except OSError:
        return platform.processor() or platform.machine()


def _version(cc: str) -> str:
    try:
        done = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise CharnnError(f"--backend native: cannot run the C compiler {cc!r}: {reason(e)}; "
                          f"set CC or use --backend torch") from None
    return done.stdout + done.stderr


def build() -> Path:
    """The compiled kernel for this machine: from the cache, else compiled now (atomically)."""
    cc = compiler()
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, _version(cc).encode(), _cpu().encode()])).hexdigest()[:20]
    out = cache_dir() / f"lstm-{key}.so"
    if out.is_file():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CharnnError(f"--backend native: cannot create {out.parent}: {reason(e)}") from None
    errors = ""
    for flags in FLAG_SETS:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        try:
            done = subprocess.run([cc, *BASE_FLAGS, *flags, str(SOURCE), "-o", tmp, "-lm"],
                                  capture_output=True, text=True, timeout=300)
            if done.returncode == 0:
                ctypes.CDLL(tmp)  # loads (every symbol bound now), or OSError: the next flags
                os.replace(tmp, out)  # concurrent builds each write their own file; either wins
                return out
            errors = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        except (OSError, subprocess.SubprocessError) as e:
            errors = reason(e)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise CharnnError(f"--backend native: the C compiler {cc!r} could not build the kernel ({errors}); "
                      f"use --backend torch")


@cache
def _library(path: str):
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise CharnnError(f"--backend native: cannot load {path}: {reason(e)}; delete it to rebuild") from None
    step, generate = lib.charnn_lstm_step, lib.charnn_lstm_generate
    step.argtypes = [ctypes.POINTER(_Model), ctypes.c_int] + [ctypes.c_void_p] * 6 + [ctypes.c_int]
    step.restype = None
    generate.argtypes = ([ctypes.POINTER(_Model), ctypes.c_int, ctypes.c_void_p, ctypes.c_float]
                         + [ctypes.c_void_p] * 9 + [ctypes.c_int])
    generate.restype = ctypes.c_int
    return step, generate


class NativeLSTMStep:
    """`(ids (1,), h (L, 1, H), c (L, 1, H)) -> (logits (1, V), h, c)` of a FusedStep of an
    LSTM, run by native_lstm.c. Holds its own contiguous copy of the weights: float32, or with
    `quantize="int8"` every matrix in int8 with one scale per row (`quantize_rows`; the input
    table and the biases stay float32) and its row sums, for the kernel's integer products."""

    def __init__(self, step, quantize: str = "none") -> None:
        if step.kind != "lstm":
            raise CharnnError(f"--backend native runs LSTMs; this model is a {step.kind}: use --backend torch")
        with torch.no_grad():
            parts = [step.table, step.first.weight] + [t for lin in step.deeper for t in (lin.weight, lin.bias)]
            if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in parts):
                raise CharnnError("--backend native runs float32 weights on the CPU; use --backend torch")
            H, L = step.hidden, step.layers
            stacked = {  # the deeper layers' matrices and biases, one after another
                "w": torch.cat([lin.weight for lin in step.deeper]) if step.deeper else torch.zeros(0, 2 * H),
                "b": torch.cat([lin.bias for lin in step.deeper]) if step.deeper else torch.zeros(0),
            }
            arrays = {"table": step.table, "b": stacked["b"], "bh": step.head.bias}
            matrices = {"w0": step.first.weight, "w": stacked["w"], "wh": step.head.weight}
            for name, w in matrices.items():
                if quantize == "int8":
                    q, arrays[f"s{name[1:]}"] = quantize_rows(w.detach().float())
                    arrays[f"q{name[1:]}"], arrays[f"r{name[1:]}"] = q, q.sum(dim=1, dtype=torch.int32)
                else:
                    arrays[name] = w
            self._keep = {k: t.detach().contiguous().clone() for k, t in arrays.items()}
        self.layers, self.hidden, self.vocab = L, H, step.head.out_features
        self._model = _Model(L, H, self.vocab, int(quantize == "int8"),
                             *(self._keep[k].data_ptr() if k in self._keep else None for k in POINTERS))
        self._ref = ctypes.byref(self._model)
        self._fn, self._generate = _library(str(build()))

    def _check_state(self, h: torch.Tensor, c: torch.Tensor) -> None:
        """The kernel reads layers x H floats of each: a state of another size is refused here."""
        if h.numel() != self.layers * self.hidden or c.numel() != h.numel():
            raise ValueError(f"the state must be ({self.layers}, 1, {self.hidden}) twice")

    def __call__(self, ids: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        i = ids.item()
        if not 0 <= i < self.vocab:
            raise ValueError(f"id {i} outside the vocabulary (0..{self.vocab - 1})")
        self._check_state(h, c)
        if h.dtype != torch.float32 or not h.is_contiguous():
            h = h.float().contiguous()
        if c.dtype != torch.float32 or not c.is_contiguous():
            c = c.float().contiguous()
        h_out, c_out = torch.empty_like(h), torch.empty_like(c)
        logits, xh = torch.empty(1, self.vocab), torch.empty(2 * self.hidden)
        self._fn(self._ref, i, h.data_ptr(), c.data_ptr(), h_out.data_ptr(), c_out.data_ptr(),
                 logits.data_ptr(), xh.data_ptr(), torch.get_num_threads())
        return logits, h_out, c_out

    def sample_steps(self, last: torch.Tensor, state, noise: torch.Tensor, temperature: float,
                     banned: torch.Tensor):
        """Up to K characters of sampling.generate's uncut draw for one stream, in one C call:
        from the logits `last` (1, V), draw with noise row k (K, V) at `temperature` (a float32
        value > 0; `banned` (V,) uint8 marks ids never drawn), then step the drawn id.
        Returns (ids (k,) int64, logits (1, V), (h, c)) after the k draws made: k < K where row
        k is one float32 cannot carry, which the caller draws as sample_next would."""
        h, c = (t.float().contiguous().clone() for t in state)
        logits = last.float().reshape(-1).contiguous().clone()
        noise = noise.float().contiguous()
        if logits.numel() != self.vocab or noise.shape[1:] != (self.vocab,) or banned.numel() != self.vocab:
            raise ValueError("logits, noise and banned must be over the vocabulary")
        self._check_state(h, c)
        banned = banned.to(torch.uint8).contiguous()
        ids = torch.empty(noise.shape[0], dtype=torch.int32)
        h2, c2, xh, work = torch.empty_like(h), torch.empty_like(c), torch.empty(2 * self.hidden), torch.empty(self.vocab)
        done = self._generate(self._ref, noise.shape[0], noise.data_ptr(), temperature, banned.data_ptr(),
                              logits.data_ptr(), h.data_ptr(), c.data_ptr(), h2.data_ptr(), c2.data_ptr(),
                              xh.data_ptr(), work.data_ptr(), ids.data_ptr(), torch.get_num_threads())
        return ids[:done].long(), logits.view(1, self.vocab), (h, c)
