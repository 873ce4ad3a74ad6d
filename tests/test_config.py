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
