"""Speech recognizers that accept per-task fast weights, and adaptation scopes."""

from metaspeech.engine.scope import PRESETS as SCOPE_PRESETS
from metaspeech.engine.scope import ScopeError, resolve_scope
from metaspeech.engine.staged import StagedModel
from metaspeech.models.asr import BiLSTMCTC, ConformerCTC, CTCRecognizer
from metaspeech.models.recognizer import Recognizer

__all__ = ["BiLSTMCTC", "ConformerCTC", "CTCRecognizer", "Recognizer", "StagedModel", "resolve_scope", "ScopeError", "SCOPE_PRESETS"]
