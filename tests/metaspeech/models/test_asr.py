"""Recognizer building blocks: shapes, padding that never leaks, and the fast BiLSTM equal to the packed one."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from metaspeech.models import BiLSTMCTC, ConformerCTC
from metaspeech.models.asr import BiLSTMLayer, reversed_time_index


def test_reversed_time_index_reverses_only_the_valid_frames() -> None:
    index = reversed_time_index(torch.tensor([3, 5, 1]), 5)
    assert index.tolist() == [[2, 1, 0, 3, 4], [4, 3, 2, 1, 0], [0, 1, 2, 3, 4]]


def test_bilstm_layer_equals_a_packed_bidirectional_lstm() -> None:
    torch.manual_seed(0)
    layer = BiLSTMLayer(6, 5, dropout=0.0)
    reference = torch.nn.LSTM(6, 5, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(reference, name).copy_(getattr(layer.forward_lstm, name))
            getattr(reference, name + "_reverse").copy_(getattr(layer.backward_lstm, name))
    x, lengths = torch.randn(4, 9, 6, dtype=torch.float64), torch.tensor([9, 4, 7, 1])
    layer, reference = layer.double(), reference.double()
    out, out_lengths = layer(x, lengths)
    packed, _ = reference(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    expected, _ = pad_packed_sequence(packed, batch_first=True, total_length=9)
    torch.testing.assert_close(out, expected)
    assert torch.equal(out_lengths, lengths)


def test_bilstm_layer_padding_never_reaches_valid_frames() -> None:
    torch.manual_seed(0)
    layer = BiLSTMLayer(4, 3, dropout=0.0)
    x, lengths = torch.randn(2, 6, 4), torch.tensor([6, 3])
    noisy = x.clone()
    noisy[1, 3:] = 100.0
    torch.testing.assert_close(layer(x, lengths)[0], layer(noisy, lengths)[0])
    assert layer(noisy, lengths)[0][1, 3:].abs().max() == 0


@pytest.mark.parametrize("model_class", [BiLSTMCTC, ConformerCTC])
def test_recognizer_output_shapes_and_log_probabilities(model_class) -> None:
    torch.manual_seed(0)
    model = model_class(vocab_size=29, input_dim=40, d_model=32, num_layers=2, adapter_dim=4, **(
        {"hidden_dim": 24} if model_class is BiLSTMCTC else {"heads": 2, "ffn_dim": 48}))
    features, lengths = torch.randn(3, 101, 40), torch.tensor([101, 80, 33])
    log_probs, out_lengths = model(features, lengths)[:2]
    assert log_probs.shape == (3, 24, 29)
    assert out_lengths.tolist() == [24, 19, 7]
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 24))
    stages = list(model.stages)
    assert stages[:3] == ["lin", "subsample", "proj"] and stages[-1] == "head" and "lhuc1" in stages


@pytest.mark.parametrize("model_class", [BiLSTMCTC, ConformerCTC])
def test_each_utterance_is_recognized_as_if_it_were_alone_in_the_batch(model_class) -> None:
    """The engine runs all tasks of a meta-batch as one batch: nothing may couple examples or leak padding.

    Checked in training mode (no dropout), where batch statistics would couple examples.
    """
    torch.manual_seed(0)
    model = model_class(vocab_size=29, input_dim=40, d_model=32, num_layers=2, adapter_dim=4, dropout=0.0, **(
        {"hidden_dim": 24} if model_class is BiLSTMCTC else {"heads": 2, "ffn_dim": 48, "kernel_size": 5})).train()
    features, lengths = torch.randn(3, 101, 40), torch.tensor([101, 80, 33])
    features[1, 80:] = 7.0  # padding content must not matter either
    batched, out_lengths = model(features, lengths)[:2]
    for i in range(3):
        alone = model(features[i : i + 1, : lengths[i]], lengths[i : i + 1])[0][0]
        torch.testing.assert_close(batched[i, : out_lengths[i]], alone, atol=1e-5, rtol=1e-5)
