import json

import pytest
import torch
from torch import nn

from dlbook.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    load_model,
    model_config,
    save_checkpoint,
    save_model,
)
from dlbook.nn import MLP, MODELS, MLPConfig


def _mlp(hidden=(8,), seed=0) -> MLP:
    torch.manual_seed(seed)
    return MLP(MLPConfig(in_features=4, hidden=list(hidden), out_features=3))


def test_model_round_trip(tmp_path):
    model = _mlp()
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m", MODELS)
    assert again.config == model.config and not again.training
    x = torch.randn(6, 4)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["model_class"] == "MLP"


def test_model_without_config_is_refused(tmp_path):
    with pytest.raises(TypeError, match="config"):
        save_model(nn.Linear(2, 2), tmp_path / "m")


def test_missing_model_dir(tmp_path):
    with pytest.raises(CheckpointError, match="no model config"):
        load_model(tmp_path / "nothing", MODELS)


def test_corrupt_weights_file(tmp_path):
    save_model(_mlp(), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_model(tmp_path / "m", MODELS)


def test_corrupt_config_file(tmp_path):
    save_model(_mlp(), tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path / "m", MODELS)


def test_unknown_model_class_is_not_instantiated(tmp_path):
    save_model(_mlp(), tmp_path / "m")
    with pytest.raises(CheckpointError, match="not one of"):
        load_model(tmp_path / "m", {})


def test_weights_of_another_model_are_diagnosed(tmp_path):
    save_model(_mlp(hidden=(8,)), tmp_path / "a")
    save_model(_mlp(hidden=(16,)), tmp_path / "b")
    # config of a, weights of b: shapes do not fit
    (tmp_path / "a" / "model.safetensors").write_bytes(
        (tmp_path / "b" / "model.safetensors").read_bytes()
    )
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(tmp_path / "a", MODELS)


def test_training_checkpoint_round_trip(tmp_path):
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict(), "optimizer": opt.state_dict()})
    state = load_checkpoint(tmp_path / "c.pt", _mlp(seed=1))
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v)
    assert state["optimizer"]["state"][0]["step"] == 1


def test_checkpoint_needs_model_state(tmp_path):
    with pytest.raises(ValueError, match="model"):
        save_checkpoint(tmp_path / "c.pt", {"optimizer": {}})


@pytest.mark.parametrize("content", [b"", b"definitely not a zip", b"PK\x03\x04" + b"\x00" * 40])
def test_corrupt_checkpoint(tmp_path, content):
    (tmp_path / "c.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(tmp_path / "c.pt")


def test_truncated_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"model": _mlp().state_dict()})
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "c.pt")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model": {}, "format_version": 1, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_checkpoint(tmp_path / "evil.pt")


def test_foreign_file_is_refused(tmp_path):
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a dlbook training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_checkpoint_of_another_model(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"model": _mlp(hidden=(8,)).state_dict()})
    with pytest.raises(CheckpointError, match="does not fit MLP"):
        load_checkpoint(tmp_path / "c.pt", _mlp(hidden=(8, 8)))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("good")

    def crash(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_text() == "good"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


@pytest.mark.parametrize(
    "change, word",
    [
        ({"hidden": ["eight"]}, "hidden"),  # the config class's own validation: ValueError
        ({"activation": "swish"}, "activation"),
        ({"bogus": 1}, "bogus"),  # an unexpected field: TypeError
        ({"dropout": 2.0}, "dropout"),
    ],
)
def test_bad_config_values_are_a_checkpoint_error(tmp_path, change, word):
    save_model(_mlp(), tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    meta = json.loads(path.read_text())
    meta["config"].update(change)
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"config does not fit MLP.*{word}"):
        load_model(tmp_path / "m", MODELS)


@pytest.mark.parametrize("version, word", [(99, "format version 99"), (None, "format_version"),
                                           ("1", "format_version")])
def test_model_format_version_is_checked(tmp_path, version, word):
    save_model(_mlp(), tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    meta = json.loads(path.read_text())
    assert meta["format_version"] == 1
    meta["format_version"] = version
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=word):
        load_model(tmp_path / "m", MODELS)


def test_training_checkpoint_format_version_is_checked(tmp_path):
    model = _mlp()
    torch.save({"format_version": 2, "model": model.state_dict()}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="format version 2"):
        load_checkpoint(tmp_path / "new.pt")
    torch.save({"format_version": "x", "model": model.state_dict()}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(tmp_path / "bad.pt")


def test_load_checkpoint_checks_the_recorded_config(tmp_path):
    model = _mlp()
    save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict(), "model_class": "MLP",
                                        "model_config": model_config(model)})
    load_checkpoint(tmp_path / "c.pt", _mlp(seed=1))  # same architecture, other weights: fine
    other = MLP(MLPConfig(in_features=4, hidden=[8], out_features=3, activation="tanh"))
    with pytest.raises(CheckpointError, match="activation: checkpoint 'relu' vs model 'tanh'"):
        load_checkpoint(tmp_path / "c.pt", other)  # identical shapes, another model
    save_checkpoint(tmp_path / "d.pt", {"model": model.state_dict(), "model_class": "LeNet"})
    with pytest.raises(CheckpointError, match="holds a LeNet, not a MLP"):
        load_checkpoint(tmp_path / "d.pt", model)
