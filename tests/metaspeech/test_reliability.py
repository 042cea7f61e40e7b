"""Reliability: exact resume after a SIGKILL, crash-safe checkpoints, weights-only checkpoints, no leaks.

The resume scenario runs once per module (``killed_and_resumed``) and several tests read it:

1. ``metaspeech fit`` in a subprocess, ModelCheckpoint(save_last, every step), is SIGKILLed
   mid-epoch once ``kill_at`` steps are checkpointed (a test-only callback announces that
   point and waits to be killed);
2. the same command, uninterrupted, runs in this process meanwhile;
3. the killed run resumes with ``--ckpt_path=last.ckpt`` in this process (under
   ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``) to the same ``max_steps``.

Both runs use MetaSGD (meta-parameters: learned inner learning rates), dropout (random
numbers), a warmup schedule (the learning rate changes every step) and cross an epoch
boundary with a validation after the kill.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import pytest
import torch

from metaspeech.cli.main import build_cli
from metaspeech.training.checkpoint_io import AtomicCheckpointIO, save_atomically, use_atomic_checkpoint_io

REPO = Path(__file__).resolve().parents[2]
METASPEECH = Path(sys.executable).with_name("metaspeech")

# A step takes a fraction of a second on a busy CPU; dropout on, so training draws random numbers.
RESUME_MODEL = {"d_model": 16, "hidden_dim": 16, "num_layers": 1, "adapter_dim": 4, "dropout": 0.1}
BATCHES_PER_EPOCH = 5

HOOKS = '''
"""Test-only callback for the subprocess run of test_reliability.py."""
import os
import time

from lightning.pytorch.callbacks import Callback


class PauseAt(Callback):
    """When ``step`` optimizer steps are done (and checkpointed), say so in ``marker`` and wait to be killed."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with open(self.marker + ".part", "w") as f:
                f.write(f"{os.getpid()} {trainer.global_step} {batch_idx}")
            os.replace(self.marker + ".part", self.marker)
            time.sleep(600)
