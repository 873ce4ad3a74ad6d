import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dlbook.checkpoint import CheckpointError, load_checkpoint
from dlbook.nn import MLP, MLPConfig
from dlbook.train import EarlyStopping, History, Trainer, accuracy


def _trainer(seed=0, dropout=0.2, lr=0.05, scheduler=True, **kwargs) -> Trainer:
    torch.manual_seed(seed)
    model = MLP(MLPConfig(in_features=4, hidden=[16], out_features=3, dropout=dropout))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40) if scheduler else None
    return Trainer(
        model,
        opt,
        scheduler=sched,
        metrics={"accuracy": accuracy},
        device="cpu",
        progress=False,
        seed=seed,
        **kwargs,
    )


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1])).item() == pytest.approx(2 / 3)


def test_fit_learns_and_records_history(blobs):
    train, val = blobs
    trainer = _trainer()
    before = trainer.evaluate(val)["accuracy"]
    history = trainer.fit(train, val, epochs=8, batch_size=32)
    assert len(history) == 8
    assert history["epoch"] == [float(i) for i in range(1, 9)]
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history.last["val_accuracy"] > max(before, 0.9)
    assert trainer.step == 8 * 6  # ceil(180 / 32) = 6 steps per epoch
    with pytest.raises(KeyError, match="not recorded"):
        history["val_f1"]


def test_evaluate_is_weighted_by_batch_size(blobs):
    _, val = blobs
    trainer = _trainer()
    full = trainer.evaluate(val, batch_size=len(val))
    small = trainer.evaluate(val, batch_size=7)  # uneven last batch
    assert small["loss"] == pytest.approx(full["loss"], rel=1e-5)
    assert small["accuracy"] == pytest.approx(full["accuracy"])


def test_resume_reproduces_uninterrupted_run(blobs, tmp_path):
    train, val = blobs
    straight = _trainer()
    straight.fit(train, val, epochs=4, batch_size=32)

    ckpt = tmp_path / "run.pt"
    first = _trainer()
    first.fit(train, val, epochs=2, batch_size=32, checkpoint_path=ckpt)
    torch.manual_seed(999)  # the resumed process starts from a different random state
    second = _trainer(seed=0)
    second.fit(train, val, epochs=4, batch_size=32, checkpoint_path=ckpt, resume=True)

    assert second.epoch == 4 and second.step == straight.step
    for (k, a), b in zip(
        straight.model.state_dict().items(), second.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert second.history["train_loss"] == straight.history["train_loss"]
    assert second.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]


def test_resume_without_checkpoint_starts_fresh(blobs, tmp_path):
    train, _ = blobs
    trainer = _trainer()
    trainer.fit(train, epochs=1, batch_size=32, checkpoint_path=tmp_path / "new.pt", resume=True)
    assert trainer.epoch == 1 and (tmp_path / "new.pt").is_file()


def test_resume_refuses_checkpoint_of_other_model(blobs, tmp_path):
    train, _ = blobs
    _trainer().fit(train, epochs=1, batch_size=32, checkpoint_path=tmp_path / "c.pt")
    torch.manual_seed(0)
    other = MLP(MLPConfig(in_features=4, hidden=[32], out_features=3))
    trainer = Trainer(other, torch.optim.SGD(other.parameters(), lr=0.1), progress=False)
    with pytest.raises(CheckpointError, match=r"another MLP configuration.*hidden: checkpoint"):
        trainer.fit(train, epochs=2, checkpoint_path=tmp_path / "c.pt", resume=True)


def test_resume_refuses_other_seed(blobs, tmp_path):
    train, _ = blobs
    _trainer(seed=0).fit(train, epochs=1, batch_size=32, checkpoint_path=tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="seed"):
        _trainer(seed=1).fit(train, epochs=2, checkpoint_path=tmp_path / "c.pt", resume=True)


def test_early_stopping_restores_best_weights(blobs):
    train, val = blobs
    trainer = _trainer(lr=0.5, scheduler=False)  # noisy enough that val loss goes up and down
    stopper = EarlyStopping(patience=2)
    history = trainer.fit(train, val, epochs=40, batch_size=8, early_stopping=stopper)
    best_epoch = min(range(len(history)), key=lambda i: history["val_loss"][i]) + 1
    assert stopper.best_epoch == best_epoch
    assert len(history) == best_epoch + 2 or len(history) == 40
    assert trainer.evaluate(val)["loss"] == pytest.approx(min(history["val_loss"]), rel=1e-5)


def test_early_stopping_validates():
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")


def test_bad_arguments_are_clear(blobs):
    train, val = blobs
    trainer = _trainer()
    with pytest.raises(ValueError, match="epochs"):
        trainer.fit(train, epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        trainer.fit(train, epochs=1, batch_size=0)
    with pytest.raises(ValueError, match="val_data"):
        trainer.fit(train, epochs=1, early_stopping=EarlyStopping())
    with pytest.raises(ValueError, match="checkpoint_path"):
        trainer.fit(train, epochs=1, resume=True)
    with pytest.raises(ValueError, match="empty"):
        trainer.fit(TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)), epochs=1)
    with pytest.raises(ValueError, match="grad_clip"):
        _trainer(grad_clip=-1.0)


