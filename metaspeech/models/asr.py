"""CTC speech recognizers built from stages, with speaker-adaptation hooks in them.

Each owns its loss and decoder (:class:`~metaspeech.models.recognizer.Recognizer`): CTC
on the head's log-probs, and best-path decoding.

Both recognizers share one layout (stage names in brackets)::

    features [N, frames, F]
      -> [lin]        LinearInputNetwork: per-speaker affine feature transform (identity init)
      -> [subsample]  2 x Conv2d stride 2: frames / 4
      -> [proj]       Linear to d_model + LayerNorm
      -> per layer i: [enc{i}] encoder layer, [lhuc{i}] LHUC scales, [adapter{i}] residual adapter
      -> [head]       Linear to the vocabulary + log_softmax -> log-probs [N, frames/4, V]

The LIN, LHUC, adapter, LayerNorm and head parameters accept per-task fast
weights (see :mod:`metaspeech.engine.layers`), so those scopes run all tasks
of a meta-batch in one batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metaspeech.engine.layers import LHUC, LinearInputNetwork, ResidualAdapter, TaskLayerNorm, TaskLinear
from metaspeech.engine.staged import Stage
from metaspeech.models.recognizer import Recognizer
from metaspeech.speech.ctc import greedy_decode
from metaspeech.speech.losses import CTCLoss
from metaspeech.speech.objectives import ctc_objective
from metaspeech.speech.precision import full_precision, lstm_needs_float32


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
        if lstm_needs_float32(x):  # a CPU without bf16 LSTM kernels, under bf16 autocast (metaspeech.speech.precision)
            with torch.autocast("cpu", enabled=False):
                forward, _ = self.forward_lstm(x.float())
                backward, _ = self.backward_lstm(gather_time(x.float(), order))
        else:
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


class FeedForward(nn.Module):
    """Pre-norm Conformer feed-forward module: ``[N, frames, D] -> [N, frames, D]``, per frame."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            TaskLayerNorm(dim), nn.Linear(dim, hidden_dim), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim), nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvolutionModule(nn.Module):
    """Conformer convolution module with per-frame LayerNorm and masked padding.

    ``x [N, frames, D]``, ``padding [N, frames]`` (True on padded frames) -> ``[N, frames, D]``.
    Padded frames are zeroed before the depthwise convolution, so they never reach valid frames.
    """

    def __init__(self, dim: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd so the convolution keeps every frame centred, got {kernel_size}")
        self.norm = TaskLayerNorm(dim)
        self.pointwise_in = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.depthwise_norm = TaskLayerNorm(dim)
        self.pointwise_out = nn.Conv1d(dim, dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        h = nn.functional.glu(self.pointwise_in(self.norm(x).transpose(1, 2)), dim=1)
        h = self.depthwise(h.masked_fill(padding[:, None, :], 0.0))
        h = nn.functional.silu(self.depthwise_norm(h.transpose(1, 2)))
        return self.dropout(self.pointwise_out(h.transpose(1, 2)).transpose(1, 2))


class ConformerBlock(nn.Module):
    """A Conformer layer (Gulati et al., 2020): half feed-forward, self-attention, convolution, half feed-forward.

    The structure of torchaudio's ``ConformerLayer``, with one difference that matters here:
    every utterance is processed as if it were alone in the batch. The engine runs all tasks
    of a meta-batch as one batch, so torchaudio's BatchNorm (statistics over the batch, padding
    included) would couple tasks, break "each task's gradient is its own slice", and its double
    backward gives NaN under fp16. This block normalizes each frame with LayerNorm and masks
    padding in attention and convolution. Its LayerNorms take per-task weights, so the
    ``norm`` scope runs all tasks as one batch.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.ffn1 = FeedForward(dim, ffn_dim, dropout)
        self.attention_norm = TaskLayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attention_dropout = nn.Dropout(dropout)
        self.convolution = ConvolutionModule(dim, kernel_size, dropout)
        self.ffn2 = FeedForward(dim, ffn_dim, dropout)
        self.final_norm = TaskLayerNorm(dim)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        padding = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
        x = x + 0.5 * self.ffn1(x)
        h = self.attention_norm(x)
        h = self.attention(h, h, h, key_padding_mask=padding, need_weights=False)[0]
        x = x + self.attention_dropout(h)
        x = x + self.convolution(x, padding)
        x = x + 0.5 * self.ffn2(x)
        return self.final_norm(x), lengths


class OutputHead(nn.Module):
    """Linear to the vocabulary and log-softmax: ``[N, frames, H] -> [N, frames, V]``."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.linear = TaskLinear(dim, vocab_size)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return torch.log_softmax(full_precision(self.linear(x)), dim=-1), lengths  # float32 under autocast


class CTCRecognizer(Recognizer):
    """Shared skeleton of the CTC recognizers; subclasses supply the encoder layers.

    The output state is ``(log_probs [N, frames, V], frame_lengths [N])``; token 0 is the CTC
    blank (as in every :mod:`metaspeech.speech.tokenizer`).
    """

    blank = 0

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

    def loss(self, output: tuple[Tensor, ...], targets: tuple[Tensor, ...], differentiable: bool) -> Tensor:
        """CTC per utterance ``[N]``, divided by its target length (:class:`~metaspeech.speech.losses.CTCLoss`)."""
        return CTCLoss(self.blank)(output, targets, differentiable)

    def objective(self, name: str):  # type: ignore[no-untyped-def]
        """A label-free objective: ``entropy``, ``entropy_mcc`` or ``pseudo_label`` (:mod:`metaspeech.speech.objectives`)."""
        return ctc_objective(name, self.blank)

    def decode(self, output: tuple[Tensor, ...]) -> list[list[int]]:
        """Best-path CTC decoding: argmax per frame, repeats collapsed, blanks dropped."""
        return greedy_decode(output[0], output[1], self.blank)

    @property
    def summary_dim(self) -> int:
        return 2 * self.input_dim

    def task_statistics(
        self, inputs: tuple[Tensor, ...], targets: tuple[Tensor, ...], num_tasks: int, statistics: Tensor | None = None
    ) -> Tensor:
        """Mean and standard deviation of each task's features: a speaker/channel descriptor ``[T, 2F]``
        in the spirit of statistics pooling.

        With ``statistics [T*B, 2F]`` (each utterance's feature mean and std *before*
        normalization, from the data pipeline) it is their average over the task's utterances.
        Without them it is computed from ``inputs = (features [T*B, frames, F], lengths [T*B])``
        over all valid frames; after per-utterance CMVN that is the same for every speaker.
        """
        if statistics is not None:
            return statistics.reshape(num_tasks, -1, statistics.shape[-1]).mean(dim=1).to(inputs[0].dtype)
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
    """Conv subsampling + Conformer layers (:class:`ConformerBlock`) + CTC head.

    Args mirror :class:`BiLSTMCTC`; ``heads``, ``ffn_dim`` and ``kernel_size`` (odd) configure
    each :class:`ConformerBlock`.
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