'''


# ---------------------------------------------------------------------------------------- helpers
def _callbacks_config(path: Path, checkpoint_dir: Path, pause: tuple[int, Path] | None = None, best_dir: Path | None = None) -> Path:
    """A YAML config with ``trainer.callbacks``: last.ckpt every step [+ best by meta-val WER] [+ the pause]."""
    lines = [
        "  - class_path: metaspeech.training.checkpoint_io.ModelCheckpoint",
        f"    init_args: {{dirpath: '{checkpoint_dir}', save_last: true, every_n_train_steps: 1}}",
    ]
    if best_dir is not None:  # like configs/trainer/cpu.yaml: the best checkpoint by meta-val WER after adaptation
        lines += [
            "  - class_path: metaspeech.training.checkpoint_io.ModelCheckpoint",
            f"    init_args: {{dirpath: '{best_dir}', monitor: val/wer_post, mode: min, filename: 'best-{{step}}'}}",
        ]
    if pause is not None:
        lines += ["  - class_path: reliability_hooks.PauseAt", f"    init_args: {{step: {pause[0]}, marker: '{pause[1]}'}}"]
    path.write_text("trainer:\n  callbacks:\n" + "\n".join(lines) + "\n")
    return path


def _fit_args(corpus_root: Path, feature_cache: Path, root: Path, callbacks: Path, max_steps: int, algorithm: str) -> list[str]:
    model = [f"--model.recognizer.init_args.{k}={v}" for k, v in RESUME_MODEL.items()]
    return [
        "fit", "--config", str(REPO / "configs/data/embedded_tiny.yaml"), "--config", str(REPO / "configs" / algorithm),
        "--config", str(callbacks),
        f"--data.init_args.root={corpus_root}", f"--data.init_args.cache_dir={feature_cache}",
        "--data.init_args.k_shot=2", "--data.init_args.q_query=2", "--data.init_args.tasks_per_batch=2",
        f"--data.init_args.batches_per_epoch={BATCHES_PER_EPOCH}",
        *model, "--model.algorithm.init_args.inner_steps=1", "--model.warmup_steps=10",
        "--model.val_shots=1", "--model.val_steps=1",
        "--seed_everything=0", f"--trainer.default_root_dir={root}", f"--trainer.max_steps={max_steps}",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=1",
    ]


def _subprocess_env(extra_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(extra_path), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"  # the in-process runs use one thread too: the same float reductions
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_for(marker: Path, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the subprocess exited with {process.returncode} before its kill point:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the subprocess did not reach its kill point in {timeout:.0f} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.05)


def _sigkill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _temp_files(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".part")]


# --------------------------------------------------------------------------- the resume scenario
@dataclass
class Scenario:
    kill_at: int
    max_steps: int
    at_kill: dict
    resumed: Path
    straight: Path
    folders: list[Path]
    checkpoint_ios: list[object]
    saved_paths: list[str] = field(default_factory=list)
    load_weights_only: list[object] = field(default_factory=list)


def _run_scenario(corpus_root: Path, feature_cache: Path, tmp: Path, algorithm: str, kill_at: int, max_steps: int) -> Scenario:
    assert kill_at % BATCHES_PER_EPOCH, "the kill must be mid-epoch"
    hooks = tmp / "hooks"
    hooks.mkdir()
    (hooks / "reliability_hooks.py").write_text(HOOKS)
    killed, straight, marker, log = tmp / "killed", tmp / "straight", tmp / "paused", tmp / "killed.log"
    saved_paths: list[str] = []
    load_weights_only: list[object] = []
    checkpoint_ios: list[object] = []
    threads = torch.get_num_threads()
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(METASPEECH), *_fit_args(corpus_root, feature_cache, killed, _callbacks_config(
                tmp / "killed.yaml", killed / "ckpt", pause=(kill_at, marker)), max_steps, algorithm)],
            stdout=out, stderr=subprocess.STDOUT, env=_subprocess_env(hooks), cwd=tmp,
        )
    try:
        with pytest.MonkeyPatch.context() as mp:
            original_save = AtomicCheckpointIO.save_checkpoint

            def recording_save(self, checkpoint, path, storage_options=None):
                saved_paths.append(str(path))
                return original_save(self, checkpoint, path, storage_options)

            mp.setattr(AtomicCheckpointIO, "save_checkpoint", recording_save)
            torch.set_num_threads(1)
            # The uninterrupted reference runs here while the subprocess heads for its kill point.
            cli = build_cli(_fit_args(corpus_root, feature_cache, straight, _callbacks_config(
                tmp / "straight.yaml", straight / "ckpt", best_dir=straight / "best"), max_steps, algorithm))
            checkpoint_ios.append(cli.trainer.strategy.checkpoint_io)
            _wait_for(marker, process, log, timeout=300)
            _sigkill(process)

            last = killed / "ckpt" / "last.ckpt"
            at_kill = _load(last)

            original_load = torch.load

            def recording_load(*args, **kwargs):
                load_weights_only.append(kwargs.get("weights_only"))
                return original_load(*args, **kwargs)

            mp.setattr(torch, "load", recording_load)
            mp.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")  # resuming must not need to unpickle arbitrary objects
            cli = build_cli([*_fit_args(corpus_root, feature_cache, killed, _callbacks_config(
                tmp / "resumed.yaml", killed / "ckpt"), max_steps, algorithm), f"--ckpt_path={last}"])
            checkpoint_ios.append(cli.trainer.strategy.checkpoint_io)
    finally:
        torch.set_num_threads(threads)
        if process.poll() is None:
            process.kill()
            process.wait()
    return Scenario(
        kill_at=kill_at, max_steps=max_steps, at_kill=at_kill, resumed=last, straight=straight / "ckpt" / "last.ckpt",
        folders=[killed / "ckpt", straight / "ckpt", straight / "best"], checkpoint_ios=checkpoint_ios,
        saved_paths=saved_paths, load_weights_only=load_weights_only,
    )


@pytest.fixture(scope="module")
def killed_and_resumed(corpus_root, feature_cache, tmp_path_factory) -> Scenario:
    return _run_scenario(corpus_root, feature_cache, tmp_path_factory.mktemp("resume"), "metasgd.yaml", kill_at=3, max_steps=7)


def _assert_same_training_state(actual: dict, expected: dict) -> None:
    assert (actual["global_step"], actual["epoch"]) == (expected["global_step"], expected["epoch"])
    torch.testing.assert_close(actual["state_dict"], expected["state_dict"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(actual["optimizer_states"], expected["optimizer_states"], rtol=1e-6, atol=1e-7)
    assert actual["lr_schedulers"] == expected["lr_schedulers"]
    assert actual["EmbeddedCorpus"] == expected["EmbeddedCorpus"]  # the sampler position
    assert actual["metaspeech"] == expected["metaspeech"]  # skipped steps, RNG seed, tokenizer, ...


def test_resume_after_sigkill_mid_epoch_equals_an_uninterrupted_run(killed_and_resumed: Scenario) -> None:
    s = killed_and_resumed
    assert s.at_kill["global_step"] == s.kill_at
    assert s.at_kill["EmbeddedCorpus"] == {"epoch": 0, "batches_done": s.kill_at}, "the kill was not mid-epoch"
    resumed, straight = _load(s.resumed), _load(s.straight)
    assert straight["global_step"] == s.max_steps and straight["epoch"] == s.max_steps // BATCHES_PER_EPOCH
    _assert_same_training_state(resumed, straight)
    assert any(not torch.equal(v, s.at_kill["state_dict"][k]) for k, v in resumed["state_dict"].items()), "no training after resume"
    assert any(k.startswith("algorithm.learning_rates.") for k in resumed["state_dict"]), "MetaSGD meta-parameters are checkpointed"


def test_metaspeech_fit_saves_every_checkpoint_atomically(killed_and_resumed: Scenario) -> None:
    s = killed_and_resumed
    assert all(type(io) is AtomicCheckpointIO for io in s.checkpoint_ios)
    assert str(s.straight) in s.saved_paths and str(s.resumed) in s.saved_paths, "last.ckpt bypassed the checkpoint IO"
    assert not s.straight.is_symlink() and not s.resumed.is_symlink()
    assert list((s.straight.parent.parent / "best").glob("best-*.ckpt")), "no best checkpoint"
    assert not _temp_files(*s.folders), "temporary files left behind"


def test_checkpoints_for_resuming_load_with_weights_only(killed_and_resumed: Scenario) -> None:
    s = killed_and_resumed
    checkpoints = sorted(p for folder in s.folders for p in folder.glob("*.ckpt"))
    assert len(checkpoints) >= 4
    for path in checkpoints:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks", "EmbeddedCorpus", "metaspeech",
                    "hyper_parameters"):
            assert key in checkpoint, f"{path.name} lacks {key}"
        assert checkpoint["metaspeech"]["rng_seed"] is not None
    # Lightning's resume path (and LightningCLI reading hyperparameters) never asked to unpickle code;
    # the resume ran with TORCH_FORCE_WEIGHTS_ONLY_LOAD=1, so every load was weights-only anyway.
    assert s.load_weights_only and False not in s.load_weights_only


@pytest.mark.parametrize("algorithm, kill_at, max_steps", [
    pytest.param("maml.yaml", 8, 12, marks=pytest.mark.slow), ("reptile.yaml", 6, 9),
])
def test_resume_after_sigkill_other_algorithms_and_a_later_epoch(
    algorithm, kill_at, max_steps, corpus_root, feature_cache, tmp_path
) -> None:
    """Second-order MAML and Reptile, killed in the second epoch."""
    s = _run_scenario(corpus_root, feature_cache, tmp_path, algorithm, kill_at=kill_at, max_steps=max_steps)
    assert s.at_kill["EmbeddedCorpus"] == {"epoch": kill_at // BATCHES_PER_EPOCH, "batches_done": kill_at % BATCHES_PER_EPOCH}
    _assert_same_training_state(_load(s.resumed), _load(s.straight))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))])
def test_training_randomness_is_a_function_of_the_step_not_of_the_global_rng(device: str, tiny_module) -> None:
    """Dropout masks in a step do not depend on what drew from the global RNG before (loaders, validation)."""
    from metaspeech.algorithms import FOMAML

    module = tiny_module(FOMAML(inner_steps=1)).to(device)
    module.rng_seed = 123
    rng_state = torch.cuda.get_rng_state if device == "cuda" else torch.get_rng_state
    draws = []
    for noise in (0, 5):
        torch.rand(noise, device=device)  # someone else used the global RNG
        before = rng_state()
        with module._step_rng():
            draws.append(torch.rand(3, device=device))
        assert torch.equal(rng_state(), before), "the global RNG state leaked out of the step"
    torch.testing.assert_close(draws[0], draws[1], rtol=0, atol=0)
    module.skipped_steps = 1
    with module._step_rng():
        assert not torch.equal(torch.rand(3, device=device), draws[0]), "a retried (skipped) step reuses the same random numbers"


# ----------------------------------------------------------------------------- atomic checkpoints
def test_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.zeros(3)}}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode), "permissions differ from a plain file"

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.ones(3)}}, path)
    monkeypatch.undo()
    previous = _load(path)
    assert previous["global_step"] == 1 and torch.equal(previous["state_dict"]["w"], torch.zeros(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_atomic_save_replaces_a_symlink_instead_of_writing_through_it(tmp_path) -> None:
    """``save_last="link"`` leaves last.ckpt a symlink to a top-k file: overwriting must not clobber that file."""
    target = save_atomically({"step": 1}, tmp_path / "epoch=0-step=1.ckpt")
    link = tmp_path / "last.ckpt"
    link.symlink_to(target.name)
    save_atomically({"step": 2}, link)
    assert not link.is_symlink() and _load(link)["step"] == 2
    assert _load(target)["step"] == 1


SLOW_SAVE = '''
import os, sys, time
import torch
import metaspeech.training.checkpoint_io as checkpoint_io