def test_wrong_input_shape_reaches_the_user(blobs):
    train, _ = blobs
    wide = TensorDataset(torch.randn(10, 5), torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        _trainer().fit(wide, epochs=1)


def test_diverging_loss_is_reported(blobs):
    train, _ = blobs
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(float("inf"))
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), progress=False)
    with pytest.raises(FloatingPointError, match="learning rate"):
        trainer.fit(train, epochs=1)


def test_grad_clip_bounds_the_update():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        nn.functional.mse_loss,
        grad_clip=0.01,
        progress=False,
    )
    trainer.train_step(torch.randn(8, 3) * 100, torch.randn(8, 1) * 100)
    step = torch.cat([(p - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    assert step.norm().item() == pytest.approx(0.01, rel=1e-4)


def test_predict_matches_forward(blobs):
    _, val = blobs
    trainer = _trainer(dropout=0.5)
    x = val.tensors[0]
    trainer.model.eval()
    torch.testing.assert_close(trainer.predict(x, batch_size=7), trainer.model(x))


def test_history_last_on_empty():
    with pytest.raises(IndexError):
        _ = History().last


@pytest.mark.parametrize("k", [2, 3, 5])
def test_gradient_accumulation_equals_the_large_batch(blobs, k):
    """k micro-batches (uneven ones included) give the step of the whole batch."""
    train, _ = blobs
    whole, accumulated = _trainer(dropout=0.0), _trainer(dropout=0.0, accumulation_steps=k)
    whole.fit(train, epochs=2, batch_size=50)
    accumulated.fit(train, epochs=2, batch_size=50)
    for a, b in zip(whole.model.parameters(), accumulated.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert accumulated.history["train_loss"] == pytest.approx(whole.history["train_loss"])


def test_accumulation_steps_validated():
    with pytest.raises(ValueError, match="accumulation_steps"):
        _trainer(accumulation_steps=0)


def _gpt_trainer(n_head: int, seed: int = 0) -> Trainer:
    from dlbook.nn import GPT, GPTConfig

    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=n_head, n_embd=16))
    opt = torch.optim.AdamW(gpt.parameters(), lr=1e-3)
    return Trainer(gpt, opt, lambda out, y: out[1], device="cpu", progress=False)


def test_resume_refuses_same_shapes_of_another_architecture(tmp_path):
    """n_head = 2 and n_head = 4 have tensors of the same names and shapes: only the stored
    model config tells the two apart."""
    x = torch.randint(0, 11, (2, 8))
    first = _gpt_trainer(n_head=2)
    first.forward = lambda idx: first.model(idx, x)  # the loss needs the targets here
    first.train_step(x, x)
    first.save(tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["model_class"] == "GPT" and state["model_config"]["n_head"] == 2
    with pytest.raises(CheckpointError, match="n_head: checkpoint 2 vs model 4"):
        _gpt_trainer(n_head=4).load(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="another GPT configuration"):
        load_checkpoint(tmp_path / "c.pt", _gpt_trainer(n_head=4).model)
    _gpt_trainer(n_head=2).load(tmp_path / "c.pt")  # the same architecture loads


def test_early_stopping_on_unknown_metric_fails_before_training(blobs):
    train, val = blobs
    trainer = _trainer()
    with pytest.raises(ValueError, match="'val_acc'.*val_accuracy"):
        trainer.fit(train, val, epochs=3, early_stopping=EarlyStopping(monitor="val_acc"))
    assert trainer.step == 0 and len(trainer.history) == 0  # failed at once, not after an epoch
    stopper = EarlyStopping(monitor="val_accuracy", mode="max", patience=1)
    trainer.fit(train, val, epochs=1, early_stopping=stopper)  # a recorded metric is accepted
    assert stopper.best_epoch == 1


def test_fp16_with_grad_scaler_trains_on_cpu(blobs):
    """CPU autocast supports float16 and GradScaler works on the CPU in torch >= 2.3: the
    fp16 path of train_step (scale, unscale for clipping, step, update) really runs."""
    train, val = blobs
    trainer = _trainer(amp="fp16", grad_clip=1.0, scheduler=False, dropout=0.0)
    assert trainer.amp_dtype == torch.float16 and trainer.scaler.is_enabled()
    start = trainer.scaler.get_scale()
    history = trainer.fit(train, val, epochs=3, batch_size=32)
    assert history["val_loss"][-1] < history["val_loss"][0]
    assert trainer.scaler.get_scale() > 0 and start == 2.0**16
    assert "scaler" in trainer.state_dict() and trainer.state_dict()["scaler"]["scale"] > 0


def test_compiled_trainer_matches_eager(blobs):
    train, _ = blobs
    eager = _trainer(dropout=0.0, scheduler=False)
    compiled = _trainer(dropout=0.0, scheduler=False, compile=True)
    assert compiled.forward is not compiled.model  # the forward pass goes through the compiler
    x, y = train.tensors[0][:32], train.tensors[1][:32]
    losses = [(eager.train_step(x, y), compiled.train_step(x, y)) for _ in range(3)]
    for a, b in losses:
        assert a == pytest.approx(b, rel=1e-5)
    for p, q in zip(eager.model.parameters(), compiled.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert "model" in compiled.state_dict()  # checkpoints hold the plain model's names
    assert not any(k.startswith("_orig_mod") for k in compiled.state_dict()["model"])
