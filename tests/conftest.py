"""Shared fixtures: the tiny embedded corpus (synthesized once per test session) and tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL_ARGS = {"d_model": 48, "hidden_dim": 48, "num_layers": 2, "adapter_dim": 8, "dropout": 0.0}


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root folder holding the generated ``tiny`` corpus (seed 0)."""
    from metaspeech.datamodules.embedded import generate_corpus

    root = tmp_path_factory.mktemp("embedded")
    generate_corpus(root, "tiny", seed=0)
    return root


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture
def tiny_data(corpus_root: Path, feature_cache: Path):
    """A factory for the tiny embedded data module with small episodes."""
    from metaspeech.datamodules import EmbeddedCorpus

    def make(**overrides):
        args = dict(
            preset="tiny", root=str(corpus_root), cache_dir=str(feature_cache), k_shot=3, q_query=3,
            tasks_per_batch=4, batches_per_epoch=10, eval_pool_size=5, eval_size=4, seed=0,
        )
        args.update(overrides)
        return EmbeddedCorpus(**args)

    return make


@pytest.fixture
def tiny_cli_args(corpus_root: Path, feature_cache: Path, tmp_path: Path):
    """``args(algorithm_config)``: CLI arguments running a shipped algorithm config on the tiny corpus and model."""

    def args(algorithm_config: str = "maml.yaml") -> list[str]:
        model = [f"--model.recognizer.init_args.{k}={v}" for k, v in TINY_MODEL_ARGS.items()]
        return [
            "--config", str(REPO / "configs/data/embedded_tiny.yaml"), "--config", str(REPO / "configs" / algorithm_config),
            f"--data.init_args.root={corpus_root}", f"--data.init_args.cache_dir={feature_cache}",
            f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            *model,
        ]

    return args


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def tiny_module():
    """A factory for a MetaSpeechModule with a tiny BiLSTM recognizer."""
    from metaspeech.models import BiLSTMCTC
    from metaspeech.training.module import MetaSpeechModule

    def make(algorithm, scope=("lin", "lhuc", "head"), **kwargs):
        torch.manual_seed(0)
        args = dict(lr=3e-3, warmup_steps=1, val_shots=3, val_steps=3)
        args.update(kwargs)
        return MetaSpeechModule(BiLSTMCTC(vocab_size=29, input_dim=80, **TINY_MODEL_ARGS), algorithm, scope=list(scope), **args)

    return make


@pytest.fixture
def tiny_trainer(tmp_path):
    """A factory for a quiet CPU Trainer (no logger, no checkpoints) with test-time gradients enabled.

    Its root folder is the test's temporary folder, so reports written by ``trainer.test`` never land in the checkout."""
    import lightning as L

    def make(**overrides):
        args = dict(
            accelerator="cpu", devices=1, max_steps=30, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
            use_distributed_sampler=False, limit_val_batches=3, num_sanity_val_steps=0, default_root_dir=tmp_path,
        )
        args.update(overrides)
        return L.Trainer(**args)

    return make
