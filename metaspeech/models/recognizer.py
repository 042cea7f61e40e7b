"""A recognizer: a staged model that owns its training loss and its decoder.

Why the loss and the decoder live on the recognizer: both belong to what its last stage
emits. A CTC model emits per-frame log-probs, trained with CTC and read by collapsing
repeats; an attention decoder or a transducer emits something else, with its own loss and
its own search. With both on the recognizer, :class:`~metaspeech.training.module.MetaSpeechModule`,
the :class:`~metaspeech.engine.learner.Learner` it builds, the speaker oracle and the test
protocol work for any recognizer unchanged (docs/architecture.md, "Add a recognizer").
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from torch import Tensor, nn

from metaspeech.engine.staged import StagedModel
from metaspeech.errors import ConfigError

if TYPE_CHECKING:
    from metaspeech.engine.learner import TaskObjective

CONSTRUCTOR_ARGUMENTS = ("vocab_size", "input_dim")
"""Set from the data module by the CLI (``data.vocab_size``, ``data.feature_dim``): every recognizer takes them."""
HEAD_STAGE = "head"
"""The output stage: the ``head`` scope preset adapts ``stages.head.*``."""


class RecognizerContractError(ConfigError):
    """A configured recognizer lacks part of the :class:`Recognizer` contract; the message names what."""


class Recognizer(StagedModel):
    """Base class: a :class:`StagedModel` with :meth:`loss` and :meth:`decode`.

    The contract, checked by :func:`check_recognizer` when a module is built:

    - the constructor takes ``vocab_size`` and ``input_dim`` (:data:`CONSTRUCTOR_ARGUMENTS`);
    - ``stages`` is an ordered ``nn.ModuleDict`` of ``(x, lengths) -> (x, lengths)`` stages, one of them
      named ``head`` (:data:`HEAD_STAGE`), and every parameter lives in a stage (``stages.<name>.``): the
      :class:`~metaspeech.engine.learner.Learner` caches the stages below the first adapted parameter;
    - :meth:`loss` and :meth:`decode` are defined;
    - for the default scope (``[lin, lhuc, head]``) it has LIN and LHUC layers
      (:mod:`metaspeech.engine.layers`); other scopes need only what they name.

    :meth:`loss` and :meth:`decode` read the model's output state (what the last stage returns, flattened
    over tasks: leading dimension ``N = T * B``), so they never run the model themselves.
    """

    def loss(self, output: tuple[Tensor, ...], targets: tuple[Tensor, ...], differentiable: bool) -> Tensor:
        """Per-utterance training loss ``[N]`` (the :class:`~metaspeech.engine.learner.TaskLoss` of the Learner).

        ``targets`` are the batch's flattened targets (for speech ``(tokens [N, S], token_lengths [N])``).
        ``differentiable=True`` asks for a loss with a double backward: second-order algorithms
        differentiate through the inner-loop gradient.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define its training loss")

    def objective(self, name: str) -> "TaskObjective":
        """The label-free adaptation objective ``name`` (a :class:`~metaspeech.engine.learner.TaskObjective`).

        ``supervised`` is :meth:`loss` (the :class:`~metaspeech.engine.learner.Learner` uses it directly); a recognizer
        adds label-free objectives here (``entropy``, ``pseudo_label`` for CTC: :mod:`metaspeech.speech.objectives`),
        so an algorithm adapts without transcripts while knowing nothing of speech.
        """
        raise ConfigError(f"{type(self).__name__} has no label-free adaptation objective {name!r}")

    def decode(self, output: tuple[Tensor, ...]) -> list[list[int]]:
        """Token ids of each utterance, ``N`` lists, from the output state (the tokenizer turns them into text)."""
        raise NotImplementedError(f"{type(self).__name__} does not define its decoder")


def check_recognizer(model: nn.Module) -> None:
    """Raise :class:`RecognizerContractError`, one line naming every missing part, unless ``model`` keeps the
    :class:`Recognizer` contract."""
    name = type(model).__name__
    if not isinstance(model, Recognizer):
        raise RecognizerContractError(f"model.recognizer {name} is not a metaspeech.models.Recognizer: subclass it "
                                      "(docs/architecture.md, 'Add a recognizer')")
    signature = inspect.signature(type(model).__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values())
    missing = [f"constructor argument {a!r}" for a in CONSTRUCTOR_ARGUMENTS if a not in signature and not takes_any]
    stages = getattr(model, "stages", None)
    if not isinstance(stages, nn.ModuleDict):
        missing.append("a 'stages' nn.ModuleDict")
    elif HEAD_STAGE not in stages:
        missing.append(f"a {HEAD_STAGE!r} stage (has {list(stages)})")
    outside = [n for n, _ in model.named_parameters() if not n.startswith("stages.")]
    if outside:
        missing.append(f"parameters inside stages (not {outside[:3]})")
    missing += [f"a {method}() method" for method in ("loss", "decode") if getattr(type(model), method) is getattr(Recognizer, method)]
    if missing:
        raise RecognizerContractError(f"model.recognizer {name} lacks {'; '.join(missing)} (the Recognizer contract, "
                                      "docs/architecture.md, 'Add a recognizer')")
