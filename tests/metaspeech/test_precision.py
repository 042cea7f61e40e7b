"""bf16 autocast on CPUs with and without native bf16 LSTM kernels (metaspeech.speech.precision)."""

from __future__ import annotations

import pytest
import torch

from metaspeech.models import BiLSTMCTC
from metaspeech.speech import precision


def _lstm_output_dtype(model: BiLSTMCTC) -> torch.dtype:
    seen = []
    hook = model.stages["enc0"].forward_lstm.register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        log_probs, _ = model(torch.randn(2, 40, 80), torch.tensor([40, 31]))[:2]
    hook.remove()
    assert torch.isfinite(log_probs.float()).all()
    return seen[0]


def test_forced_fallback_runs_the_lstm_in_float32_inside_bf16_autocast(monkeypatch) -> None:
    monkeypatch.setenv(precision.FORCE_ENV, "float32")
    assert _lstm_output_dtype(BiLSTMCTC(vocab_size=29, input_dim=80, d_model=16, hidden_dim=16, num_layers=1)) == torch.float32


def test_a_cpu_without_bf16_lstm_kernels_takes_the_fallback(monkeypatch) -> None:
    """What an AMD EPYC without AVX-512 does: the probe fails, so the LSTM leaves autocast."""
    monkeypatch.delenv(precision.FORCE_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_has_bf16_lstm", lambda: False)
    assert _lstm_output_dtype(BiLSTMCTC(vocab_size=29, input_dim=80, d_model=16, hidden_dim=16, num_layers=1)) == torch.float32


def test_the_probe_answers_for_this_cpu_and_the_fallback_is_not_taken_outside_autocast(monkeypatch) -> None:
    monkeypatch.setenv(precision.FORCE_ENV, "float32")
    assert isinstance(precision.cpu_has_bf16_lstm(), bool)
    assert not precision.lstm_needs_float32(torch.zeros(1))  # no autocast: float32 and float64 models untouched
    with torch.autocast("cpu", dtype=torch.float16):
        assert not precision.lstm_needs_float32(torch.zeros(1))


def test_an_unknown_mode_names_the_variable(monkeypatch) -> None:
    monkeypatch.setenv(precision.FORCE_ENV, "fp8")
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match=precision.FORCE_ENV):
        precision.lstm_needs_float32(torch.zeros(1))
