"""bf16 autocast on any CPU: LSTMs fall back to float32 where oneDNN has no bf16 kernel.

Why: under ``--trainer.precision=bf16-mixed`` on a CPU, autocast runs ``nn.LSTM`` in
bfloat16 through oneDNN. On CPUs without native bf16 support (e.g. AMD EPYC without
AVX-512) oneDNN "could not create a primitive descriptor for the LSTM forward
propagation primitive" and the run crashes deep inside torch. There, every LSTM runs
in float32 with autocast switched off around it; the rest of the model stays in bf16.

Whether the kernel exists is found by running a tiny LSTM once (cached), not guessed
from CPU flags. ``METASPEECH_CPU_BF16_LSTM=float32`` forces the fallback (tests run it
on every machine), ``=bfloat16`` forces the native kernel.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor, nn

FORCE_ENV = "METASPEECH_CPU_BF16_LSTM"
MODES = ("auto", "float32", "bfloat16")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16_lstm() -> bool:
    """True when a bf16 LSTM forward and backward run on this CPU (probed once)."""
    lstm = nn.LSTM(4, 4, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = lstm(torch.randn(1, 3, 4, requires_grad=True))
        out.float().sum().backward()
    except RuntimeError:
        return False
    return True


def lstm_needs_float32(x: Tensor) -> bool:
    """True when an LSTM applied to ``x`` must leave CPU bf16 autocast and run in float32."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return False
    if torch.get_autocast_dtype("cpu") != torch.bfloat16:
        return False
    mode = os.environ.get(FORCE_ENV, "auto")
    if mode not in MODES:
        raise ValueError(f"{FORCE_ENV}={mode!r}: choose one of {MODES}")
    if mode != "auto":
        return mode == "float32"
    return not cpu_has_bf16_lstm()


HALF_DTYPES = (torch.float16, torch.bfloat16)


def full_precision(x: Tensor) -> Tensor:
    """``x`` in float32 when autocast left it in half precision, else unchanged.

    Why: log-softmax and CTC need float32 under autocast, but a float64 model must stay
    float64 end to end, or float64 meta-gradient checks only hold to float32 precision.
    """
    return x.float() if x.dtype in HALF_DTYPES else x
