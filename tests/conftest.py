import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from tiny import save_tiny  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "tofu"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama saved as a checkpoint folder (what `--model PATH` accepts)."""
    return save_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from meow_app import models

    return models.load(tiny_dir, "cpu")


@pytest.fixture
def facts():
    from meow_app.facts import Fact

    return [
        Fact("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare"], ["Which playwright is the author of Hamlet?"]),
        Fact("What is the capital of Peru?", "Lima", ["Lima"], ["Which city is Peru's capital?"]),
        Fact("Who painted The Starry Night?", "Vincent van Gogh", ["van Gogh"]),
    ]
