"""CTC speech recognizers built from stages, with speaker-adaptation hooks in them.

Both recognizers share one layout (stage names in brackets)::

    features [N, frames, F]
      -> [lin]        LinearInputNetwork: per-speaker affine feature transform (identity init)
      -> [subsample]  2 x Conv2d stride 2: frames / 4
      -> [proj]       Linear to d_model + LayerNorm
      -> per layer i: [enc{i}] encoder layer, [lhuc{i}] LHUC scales, [adapter{i}] residual adapter
      -> [head]       Linear to the vocabulary + log_softmax -> log-probs [N, frames/4, V]

The LIN, LHUC, adapter, LayerNorm and head parameters accept per-task fast
weights (see :mod:`metaspeech.models.layers`), so those scopes run all tasks
of a meta-batch in one batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchaudio.models.conformer import ConformerLayer

from metaspeech.models.layers import LHUC, LinearInputNetwork, ResidualAdapter, TaskLayerNorm, TaskLinear
from metaspeech.models.staged import Stage, StagedModel


class ConvSubsampling(nn.Module):
    """Two stride-2 3x3 convolutions: ``[N, frames, F] -> [N, frames', 32 * F']`` with frames' ~ frames / 4."""

    def __init__(self, input_dim: int, channels: int = 32) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2), nn.ReLU(), nn.Conv2d(channels, channels, 3, stride=2), nn.ReLU()
        )
        self.output_dim = channels * (((input_dim - 3) // 2 + 1 - 3) // 2 + 1)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        y = self.conv(x.unsqueeze(1))
        y = y.permute(0, 2, 1, 3).flatten(2)
        for _ in range(2):
            lengths = torch.div(lengths - 3, 2, rounding_mode="floor") + 1
        return y, lengths.clamp(min=1, max=y.shape[1])


class Projection(nn.Module):
    """Linear map to the model width followed by a (per-task adaptable) LayerNorm."""

    def __init__(self, input_dim: int, output_dim: int, dropout: float) -> None:
        super().__init__()
        self.linear = nn.Linear(input_dim, output_dim)
        self.norm = TaskLayerNorm(output_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.norm(self.linear(x)))


class BiLSTMLayer(nn.Module):
    """One bidirectional LSTM layer over padded sequences ``[N, frames, D] -> [N, frames, 2H]``.

    Why two unidirectional LSTMs on padded input instead of one bidirectional LSTM on a
    packed sequence: packing forces PyTorch's per-time-step CPU kernel, whose backward
    is ~6x slower than the fused kernel used for padded input (``benchmarks/``). The
    backward direction reads every sequence reversed *within its own length*, so
    padding never reaches a valid frame, and padded output frames are zeroed: the
    result equals the packed bidirectional LSTM.
    """

    def __init__(self, input_dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.forward_lstm = nn.LSTM(input_dim, hidden_dim, batch_first=True)
        self.backward_lstm = nn.LSTM(input_dim, hidden_dim, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        order = reversed_time_index(lengths, x.shape[1])
        forward, _ = self.forward_lstm(x)
        backward, _ = self.backward_lstm(gather_time(x, order))
        out = torch.cat([forward, gather_time(backward, order)], dim=-1)
        valid = torch.arange(x.shape[1], device=x.device) < lengths.to(x.device)[:, None]
        return self.dropout(out * valid.unsqueeze(-1).to(out.dtype)), lengths


def reversed_time_index(lengths: Tensor, frames: int) -> Tensor:
    """``[N, frames]`` index that reverses each sequence's first ``lengths[n]`` frames and keeps the padding in place."""
    t = torch.arange(frames, device=lengths.device)
    lengths = lengths[:, None]
    return torch.where(t < lengths, lengths - 1 - t, t)


def gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x[n, index[n, t]]`` for ``x`` of shape ``[N, frames, D]``."""
    return torch.gather(x, 1, index.to(x.device).unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class ConformerBlock(nn.Module):
    """torchaudio's ``ConformerLayer`` with a padding mask built from lengths."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.layer = ConformerLayer(dim, ffn_dim, heads, kernel_size, dropout=dropout)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        padding = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        out = self.layer(x.transpose(0, 1), padding)
        return out.transpose(0, 1), lengths


class OutputHead(nn.Module):
    """Linear to the vocabulary and log-softmax: ``[N, frames, H] -> [N, frames, V]``."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.linear = TaskLinear(dim, vocab_size)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return torch.log_softmax(self.linear(x).float(), dim=-1), lengths


class CTCRecognizer(StagedModel):
    """Shared skeleton of the CTC recognizers; subclasses supply the encoder layers."""

    def __init__(
        self,
        vocab_size: int,
        input_dim: int,
        d_model: int,
        encoder_layers: list[nn.Module],
        encoder_dim: int,
        adapter_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.input_dim = input_dim
        subsampling = ConvSubsampling(input_dim)
        stages: dict[str, nn.Module] = {
            "lin": Stage(LinearInputNetwork(input_dim)),
            "subsample": subsampling,
            "proj": Stage(Projection(subsampling.output_dim, d_model, dropout)),
        }
        for i, layer in enumerate(encoder_layers):
            stages[f"enc{i}"] = layer
            stages[f"lhuc{i}"] = Stage(LHUC(encoder_dim))
            if adapter_dim > 0:
                stages[f"adapter{i}"] = Stage(ResidualAdapter(encoder_dim, adapter_dim))
        stages["head"] = OutputHead(encoder_dim, vocab_size)
        self.stages = nn.ModuleDict(stages)

    @property
    def summary_dim(self) -> int:
        return 2 * self.input_dim

    def task_statistics(self, inputs: tuple[Tensor, ...], targets: tuple[Tensor, ...], num_tasks: int) -> Tensor:
        """Mean and standard deviation of each task's input features over all its valid frames.

        ``inputs = (features [T*B, frames, F], lengths [T*B])`` -> ``[T, 2F]``: a cheap
        speaker/channel descriptor in the spirit of statistics pooling.
        """
        features, lengths = inputs[0], inputs[1]
        mask = (torch.arange(features.shape[1], device=features.device)[None, :] < lengths[:, None]).to(features.dtype)
        masked = (features * mask.unsqueeze(-1)).reshape(num_tasks, -1, features.shape[-1])
        squares = (features.pow(2) * mask.unsqueeze(-1)).reshape(num_tasks, -1, features.shape[-1])
        count = mask.reshape(num_tasks, -1).sum(1, keepdim=True).clamp(min=1.0)
        mean = masked.sum(1) / count
        var = (squares.sum(1) / count - mean.pow(2)).clamp(min=1e-6)
        return torch.cat([mean, var.sqrt()], dim=-1)


class BiLSTMCTC(CTCRecognizer):
    """Conv subsampling + BiLSTM encoder + CTC head: the fast default on a CPU.

    Args:
        vocab_size: output symbols including the CTC blank (index 0).
        input_dim: feature dimension F.
        d_model: width after the subsampling projection.
        hidden_dim: LSTM units per direction (encoder width is ``2 * hidden_dim``).
        num_layers: BiLSTM layers, each followed by LHUC and an optional adapter.
        adapter_dim: bottleneck of the residual adapters; 0 disables them.
    """

    def __init__(
        self,
        vocab_size: int = 29,
        input_dim: int = 80,
        d_model: int = 192,
        hidden_dim: int = 160,
        num_layers: int = 3,
        adapter_dim: int = 32,
        dropout: float = 0.1,
    ) -> None:
        layers = [BiLSTMLayer(d_model if i == 0 else 2 * hidden_dim, hidden_dim, dropout) for i in range(num_layers)]
        super().__init__(vocab_size, input_dim, d_model, layers, 2 * hidden_dim, adapter_dim, dropout)


class ConformerCTC(CTCRecognizer):
    """Conv subsampling + torchaudio Conformer layers + CTC head.

    Args mirror :class:`BiLSTMCTC`; ``heads``, ``ffn_dim`` and ``kernel_size`` configure
    torchaudio's ``ConformerLayer``.
    """

    def __init__(
        self,
        vocab_size: int = 29,
        input_dim: int = 80,
        d_model: int = 144,
        num_layers: int = 4,
        heads: int = 4,
        ffn_dim: int = 576,
        kernel_size: int = 15,
        adapter_dim: int = 32,
        dropout: float = 0.1,
    ) -> None:
        layers = [ConformerBlock(d_model, heads, ffn_dim, kernel_size, dropout) for _ in range(num_layers)]
        super().__init__(vocab_size, input_dim, d_model, layers, d_model, adapter_dim, dropout)
