"""User-facing errors: bad data, bad configuration, unusable checkpoints.

Why a marker base class: the ``metaspeech`` command prints these as one line
(type and message, exit status 2) instead of a traceback, because their message
already names the file, speaker or config key and what to do. Every other
exception is a bug and keeps its traceback. ``--debug`` (or ``METASPEECH_DEBUG=1``)
shows the traceback of user-facing errors too.

Each class also derives from the builtin a caller would catch without knowing
metaspeech (``ValueError``, ``FileNotFoundError``, ...), so library users keep
their ``except ValueError`` clauses.
"""

from __future__ import annotations


class MetaSpeechError(Exception):
    """Marker: an error in the user's input, reported by the CLI without a traceback."""


class ConfigError(MetaSpeechError, ValueError):
    """A configuration value is invalid or contradicts another one; the message names the key."""


class DataError(MetaSpeechError, ValueError):
    """A corpus, manifest, file or speaker cannot be used; the message names it and the fix."""


class TrainingStalledError(MetaSpeechError, RuntimeError):
    """A fit skipped too many non-finite outer steps in a row to make progress; the message names the fix."""
