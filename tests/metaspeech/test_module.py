"""MetaSpeechModule end to end on the tiny embedded corpus (CPU, seconds per algorithm)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from metaspeech.algorithms import FOMAML, MAML, HyperInit, JointTraining, MetaSGD, Reptile

ALGORITHMS = {
    "maml": lambda: MAML(inner_steps=1, inner_lr=0.5),
    "fomaml": lambda: FOMAML(inner_steps=2, inner_lr=0.5),
    "reptile": lambda: Reptile(inner_steps=2, inner_lr=0.5),
    "metasgd": lambda: MetaSGD(inner_steps=1, inner_lr=0.5, second_order=False),
    "hyperinit": lambda: HyperInit(inner_steps=1, inner_lr=0.5, embedding_dim=16),
    "joint": lambda: JointTraining(inner_steps=2, inner_lr=0.05),  # plain fine-tuning needs a smaller step
}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_meta_training_lowers_meta_val_query_loss_after_adaptation(name: str, tiny_data, tiny_module, tiny_trainer) -> None:
    data = tiny_data()
    model = tiny_module(ALGORITHMS[name]())
    before = tiny_trainer().validate(model, datamodule=data, verbose=False)[0]
    tiny_trainer().fit(model, datamodule=data)
    after = tiny_trainer().validate(model, datamodule=data, verbose=False)[0]
    assert after["val/loss_post"] < before["val/loss_post"], "meta-training did not lower the adapted query loss"
    assert after["val/loss_post"] < after["val/loss_pre"], "adaptation did not lower the meta-val query loss"


def test_second_order_maml_runs_on_the_asr_model_and_differs_from_first_order(tiny_data, tiny_module) -> None:
    data = tiny_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    grads = {}
    for name, algorithm in (("maml", MAML(inner_steps=2, inner_lr=0.5)), ("fomaml", FOMAML(inner_steps=2, inner_lr=0.5))):
        m = tiny_module(algorithm)
        m.model.train()
        m.algorithm.outer_loss(m.learner, batch).loss.backward()
        grads[name] = torch.cat([p.grad.flatten() for p in m.model.parameters() if p.grad is not None])
    assert torch.isfinite(grads["maml"]).all()
    assert not torch.allclose(grads["maml"], grads["fomaml"]), "second-order MAML silently fell back to first order"


def _corrupt_losses_call(monkeypatch, module, call: int, corrupt) -> None:
    """Make the ``call``-th call of ``module.learner.losses`` return ``corrupt(losses)`` (1-based)."""
    original = module.learner.losses
    calls = {"n": 0}

    def losses(fast, prepared, create_graph=False, **kwargs):
        calls["n"] += 1
        result = original(fast, prepared, create_graph, **kwargs)
        return corrupt(result) if calls["n"] == call else result

    monkeypatch.setattr(module.learner, "losses", losses)


def test_non_finite_step_is_skipped_and_parameters_stay_finite(tiny_data, tiny_module, tiny_trainer, monkeypatch) -> None:
    data = tiny_data()
    model = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5))
    _corrupt_losses_call(monkeypatch, model, 4, lambda losses: losses * float("nan"))  # the inner loss of step 2
    tiny_trainer(max_steps=4).fit(model, datamodule=data)
    assert model.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _NaNGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def test_step_with_finite_loss_but_non_finite_meta_gradient_is_skipped(tiny_data, tiny_module, tiny_trainer, monkeypatch) -> None:
    model = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5))
    _corrupt_losses_call(monkeypatch, model, 2, _NaNGradient.apply)  # the query loss of step 1
    tiny_trainer(max_steps=3).fit(model, datamodule=tiny_data())
    assert model.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.fixture(params=["auto", "float32"])
def lstm_bf16_mode(request, monkeypatch) -> str:
    """Each bf16 test runs twice: with this CPU's own LSTM kernels and with the float32 fallback forced,
    so the path a CPU without native bf16 takes is tested on every machine."""
    monkeypatch.setenv("METASPEECH_CPU_BF16_LSTM", request.param)
    return request.param


def test_bf16_autocast_adaptation_still_lowers_the_loss(tiny_data, tiny_module, lstm_bf16_mode) -> None:
    data = tiny_data()
    data.setup("fit")
    item = next(iter(data.val_dataloader()))
    model = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5)).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model.evaluation_loss(item.pool, model.learner.expand(model.learner.init_weights(), 1)).mean()
        fast = model.adapt(item.pool, steps=5)
        after = model.evaluation_loss(item.pool, fast).mean()
    assert torch.isfinite(after) and after < before


def test_bf16_mixed_second_order_maml_meta_gradient_matches_float32(tiny_data, tiny_module, lstm_bf16_mode) -> None:
    """Under bf16 autocast the second-order meta-gradient stays finite and points where the float32 one does."""
    data = tiny_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    gradients = {}
    for precision in ("32", "bf16"):
        module = tiny_module(MAML(inner_steps=2, inner_lr=0.5))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            result = module.algorithm.outer_loss(module.learner, batch)
        result.loss.backward()
        gradients[precision] = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
    assert torch.isfinite(gradients["bf16"]).all()
    cosine = torch.nn.functional.cosine_similarity(gradients["32"], gradients["bf16"].float(), dim=0)
    assert cosine > 0.95, f"bf16 meta-gradient direction differs from float32 (cosine {cosine:.3f})"


def test_bf16_mixed_trainer_runs_second_order_maml(tiny_data, tiny_module, tiny_trainer, lstm_bf16_mode) -> None:
    module = tiny_module(MAML(inner_steps=1, inner_lr=0.5))
    before = [p.detach().clone() for p in module.parameters()]
    tiny_trainer(max_steps=2, precision="bf16-mixed", limit_val_batches=0).fit(module, datamodule=tiny_data())
    assert module.skipped_steps == 0
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def _fp16_trainer(tiny_trainer, init_scale: float, **overrides):
    """A CPU Trainer with fp16 autocast and a GradScaler: what ``precision="16-mixed"`` does on a GPU.

    (Lightning maps ``16-mixed`` on CPU to bf16, so the plugin is given explicitly. cuDNN-free
    fp16 LSTMs do not run on CPU; the Conformer recognizer does.)
    """
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return tiny_trainer(plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], limit_val_batches=0, **overrides)


def _tiny_conformer_module(algorithm, **kwargs):
    from metaspeech.models import ConformerCTC
    from metaspeech.training.module import MetaSpeechModule

    torch.manual_seed(0)
    recognizer = ConformerCTC(vocab_size=29, input_dim=80, d_model=32, num_layers=1, heads=2, ffn_dim=64, kernel_size=3,
                              adapter_dim=8, dropout=0.0)
    return MetaSpeechModule(recognizer, algorithm, lr=3e-3, warmup_steps=1, **kwargs)


def _record_loss_scales(monkeypatch, algorithm) -> list[float]:
    """The loss scale of every inner loop ``algorithm.adapt`` runs, in call order (it is passed in, never stored)."""
    scales: list[float] = []
    original = algorithm.adapt

    def adapt(learner, support, loop=None):
        scales.append((loop or algorithm.inner_loop()).loss_scale)
        return original(learner, support, loop)

    monkeypatch.setattr(algorithm, "adapt", adapt)
    return scales


def test_fp16_mixed_scales_the_inner_loss_and_clips_unscaled_gradients(tiny_data, tiny_trainer, monkeypatch) -> None:
    grad_norms = {}
    for precision in ("32", "16"):
        module = _tiny_conformer_module(MAML(inner_steps=1, inner_lr=0.5), max_grad_norm=1e-3)
        scales = _record_loss_scales(monkeypatch, module.algorithm)
        if precision == "16":
            trainer = _fp16_trainer(tiny_trainer, init_scale=2.0**8, max_steps=1)
        else:
            trainer = tiny_trainer(max_steps=1, limit_val_batches=0)
        trainer.fit(module, datamodule=tiny_data())
        grad_norms[precision] = float(trainer.callback_metrics["train/grad_norm"])
        assert module.skipped_steps == 0
        assert all(torch.isfinite(p).all() for p in module.parameters())
        clipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None]))
        assert clipped == pytest.approx(1e-3, rel=1e-3), f"{precision}: gradients were not clipped after unscaling"
        assert scales == [2.0**8 if precision == "16" else 1.0], "the inner loop did not use the GradScaler's scale"
    assert 0.8 < grad_norms["16"] / grad_norms["32"] < 1.25, f"logged gradient norm is loss-scaled: {grad_norms}"


def test_fp16_skipped_step_backs_off_the_loss_scale(tiny_data, tiny_trainer, monkeypatch) -> None:
    module = _tiny_conformer_module(FOMAML(inner_steps=1, inner_lr=0.5))
    _corrupt_losses_call(monkeypatch, module, 1, lambda losses: losses * float("nan"))
    trainer = _fp16_trainer(tiny_trainer, init_scale=2.0**12, max_steps=2)
    trainer.fit(module, datamodule=tiny_data())
    assert module.skipped_steps == 1
    assert trainer.precision_plugin.scaler.get_scale() == 2.0**11


def test_fp16_test_time_adaptation_lowers_the_loss_when_the_scale_overflows(tiny_data, tiny_trainer, monkeypatch) -> None:
    data = tiny_data()
    module = _tiny_conformer_module(FOMAML(inner_steps=1, inner_lr=0.5))
    trainer = _fp16_trainer(tiny_trainer, init_scale=2.0**12, max_steps=5)
    trainer.fit(module, datamodule=data)
    scaler = trainer.precision_plugin.scaler
    scaler.load_state_dict({**scaler.state_dict(), "scale": 2.0**60})  # the inner gradients overflow at this scale
    data.setup("validate")
    item = next(iter(data.val_dataloader()))
    scales = _record_loss_scales(monkeypatch, module.algorithm)
    with torch.autocast("cpu", dtype=torch.float16):
        before = module.evaluation_loss(item.pool, module.learner.expand(module.learner.init_weights(), 1)).mean()
        fast = module.adapt(item.pool, steps=3)
        after = module.evaluation_loss(item.pool, fast).mean()
    assert scales[0] == 2.0**60 and scales[-1] < 2.0**60, f"the overflowing scale was not backed off: {scales}"
    assert all(later == earlier / 2 for earlier, later in zip(scales, scales[1:])), scales
    assert torch.isfinite(after) and after < before


def test_task_augmentation_changes_training_and_stays_reproducible(tiny_data, tiny_module, tiny_trainer) -> None:
    from metaspeech.speech.augmentation import EpisodeAugmentation
    from metaspeech.speech.features import SpecAugment

    finals = {}
    for run, augmentation in (("plain", None), ("augmented", 0.15), ("augmented again", 0.15)):
        torch.manual_seed(0)
        augment = None if augmentation is None else EpisodeAugmentation(augmentation, SpecAugment(freq_width=5))
        module = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5), augmentation=augment)
        tiny_trainer(max_steps=3, limit_val_batches=0).fit(module, datamodule=tiny_data())
        finals[run] = torch.cat([p.detach().flatten() for p in module.parameters()])
    assert not torch.equal(finals["plain"], finals["augmented"])
    torch.testing.assert_close(finals["augmented"], finals["augmented again"], rtol=0, atol=0)


def test_the_adaptation_guard_keeps_helpful_adaptation_and_rejects_harmful(tiny_data, tiny_module) -> None:
    """``adaptation_guard=cross_validation``: with a sane inner learning rate adaptation is kept (identical
    weights to the unguarded run); with an absurd one it is rejected and the task keeps its start."""
    data = tiny_data()
    data.setup("fit")
    item = next(iter(data.val_dataloader()))
    for lr, kept in ((0.5, True), (5e4, False)):
        guarded = tiny_module(FOMAML(inner_steps=1, inner_lr=lr), adaptation_guard="cross_validation").eval()
        plain = tiny_module(FOMAML(inner_steps=1, inner_lr=lr)).eval()
        adapted, unguarded, start = guarded.adapt(item.pool, steps=3), plain.adapt(item.pool, steps=3), plain.adapt(item.pool, steps=0)
        expected = unguarded if kept else start
        assert all(torch.equal(adapted[name], expected[name]) for name in adapted)
        if not kept:
            assert guarded.evaluation_loss(item.evaluation, unguarded) > guarded.evaluation_loss(item.evaluation, start)


def test_an_unknown_adaptation_guard_names_the_key(tiny_module) -> None:
    with pytest.raises(ValueError, match="model.adaptation_guard"):
        tiny_module(FOMAML(), adaptation_guard="always")


@pytest.mark.parametrize("algorithm", ["maml", "hyperinit"])
def test_task_chunks_give_the_unchunked_meta_gradient(algorithm: str, tiny_data, tiny_module, tiny_trainer) -> None:
    """``tasks_per_chunk`` (uneven chunks 3 + 1 of T = 4) equals one backward of the whole meta-batch, in
    float64, for second-order MAML and HyperInit (whose generator is a meta-parameter too); Reptile and
    one task per chunk are checked under DDP in test_distributed.py."""
    from lightning.pytorch.callbacks import Callback

    factories = {"maml": lambda: MAML(inner_steps=2, inner_lr=0.5), "reptile": lambda: Reptile(inner_steps=2, inner_lr=0.5),
                 "hyperinit": lambda: HyperInit(inner_steps=1, inner_lr=0.5, second_order=True)}

    class Recorder(Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}

    recorded = {}
    for chunk in (None, 3):
        module = tiny_module(factories[algorithm](), tasks_per_chunk=chunk)
        recorder = Recorder()
        tiny_trainer(max_steps=1, precision="64-true", limit_val_batches=0, callbacks=[recorder]).fit(
            module, datamodule=tiny_data(tasks_per_batch=4))
        recorded[chunk] = recorder.grads
    assert recorded[3].keys() == recorded[None].keys()
    for name, grad in recorded[None].items():
        torch.testing.assert_close(recorded[3][name], grad, rtol=1e-9, atol=1e-12, msg=name)


def test_tasks_per_chunk_must_be_positive(tiny_module) -> None:
    with pytest.raises(ValueError, match="model.tasks_per_chunk"):
        tiny_module(FOMAML(), tasks_per_chunk=0)


def test_cosine_decay_warms_up_then_falls_to_the_floor_at_max_steps(tiny_data, tiny_module, tiny_trainer) -> None:
    module = tiny_module(FOMAML(inner_steps=1, inner_lr=0.5), warmup_steps=2, lr_decay="cosine", min_lr_ratio=0.1)
    rates = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    tiny_trainer(max_steps=6, limit_val_batches=0, callbacks=[Record()]).fit(module, datamodule=tiny_data())
    peak = 3e-3
    assert rates[0] == pytest.approx(peak)  # the rate for step 1, after warmup step 0 (1/2) and 1 (2/2)
    assert rates == sorted(rates, reverse=True) and rates[-1] == pytest.approx(0.1 * peak)
    constant = tiny_module(FOMAML(), warmup_steps=2)
    constant._trainer = None
    assert [constant._lr_factor(s) for s in (0, 1, 50)] == [0.5, 1.0, 1.0]


def test_an_unknown_lr_decay_names_the_key(tiny_module) -> None:
    with pytest.raises(ValueError, match="model.lr_decay"):
        tiny_module(FOMAML(), lr_decay="linear")
