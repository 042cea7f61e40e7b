"""Logging that works with no account and no network."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


def wandb_has_credentials() -> bool:
    """True when an API key is configured (environment or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = os.path.expanduser("~/.netrc")
    return os.path.isfile(netrc) and "api.wandb.ai" in open(netrc, encoding="utf-8").read()


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that runs offline unless W&B credentials exist.

    ``offline=None`` (default) picks offline mode when no API key is configured or
    ``WANDB_MODE=offline``; offline runs are uploaded later with ``wandb sync <run dir>``.
    """

    def __init__(self, project: str = "metaspeech", save_dir: str = "runs", offline: bool | None = None, **kwargs: Any) -> None:
        if offline is None:
            offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_has_credentials()
        os.makedirs(save_dir, exist_ok=True)
        super().__init__(project=project, save_dir=save_dir, offline=offline, **kwargs)
