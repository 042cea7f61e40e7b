"""A recognizer: a staged model that owns its training loss and its decoder.

Why the loss and the decoder live on the recognizer: both belong to what its last stage
emits. A CTC model emits per-frame log-probs, trained with CTC and read by collapsing
repeats; an attention decoder or a transducer emits something else, with its own loss and
its own search. With both on the recognizer, :class:`~metaspeech.module.MetaSpeechModule`,
the :class:`~metaspeech.learner.Learner` it builds, the speaker oracle and the test
protocol work for any recognizer unchanged (docs/architecture.md, "Add a recognizer").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from metaspeech.errors import ConfigError
from metaspeech.models.staged import StagedModel

if TYPE_CHECKING:
    from metaspeech.learner import TaskObjective


class Recognizer(StagedModel):
    """Base class: a :class:`StagedModel` with :meth:`loss` and :meth:`decode`.

    Both read the model's output state (what the last stage returns, flattened over tasks:
    leading dimension ``N = T * B``), so they never run the model themselves.
    """

    def loss(self, output: tuple[Tensor, ...], targets: tuple[Tensor, ...], differentiable: bool) -> Tensor:
        """Per-utterance training loss ``[N]`` (the :class:`~metaspeech.learner.TaskLoss` of the Learner).

        ``targets`` are the batch's flattened targets (for speech ``(tokens [N, S], token_lengths [N])``).
        ``differentiable=True`` asks for a loss with a double backward: second-order algorithms
        differentiate through the inner-loop gradient.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define its training loss")

    def objective(self, name: str) -> "TaskObjective":
        """The label-free adaptation objective ``name`` (a :class:`~metaspeech.learner.TaskObjective`).

        ``supervised`` is :meth:`loss` (the :class:`~metaspeech.learner.Learner` uses it directly); a recognizer
        adds label-free objectives here (``entropy``, ``pseudo_label`` for CTC: :mod:`metaspeech.objectives`),
        so an algorithm adapts without transcripts while knowing nothing of speech.
        """
        raise ConfigError(f"{type(self).__name__} has no label-free adaptation objective {name!r}")

    def decode(self, output: tuple[Tensor, ...]) -> list[list[int]]:
        """Token ids of each utterance, ``N`` lists, from the output state (the tokenizer turns them into text)."""
        raise NotImplementedError(f"{type(self).__name__} does not define its decoder")

