"""dlbook: the library behind *Building Large Models from Scratch with PyTorch 2*."""

from dlbook.config import checks_enabled, pick, profile, seed_everything
from dlbook.device import get_device

__version__ = "0.1.0"
__all__ = ["checks_enabled", "get_device", "pick", "profile", "seed_everything"]
