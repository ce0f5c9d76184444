"""The benchmark helpers' formatting (no timing here: speed is measured in bench/, not asserted)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import common  # noqa: E402
import scaling  # noqa: E402


def test_table_is_markdown():
    assert common.table(["a", "b"], [[1, "x"], [2.5, ""]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 |  |\n"


def test_header_names_the_machine_and_load():
    text = common.header("Title", ".venv/bin/python bench/x.py", "1.0/1.0/1.0")
    assert text.startswith("### Title: ")
    assert "cores" in text and "torch" in text and "Load average" in text and "bench/x.py" in text


def test_stopwatch_times_and_restores():
    class Module:
        @staticmethod
        def work(x):
            return x + 1

    plain = Module.work
    watch = common.Stopwatch()
    watch.wrap(Module, "work")
    assert Module.work(1) == 2 and watch.calls == {"work": 1} and watch.seconds["work"] >= 0
    watch.restore()
    assert Module.work is plain and watch.calls == {"work": 1}


def test_growth_exponent():
    assert abs(scaling.growth([1, 4, 16], [3, 12, 48]) - 1.0) < 1e-9
    assert abs(scaling.growth([1, 4, 16], [5, 5, 5])) < 1e-9
