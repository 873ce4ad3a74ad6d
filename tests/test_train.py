import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dlbook.checkpoint import CheckpointError
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
    with pytest.raises(CheckpointError, match="shape mismatch"):
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
