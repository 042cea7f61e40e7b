"""Layers whose adaptable weights may carry a leading task dimension.

During meta-training all T tasks of a meta-batch run as one batch: activations
are ``[T * B, ...]`` and a fast weight is either shared (its usual shape) or
per task (``[T, *shape]``). The layers below detect per-task weights by their
extra leading dimension and apply task t's weights to rows ``t*B:(t+1)*B``.
Layers outside this module (LSTM, convolution) only run with shared weights; the
:class:`~metaspeech.engine.learner.Learner` falls back to a per-task loop when such a
layer is in the adaptation scope.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TaskBatchable:
    """Marker: every parameter of this module may carry a leading task dimension."""


def split_tasks(x: Tensor, num_tasks: int) -> Tensor:
    """``[T * B, ...] -> [T, B, ...]``."""
    return x.reshape(num_tasks, x.shape[0] // num_tasks, *x.shape[1:])


def per_task_affine(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight.T + bias`` where weight is ``[out, in]`` or per task ``[T, out, in]``.

    x: ``[N, ..., in]`` with ``N = T * B``; returns ``[N, ..., out]``.
    """
    if weight.dim() == 2:
        return nn.functional.linear(x, weight, bias)
    num_tasks = weight.shape[0]
    shape = x.shape
    flat = x.reshape(num_tasks, -1, shape[-1])
    out = torch.baddbmm(bias.unsqueeze(1), flat, weight.transpose(1, 2)) if bias is not None else flat @ weight.transpose(1, 2)
    return out.reshape(*shape[:-1], weight.shape[1])


def per_task_scale(x: Tensor, scale: Tensor) -> Tensor:
    """``x * scale`` over the last dim; scale is ``[H]`` or per task ``[T, H]``. x: ``[N, ..., H]``."""
    if scale.dim() == 1:
        return x * scale
    return (split_tasks(x, scale.shape[0]) * _broadcastable(scale, x.dim())).reshape(x.shape)


def per_task_shift(x: Tensor, shift: Tensor) -> Tensor:
    """``x + shift`` over the last dim; shift is ``[H]`` or per task ``[T, H]``. x: ``[N, ..., H]``."""
    if shift.dim() == 1:
        return x + shift
    return (split_tasks(x, shift.shape[0]) + _broadcastable(shift, x.dim())).reshape(x.shape)


def _broadcastable(per_task: Tensor, x_dim: int) -> Tensor:
    """``[T, H] -> [T, 1, ..., 1, H]`` matching ``split_tasks`` of an ``x_dim``-dim tensor."""
    return per_task.reshape(per_task.shape[0], *([1] * (x_dim - 1)), per_task.shape[-1])


class TaskLinear(nn.Linear, TaskBatchable):
    """``nn.Linear`` that also accepts per-task weights ``[T, out, in]`` / bias ``[T, out]``."""

    def forward(self, x: Tensor) -> Tensor:
        return per_task_affine(x, self.weight, self.bias)


class LinearInputNetwork(TaskLinear):
    """Per-speaker affine transform of the input features (LIN, the fMLLR-style transform).

    Initialized to the identity so an unadapted model is unchanged by it.
    x: ``[N, frames, F] -> [N, frames, F]``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim, dim)
        with torch.no_grad():
            self.weight.copy_(torch.eye(dim))
            self.bias.zero_()


class LHUC(nn.Module, TaskBatchable):
    """Learning Hidden Unit Contributions (Swietojanski et al., 2016).

    Each hidden unit's output is scaled by ``2 * sigmoid(r)``, with ``r = 0`` (scale 1)
    at initialization; adapting only ``r`` is a classic small speaker-adaptation scope.
    x: ``[N, ..., H] -> [N, ..., H]``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return per_task_scale(x, 2.0 * torch.sigmoid(self.scale))


class ResidualAdapter(nn.Module, TaskBatchable):
    """Bottleneck adapter ``x + up(relu(down(norm(x))))`` (Houlsby et al., 2019).

    ``up`` is zero-initialized, so the adapter starts as the identity.
    x: ``[N, ..., H] -> [N, ..., H]``.
    """

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = TaskLinear(dim, bottleneck)
        self.up = TaskLinear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(torch.relu(self.down(x)))


class TaskLayerNorm(nn.LayerNorm, TaskBatchable):
    """``nn.LayerNorm`` whose affine weight/bias may be per task (``[T, H]``)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.weight is None or self.weight.dim() == 1:
            return super().forward(x)
        normed = nn.functional.layer_norm(x, self.normalized_shape, None, None, self.eps)
        return per_task_shift(per_task_scale(normed, self.weight), self.bias)
