import pytest
import torch
from torch import nn

from dlbook.data import MissingDependencyError, load_digits, require
from dlbook.nn import MLP, MLPConfig


def test_mlp_matches_hand_built_sequential():
    torch.manual_seed(0)
    model = MLP(MLPConfig(in_features=5, hidden=[7, 3], out_features=2, activation="tanh"))
    ref = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3), nn.Tanh(), nn.Linear(3, 2))
    ref.load_state_dict({k.removeprefix("net."): v for k, v in model.state_dict().items()})
    x = torch.randn(11, 5)
    torch.testing.assert_close(model(x), ref(x))


def test_mlp_rejects_wrong_width():
    model = MLP(MLPConfig(in_features=4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        model(torch.randn(2, 5))


@pytest.mark.parametrize(
    "kwargs", [{"activation": "swish"}, {"hidden": [0]}, {"dropout": 1.0}, {"in_features": -1}]
)
def test_mlp_config_validates(kwargs):
    with pytest.raises(ValueError):
        MLPConfig(**{"in_features": 4, **kwargs})


def test_digits_splits_are_disjoint_and_stratified():
    splits = load_digits()
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 1797
    x_train = splits.train.tensors[0]
    x_test = splits.test.tensors[0]
    assert x_train.min() >= 0 and x_train.max() <= 1
    # no test image appears in the training set
    train_rows = {tuple(r.tolist()) for r in x_train}
    overlap = sum(tuple(r.tolist()) in train_rows for r in x_test)
    assert overlap < 5  # the data set itself holds a handful of duplicate images
    counts = torch.bincount(splits.test.tensors[1], minlength=10)
    assert counts.min() >= 30 and counts.max() <= 40


def test_digits_bad_fractions():
    with pytest.raises(ValueError, match="fraction"):
        load_digits(val_fraction=0.6, test_fraction=0.5)


def test_require_names_the_pip_package():
    with pytest.raises(MissingDependencyError, match="pip install no-such-pkg"):
        require("no_such_module_xyz", "no-such-pkg", "a test")