path, marker = sys.argv[1], sys.argv[2]
plugin = checkpoint_io.AtomicCheckpointIO()
plugin.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.zeros(8)}}, path)

real_fdopen = os.fdopen


class SlowFile:
    """A file whose writes stall after the first MiB: the process is killed in the middle of a save."""

    def __init__(self, handle):
        self.handle, self.written = handle, 0

    def write(self, data):
        n = self.handle.write(data)
        self.written += n
        if self.written > 1 << 20:
            self.handle.flush()
            open(marker, "w").close()
            time.sleep(600)
        return n

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


os.fdopen = lambda *args, **kwargs: SlowFile(real_fdopen(*args, **kwargs))
plugin.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.ones(1 << 22)}}, path)
'''


def test_sigkill_in_the_middle_of_a_save_keeps_the_previous_checkpoint(tmp_path) -> None:
    script, marker, path, log = tmp_path / "slow_save.py", tmp_path / "writing", tmp_path / "ckpt" / "last.ckpt", tmp_path / "log"
    script.write_text(SLOW_SAVE)
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, str(script), str(path), str(marker)], stdout=out, stderr=subprocess.STDOUT,
                                   env=_subprocess_env(tmp_path))
    try:
        _wait_for(marker, process, log, timeout=120)
        _sigkill(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert _load(path)["global_step"] == 1, "the previous checkpoint was damaged by the interrupted save"
    partial = _temp_files(path.parent)
    assert len(partial) == 1 and partial[0].stat().st_size > 1 << 20, "the kill did not land in the middle of the write"
    with pytest.raises(Exception):
        torch.load(partial[0], weights_only=True)
    save_atomically({"global_step": 3}, path)  # the next save removes what the killed one left
    assert _temp_files(path.parent) == [] and _load(path)["global_step"] == 3


def test_atomic_checkpoint_io_replaces_only_lightnings_default() -> None:
    from lightning.fabric.plugins import TorchCheckpointIO
    from lightning.pytorch.plugins.environments import LightningEnvironment
    from lightning.pytorch.plugins.io import AsyncCheckpointIO

    class MyIO(TorchCheckpointIO):
        pass

    def trainer(*plugins):
        return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, plugins=list(plugins) or None)

    assert type(use_atomic_checkpoint_io(trainer())) is AtomicCheckpointIO
    assert type(use_atomic_checkpoint_io(trainer(LightningEnvironment()))) is AtomicCheckpointIO
    wrapped = use_atomic_checkpoint_io(trainer(AsyncCheckpointIO()))
    assert isinstance(wrapped, AsyncCheckpointIO) and type(wrapped.checkpoint_io) is AtomicCheckpointIO
    assert type(use_atomic_checkpoint_io(trainer(MyIO()))) is MyIO


# ------------------------------------------------------------------------------------------ soak
def _resident_bytes() -> int:
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:  # return freed heap pages to the OS, so RSS reflects live memory rather than allocator slack
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)
        if trim is not None:
            trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if torch.is_tensor(obj))


@pytest.fixture
def one_thread():
    """Tiny models on a shared CPU: a second intra-op thread only adds contention (seen 7x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc")
def test_many_meta_steps_do_not_grow_memory(tiny_trainer, one_thread) -> None:
    """80 second-order MAML steps with a validation every 10: memory after warm-up stays flat.

    A leak of one step's autograd graph adds ~2 MB and a tensor per step here (checked by hand
    by keeping every outer loss alive), so the bounds below catch it by a wide margin.
    """
    from torch.utils.data import DataLoader

    from metaspeech.algorithms import MAML
    from metaspeech.engine.batch import EvaluationBatch, MetaBatch, TaskBatch
    from metaspeech.models import BiLSTMCTC
    from metaspeech.training.module import MetaSpeechModule

    generator = torch.Generator().manual_seed(0)

    def tasks(num_tasks: int, examples: int, frames: int = 48, dim: int = 16, tokens: int = 3) -> TaskBatch:
        lengths = torch.randint(frames - 8, frames + 1, (num_tasks, examples), generator=generator)
        return TaskBatch(
            (torch.randn(num_tasks, examples, frames, dim, generator=generator), lengths),
            (torch.randint(1, 10, (num_tasks, examples, tokens), generator=generator), torch.full((num_tasks, examples), tokens)),
        )

    steps, warmup = 80, 20
    train = [MetaBatch(tasks(2, 3), tasks(2, 3), ["a", "b"]) for _ in range(steps)]
    val = [EvaluationBatch(pool=tasks(1, 3), evaluation=tasks(1, 2), task="held-out")]
    samples: dict[int, tuple[int, int]] = {}

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step in (warmup, steps):
                samples[trainer.global_step] = (_resident_bytes(), _live_tensors())

    torch.manual_seed(0)
    recognizer = BiLSTMCTC(vocab_size=10, input_dim=16, d_model=16, hidden_dim=16, num_layers=1, adapter_dim=4)
    module = MetaSpeechModule(recognizer, MAML(inner_steps=2, inner_lr=0.1), warmup_steps=1, val_shots=2, val_steps=2)
    trainer = tiny_trainer(max_steps=steps, callbacks=[Probe()], val_check_interval=10, check_val_every_n_epoch=None,
                           log_every_n_steps=1, limit_val_batches=1)
    trainer.fit(module, DataLoader(train, batch_size=None), DataLoader(val, batch_size=None))
    assert trainer.global_step == steps and module.skipped_steps == 0
    (rss_start, tensors_start), (rss_end, tensors_end) = samples[warmup], samples[steps]
    assert tensors_end - tensors_start <= 5, f"live tensors grew from {tensors_start} to {tensors_end}"
    assert rss_end - rss_start < 24 * 2**20, f"resident memory grew by {(rss_end - rss_start) / 2**20:.1f} MiB"
