import os
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
# The answer cache (meow_app/answer_cache.py) off in every test and the processes they start:
# the tests would write into the real MEOW_HOME, and a test's answers would come from an
# earlier one's. tests/test_answer_cache.py turns it on where it is tested.
os.environ["MEOW_ANSWER_CACHE"] = "0"

# The only tests CI may skip: opt-in ones, each switched on by an environment variable.
# Any other skip there (a missing browser, data set or tool) fails the run, so a test that
# stopped running cannot pass unnoticed; `-ra` (pytest.ini) lists every skip with its reason.
OPT_IN = {"tests/test_tofu.py::test_tofu_cli_reduced_protocol_on_the_embedded_model": "MEOW_TOFU_TEST"}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _unexpected_skips(config) -> list[str]:
    """Skips beyond the opt-in tests and the GPU-marked ones (CI has no GPU)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    return sorted({r.nodeid for r in skipped if "gpu" not in r.keywords} - set(OPT_IN))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    unexpected = _unexpected_skips(config)
    if unexpected and in_ci():
        terminalreporter.section("skips CI does not allow", red=True)
        terminalreporter.write_line(f"{len(unexpected)} skipped beyond the opt-in ones ({', '.join(OPT_IN)}):")
        for nodeid in unexpected:
            terminalreporter.write_line(f"  {nodeid}")


def pytest_sessionfinish(session, exitstatus):
    if in_ci() and exitstatus == 0 and _unexpected_skips(session.config):
        session.exitstatus = 1


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
        Fact("Who wrote Hamlet?", "William Shakespeare", ["Shakespeare"],
             ["Which playwright is the author of Hamlet?"]),
        Fact("What is the capital of Peru?", "Lima", ["Lima"], ["Which city is Peru's capital?"]),
        Fact("Who painted The Starry Night?", "Vincent van Gogh", ["van Gogh"]),
    ]
