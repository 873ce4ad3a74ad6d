import pytest
import torch

from dlbook import config


@pytest.mark.parametrize("name,expected", [("smoke", 1), ("book", 2), ("full", 3), ("", 2)])
def test_pick_follows_profile(monkeypatch, name, expected):
    monkeypatch.setenv("DLBOOK_PROFILE", name)
    assert config.pick(smoke=1, book=2, full=3) == expected


def test_full_falls_back_to_book(monkeypatch):
    monkeypatch.setenv("DLBOOK_PROFILE", "full")
    assert config.pick(smoke=1, book=2) == 2


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("DLBOOK_PROFILE", "fast")
    with pytest.raises(ValueError, match="smoke, book, full"):
        config.profile()


def test_checks_disabled_only_in_smoke(monkeypatch):
    monkeypatch.setenv("DLBOOK_PROFILE", "smoke")
    assert not config.checks_enabled()
    monkeypatch.setenv("DLBOOK_PROFILE", "book")
    assert config.checks_enabled()


def test_seed_everything_reproduces_draws():
    config.seed_everything(7)
    a = torch.randn(5)
    config.seed_everything(7)
    assert torch.equal(a, torch.randn(5))


def test_cache_dir_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DLBOOK_CACHE", str(tmp_path / "x"))
    assert config.cache_dir() == tmp_path / "x"
    assert (tmp_path / "x").is_dir()


# --------------------------------------------------------------------------- validate_config

from dataclasses import dataclass, field  # noqa: E402
from typing import Annotated, Literal  # noqa: E402

from dlbook.config import (  # noqa: E402
    Dropout,
    Interval,
    NonNegativeInt,
    PositiveFloat,
    validate_config,
)


@dataclass
class Example:
    size: int = 4
    flag: bool = False
    rate: float = 0.5
    kind: Literal["a", "b"] = "a"
    name: str = "x"
    offset: NonNegativeInt = 0
    lr: PositiveFloat = 1e-3
    dropout: Dropout = 0.0
    ratio: Annotated[float, Interval("(0, 1]")] = 1.0
    widths: list[int] = field(default_factory=lambda: [2, 3])
    pair: tuple[float, float] = (0.1, 0.2)
    limit: int | None = None

    def __post_init__(self) -> None:
        validate_config(self)


def test_defaults_and_good_values_pass():
    Example()
    Example(size=1, flag=True, rate=0, offset=0, limit=3, pair=[0.0, 1.0], widths=[])
    import numpy as np

    Example(size=np.int64(3))  # numpy integers are integers


@pytest.mark.parametrize(
    "field_name, value, says",
    [
        ("size", 0, "integer >= 1"),
        ("size", 2.5, "integer >= 1"),
        ("size", True, "integer >= 1"),  # a bool is not a size
        ("size", "4", "integer >= 1"),
        ("flag", "false", "True or False"),  # the string that used to switch RoPE on
        ("flag", 0, "True or False"),
        ("rate", -0.1, "finite number >= 0"),
        ("rate", float("nan"), "finite number"),
        ("rate", float("inf"), "finite number"),
        ("kind", "c", "one of 'a', 'b'"),
        ("name", 3, "a string"),
        ("offset", -1, "integer >= 0"),
        ("lr", 0.0, "> 0"),
        ("dropout", 1.0, r"in \[0, 1\)"),
        ("ratio", 0.0, r"in \(0, 1\]"),
        ("widths", [2, 0], "item 1 is 0"),
        ("widths", 3, "a list"),
        ("pair", (0.1,), "2 items"),
        ("limit", 0, "integer >= 1 or None"),
    ],
)
def test_each_bad_field_is_named(field_name, value, says):
    with pytest.raises(ValueError, match=f"Example.{field_name} must be .*{says}"):
        Example(**{field_name: value})


def test_interval_parsing_and_bad_use():
    assert 0.0 in Interval("[0, 1)") and 1.0 not in Interval("[0, 1)")
    assert 0.0 not in Interval("(0, inf)") and 1e300 in Interval("(0, inf)")
    with pytest.raises(ValueError, match="interval looks like"):
        Interval("0..1")
    with pytest.raises(TypeError, match="dataclass instance"):
        validate_config(Example)


@pytest.mark.parametrize(
    "make",
    [
        lambda: __import__("dlbook.nn", fromlist=["GPTConfig"]).GPTConfig(rope="false"),
        lambda: __import__("dlbook.nn", fromlist=["GPTConfig"]).GPTConfig(norm="batch"),
        lambda: __import__("dlbook.nn", fromlist=["MLPConfig"]).MLPConfig(4, hidden=[8.5]),
        lambda: __import__("dlbook.nn", fromlist=["LeNetConfig"]).LeNetConfig(num_classes=0),
        lambda: __import__("dlbook.nn", fromlist=["ResNetConfig"]).ResNetConfig(blocks=[1, -1, 1]),
        lambda: __import__("dlbook.nn", fromlist=["CharLSTMConfig"]).CharLSTMConfig(
            5, dropout=1.5
        ),
        lambda: __import__("dlbook.nn", fromlist=["TransformerEncoderConfig"])
        .TransformerEncoderConfig(vocab_size=10, block_size=8, bias="yes"),
        lambda: __import__("dlbook.pretrain", fromlist=["PretrainConfig"]).PretrainConfig(
            lr=-1.0
        ),
    ],
)
def test_every_config_of_the_library_uses_the_validator(make):
    with pytest.raises(ValueError, match=r"Config\.\w+ must be"):
        make()
