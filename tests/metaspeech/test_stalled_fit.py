"""A fit that cannot make progress stops within ``model.max_consecutive_skips``, names the fix, exits 2 and keeps
the last good checkpoint (through the console script)."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.metaspeech.test_console_script import QUIET, REPO, TINY, assert_one_line_error, run, tiny_data

DIVERGING = "--model.algorithm.init_args.inner_lr=1e30"


def test_an_endless_skip_stops_within_the_bound_and_names_the_fix(tmp_path: Path, corpus_root, feature_cache) -> None:
    fit = ["fit", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"), *TINY, *QUIET,
           f"--trainer.default_root_dir={tmp_path}", "--trainer.limit_val_batches=0"]
    assert run(*fit, "--trainer.max_steps=2").returncode == 0
    (good,) = tmp_path.rglob("*.ckpt")
    saved = _weights(good)

    stalled = run(*fit, "--trainer.max_steps=50", DIVERGING, f"--ckpt_path={good}", "--model.max_consecutive_skips=15")
    assert_one_line_error(stalled, "TrainingStalledError", "outer step 2 was skipped 15 times in a row",
                          "non-finite inner-loop loss", "lower model.algorithm.init_args.inner_lr")
    assert stalled.stdout.count("skipping outer step 2") == 15
    # The epoch ends among the skips (10 batches), so the step-2 checkpoint may be written again: same weights.
    assert list(tmp_path.rglob("*.ckpt")) == [good]
    for name, value in _weights(good).items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_a_fit_that_never_steps_stops_at_the_default_bound(tmp_path: Path, corpus_root, feature_cache) -> None:
    stalled = run("fit", *tiny_data(corpus_root, feature_cache), "--config", str(REPO / "configs/fomaml.yaml"), *TINY, *QUIET,
                  f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=5", DIVERGING)
    assert_one_line_error(stalled, "outer step 0 was skipped 20 times in a row", "lower model.algorithm.init_args.inner_lr")
    assert not list(tmp_path.rglob("*.ckpt"))
