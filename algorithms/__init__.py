"""Algorithm plugins. Select one from YAML by class path, e.g. ``metaspeech.algorithms.MAML``."""

from metaspeech.algorithms.base import Adaptation, InnerGradientOverflowError, MetaAlgorithm, NonFiniteLossError, OuterResult
from metaspeech.algorithms.hyperinit import HyperInit
from metaspeech.algorithms.joint import JointTraining
from metaspeech.algorithms.maml import FOMAML, MAML
from metaspeech.algorithms.metasgd import MetaSGD
from metaspeech.algorithms.reptile import Reptile

__all__ = [
    "Adaptation",
    "FOMAML",
    "HyperInit",
    "InnerGradientOverflowError",
    "JointTraining",
    "MAML",
    "MetaAlgorithm",
    "MetaSGD",
    "NonFiniteLossError",
    "OuterResult",
    "Reptile",
]
