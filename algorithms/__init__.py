"""Algorithm plugins. Select one from YAML by class path, e.g. ``metaspeech.algorithms.MAML``."""

from metaspeech.algorithms.hyperinit import HyperInit
from metaspeech.algorithms.joint import JointTraining
from metaspeech.algorithms.maml import FOMAML, MAML
from metaspeech.algorithms.metasgd import MetaSGD
from metaspeech.algorithms.reptile import Reptile
from metaspeech.engine.algorithm import Adaptation, MetaAlgorithm, OuterResult
from metaspeech.engine.inner_loop import InnerGradientOverflowError, InnerLoop, NonFiniteLossError

SHIPPED: dict[str, str] = {
    "maml": "maml.yaml",
    "fomaml": "fomaml.yaml",
    "reptile": "reptile.yaml",
    "hyperinit": "hyperinit.yaml",
    "metasgd": "metasgd.yaml",
    "anil": "anil.yaml",
    "joint": "joint.yaml",
}
"""The shipped algorithms, by name, and their configs under ``configs/``: the one list the demo and the
benchmarks compare (``joint`` is the joint-training baseline)."""

__all__ = [
    "Adaptation",
    "FOMAML",
    "HyperInit",
    "InnerGradientOverflowError",
    "InnerLoop",
    "JointTraining",
    "MAML",
    "MetaAlgorithm",
    "MetaSGD",
    "NonFiniteLossError",
    "OuterResult",
    "Reptile",
    "SHIPPED",
]
