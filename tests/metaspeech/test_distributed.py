"""DDP on 2 CPU processes (gloo): exactly the single-process meta-update, and the hand-written ``.grad`` escape hatch.

The in-process tests use Lightning's ``ddp_fork`` strategy: the same ``DDPStrategy`` and
multiprocessing launcher as ``ddp_spawn``, but forked workers start in milliseconds instead of
re-importing torch and Lightning (15-20 s per launch on a busy 2-core machine). The parent runs
with one intra-op thread so the forked workers never inherit a live OpenMP thread pool.
``strategy="ddp"`` re-launches ``sys.argv`` (pytest), so the real launcher is covered by one slow
subprocess smoke test of the ``metaspeech`` command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from metaspeech.algorithms import FOMAML, MAML, MetaAlgorithm, Reptile
from metaspeech.evaluation.oracle import SpeakerOracle
from metaspeech.evaluation.selection import TestTimeSelection
from metaspeech.evaluation.test_time import TestTimeAdaptation
from metaspeech.training.reporting import last_test_report

TASKS_PER_RANK = 2
STEPS = 3


class _Recorder(Callback):
    """In every rank: what each outer step saw, the synchronized gradients, and the weights before and after."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = str(out_dir)
        self.batches: list[dict] = []
        self.grads: list[dict[str, torch.Tensor]] = []
        self.initial: dict[str, torch.Tensor] = {}

    def setup(self, trainer, pl_module, stage) -> None:
        torch.set_num_threads(1)

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = _snapshot(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append({"tasks": list(batch.tasks), "support": batch.support.ids, "query": batch.query.ids})

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # after sync and clipping
        self.grads.append({n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None})

    def on_train_end(self, trainer, pl_module) -> None:
        record = {
            "initial": self.initial, "final": _snapshot(pl_module), "batches": self.batches, "grads": self.grads,
            "world_size": trainer.world_size, "global_step": trainer.global_step, "skipped": pl_module.skipped_steps,
        }
        torch.save(record, Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.fixture
def fit_ranks(tiny_data, tiny_module, tiny_trainer, tmp_path, monkeypatch):
    """``fit_ranks(algorithm, devices, tasks_per_batch, **module_args)``: fit, return each rank's record."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # Lightning then leaves the inherited single thread alone
    torch.set_num_threads(1)
    runs = iter(range(100))

    def fit(
        algorithm: MetaAlgorithm, devices: int, tasks_per_batch: int, steps: int = STEPS, precision: str = "64-true",
        **module_args,
    ) -> list[dict]:
        monkeypatch.delenv("MASTER_PORT", raising=False)  # the launcher writes a fresh free port into os.environ
        out = tmp_path / f"run{next(runs)}"
        out.mkdir()
        data = tiny_data(tasks_per_batch=tasks_per_batch, k_shot=2, q_query=2)
        data.setup("fit")  # features loaded once here, not raced by two workers
        model = tiny_module(algorithm, **module_args)
        strategy = {"strategy": "ddp_fork"} if devices > 1 else {}
        trainer = tiny_trainer(
            devices=devices, max_steps=steps, limit_val_batches=0, precision=precision, callbacks=[_Recorder(out)], **strategy
        )
        trainer.fit(model, datamodule=data)
        records = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(devices)]
        for record in records:
            assert (record["world_size"], record["global_step"], record["skipped"]) == (devices, steps, 0)
        return records

    return fit


ALGORITHMS = {
    "maml": lambda: MAML(inner_steps=1, inner_lr=0.5),  # second order: autograd.grad(create_graph=True) inside
    "fomaml": lambda: FOMAML(inner_steps=2, inner_lr=0.5),
    "reptile": lambda: Reptile(inner_steps=2, inner_lr=0.5),  # surrogate loss: pseudo-gradient via manual_backward
}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_two_ddp_ranks_train_exactly_like_one_process_with_the_global_meta_batch(name: str, fit_ranks) -> None:
    """2 ranks x T tasks == 1 process x 2T tasks: same episodes, same synchronized meta-gradients, same weights.

    float64 (``precision="64-true"``): in float32 the two runs' gradients agree to ~1e-7
    relative, but AdamW's ``g / (sqrt(v) + eps)`` turns that rounding into ~1e-5..1e-4
    differences for weights whose gradient is near zero, which would make a tolerance test flaky.
    """
    ranks = fit_ranks(ALGORITHMS[name](), devices=2, tasks_per_batch=TASKS_PER_RANK)
    (single,) = fit_ranks(ALGORITHMS[name](), devices=1, tasks_per_batch=2 * TASKS_PER_RANK)

    # The sampler draws one global meta-batch per step and rank r takes tasks [r*T, (r+1)*T):
    # the ranks' episodes, concatenated, are the single process's (tasks, support and query utterances).
    for step in range(STEPS):
        for key in ("tasks", "support", "query"):
            per_rank = [rank["batches"][step][key] for rank in ranks]
            assert len(per_rank[0]) == len(per_rank[1]) == TASKS_PER_RANK
            assert per_rank[0] + per_rank[1] == single["batches"][step][key], f"step {step}: {key} differ"
        assert not set(ranks[0]["batches"][step]["tasks"]) & set(ranks[1]["batches"][step]["tasks"])

    # Meta-gradients averaged exactly once: every step, both ranks hold the single process's gradient.
    for step in range(STEPS):
        assert single["grads"][step].keys() == ranks[0]["grads"][step].keys() == ranks[1]["grads"][step].keys()
        for key, grad in single["grads"][step].items():
            for rank in ranks:
                torch.testing.assert_close(rank["grads"][step][key], grad, rtol=1e-9, atol=1e-12, msg=f"step {step} {key}")

    # The ranks stay bit-identical, equal the single process, and training did move the weights.
    moved = 0.0
    for key, value in single["final"].items():
        torch.testing.assert_close(ranks[0]["final"][key], ranks[1]["final"][key], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0]["final"][key], value, rtol=1e-7, atol=1e-9, msg=key)
        torch.testing.assert_close(ranks[0]["initial"][key], single["initial"][key], rtol=0, atol=0)
        moved = max(moved, float((value - single["initial"][key]).abs().max()))
    assert moved > 1e-3


@pytest.mark.parametrize("name", ["maml", "reptile"])
def test_task_chunks_under_ddp_sync_once_and_equal_one_process_without_chunks(name: str, fit_ranks) -> None:
    """``tasks_per_chunk=1``: each rank backpropagates task by task under ``no_sync`` but the last; the
    synchronized meta-gradients equal one process's unchunked backward of the global meta-batch."""
    ranks = fit_ranks(ALGORITHMS[name](), devices=2, tasks_per_batch=TASKS_PER_RANK, steps=2, tasks_per_chunk=1)
    (single,) = fit_ranks(ALGORITHMS[name](), devices=1, tasks_per_batch=2 * TASKS_PER_RANK, steps=2)
    for step in range(2):
        for key, grad in single["grads"][step].items():
            for rank in ranks:
                torch.testing.assert_close(rank["grads"][step][key], grad, rtol=1e-9, atol=1e-12, msg=f"step {step} {key}")
    for key, value in single["final"].items():
        torch.testing.assert_close(ranks[0]["final"][key], value, rtol=1e-7, atol=1e-9, msg=key)


class HandWrittenGradients(FOMAML):
    """A plugin with a per-task table of meta-parameters trained only through ``.grad`` it writes by hand.

    Each task's query loss is written into the gradient of that task's slot, so each rank
    writes the slots of its own tasks. ``synced`` goes through ``all_reduce_gradients``;
    ``unsynced`` does not. The tables take no part in the outer loss, so DDP's reducer never
    sees them (``requires_grad=False`` keeps them out of DDP; the optimizer still steps them).
    """

    SLOTS = 64

    def __init__(self) -> None:
        super().__init__(inner_steps=1, inner_lr=0.5)
        self.synced = nn.Parameter(torch.zeros(self.SLOTS), requires_grad=False)
        self.unsynced = nn.Parameter(torch.zeros(self.SLOTS), requires_grad=False)

    def outer_loss(self, learner, batch, loss_scale=1.0):
        result = super().outer_loss(learner, batch, loss_scale)
        grad = torch.zeros_like(self.synced)
        for task, loss in zip(batch.tasks, result.query_losses):
            grad[zlib.crc32(task.encode()) % self.SLOTS] += loss
        self.synced.grad = grad
        self.unsynced.grad = grad.clone()
        self.all_reduce_gradients([self.synced])
        return result


def test_hand_written_gradients_need_all_reduce_gradients_to_stay_in_sync(fit_ranks) -> None:
    """DDP averages only what ``manual_backward`` produces; ``.grad`` written by hand needs the helper."""
    ranks = fit_ranks(
        HandWrittenGradients(), devices=2, tasks_per_batch=TASKS_PER_RANK, steps=2, precision="32-true", max_grad_norm=None
    )
    final = [rank["final"] for rank in ranks]
    moved = [
        {name: set(torch.nonzero(f[f"algorithm.{name}"]).flatten().tolist()) for name in ("synced", "unsynced")}
        for f in final
    ]
    # The module kept the hand-written gradients (they are not zeroed after outer_loss) and stepped them.
    assert all(m["synced"] and m["unsynced"] for m in moved)
    # Without the all-reduce each rank moved only its own tasks' slots: the ranks silently diverged.
    assert moved[0]["unsynced"] != moved[1]["unsynced"]
    assert not torch.equal(final[0]["algorithm.unsynced"], final[1]["algorithm.unsynced"])
    # With it both ranks moved every slot of the global meta-batch, identically.
    assert moved[0]["synced"] == moved[1]["synced"] == moved[0]["unsynced"] | moved[1]["unsynced"]
    torch.testing.assert_close(final[0]["algorithm.synced"], final[1]["algorithm.synced"], rtol=0, atol=0)
    for step in range(2):  # the synced gradient is the mean of the ranks' hand-written ones
        local = [rank["grads"][step]["algorithm.unsynced"] for rank in ranks]
        assert not torch.equal(local[0], local[1])
        for rank in ranks:
            torch.testing.assert_close(rank["grads"][step]["algorithm.synced"], (local[0] + local[1]) / 2)
    # Everything manual_backward produced is still synchronized.
    for key in final[0]:
        if key != "algorithm.unsynced":
            torch.testing.assert_close(final[0][key], final[1][key], rtol=0, atol=0, msg=key)


def test_all_reduce_gradients_is_a_no_op_without_a_process_group() -> None:
    assert not torch.distributed.is_initialized()
    param = nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([1.0, 2.0])
    MetaAlgorithm.all_reduce_gradients([param, nn.Parameter(torch.zeros(1))])
    assert param.grad.tolist() == [1.0, 2.0]



class _TestReport(Callback):
    """In every rank: the held-out tasks it adapted to itself, and the report it ended the test with."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = str(out_dir)
        self.local: list[str] = []

    def setup(self, trainer, pl_module, stage) -> None:
        torch.set_num_threads(1)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.local += sorted({record.task for record in outputs.records})

    def on_test_end(self, trainer, pl_module) -> None:
        report = last_test_report(trainer)
        torch.save({"local": self.local, "records": [vars(r) for r in report.records], "rows": report.to_rows(),
                    "seconds": dict(report.adaptation_seconds), "groups": dict(report.groups),
                    "choices": {key: report.settings[key] for key in ("test_time_selection", "oracle")}},
                   Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


def _in_order(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: (r["task"], r["shots"], r["steps"], r["utterance"]))


def test_the_test_report_gathers_every_ranks_speakers_and_equals_one_process(tiny_data, tiny_module, tiny_trainer,
                                                                              tmp_path, monkeypatch) -> None:
    """Each rank adapts to its own share of the held-out speakers; gathered through the strategy, every rank
    ends with the report one process computes over all of them."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    reports = {}
    for devices in (2, 1):
        monkeypatch.delenv("MASTER_PORT", raising=False)
        out = tmp_path / f"devices{devices}"
        out.mkdir()
        data = tiny_data(eval_pool_size=3, eval_size=3, oracle_pool_size=8)
        data.setup("test")
        # the choices made on meta-val before the test (test-time settings, the oracle's setting) sum every rank's counts
        selection = TestTimeSelection([TestTimeAdaptation(lr=5e4), TestTimeAdaptation(lr=0.5)])
        oracle = SpeakerOracle(scopes=["head"], learning_rates=[1e-3, 3e-2], max_steps=4, eval_every=2, search_speakers=None)
        model = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5), test_shots=[1, 3], test_steps=[0, 1], results_dir=str(out),
                            test_time_selection=selection, oracle=oracle)
        strategy = {"strategy": "ddp_fork"} if devices > 1 else {}
        tiny_trainer(devices=devices, callbacks=[_TestReport(out)], **strategy).test(model, datamodule=data, verbose=False)
        reports[devices] = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(devices)]
        assert (out / "adaptation_fomaml.json").is_file()  # written once, by rank 0
    (single,) = reports[1]
    ranks = reports[2]
    assert ranks[0]["local"] and ranks[1]["local"] and not set(ranks[0]["local"]) & set(ranks[1]["local"])
    assert sorted(ranks[0]["local"] + ranks[1]["local"]) == sorted(single["local"])
    for rank in ranks:
        assert _in_order(rank["records"]) == _in_order(single["records"])
        # rows compared as JSON: a condition without an oracle holds NaN (oracle_wer, gap_closed), and NaN != NaN
        assert json.dumps(rank["rows"], sort_keys=True) == json.dumps(single["rows"], sort_keys=True)
        assert rank["seconds"] == single["seconds"] and rank["groups"] == single["groups"]
        assert json.dumps(rank["choices"], sort_keys=True) == json.dumps(single["choices"], sort_keys=True)

@pytest.mark.slow
def test_metaspeech_fit_with_ddp_on_two_cpu_processes(tiny_cli_args, tmp_path: Path) -> None:
    """The real launcher: ``strategy=ddp`` re-runs the command for rank 1; fit, validate, checkpoint."""
    command = [
        sys.executable, "-m", "metaspeech.cli.main", "fit", *tiny_cli_args("fomaml.yaml"),
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_steps=3",
        "--trainer.val_check_interval=3", "--trainer.check_val_every_n_epoch=null", "--trainer.limit_val_batches=2",
    ]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert "Starting with 2 processes" in done.stdout + done.stderr, "the run was not distributed over 2 processes"
    checkpoints = sorted(tmp_path.rglob("*.ckpt"))
    assert checkpoints, f"no checkpoint under {tmp_path}\n{done.stderr[-4000:]}"
    checkpoint = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3
    assert "metaspeech" in checkpoint and checkpoint["metaspeech"]["model"], "checkpoint lacks the metaspeech section"
