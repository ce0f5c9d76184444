"""progress.py: the words the CLI's bar and the app's status line show for a step event."""

import pytest

from meow_app import progress


def test_time_left_is_the_mean_pace_so_far_times_the_steps_to_go():
    assert progress.seconds_left(None, 1, 12) is None and progress.seconds_left(10.0, 0, 12) is None
    assert progress.seconds_left(30.0, 3, 12) == 90.0  # 10 s a step, 9 to go
    assert progress.seconds_left(30.0, 12, 12) == 0.0
    assert (progress.step_text({"step": 3, "total_steps": 12, "seconds": 30.0})
            == "step 3 of at most 12, about 1 min 30 s left")
    assert progress.step_text({"step": 2, "total_steps": 4, "seconds": 2.0}) == "step 2 of at most 4, about 2 s left"
    assert progress.step_text({"step": 4, "total_steps": 4, "seconds": 9.0}) == "step 4 of at most 4, finishing"
    assert progress.step_text({"step": 1, "total_steps": 4}) == "step 1 of at most 4"  # no time yet: none guessed


def test_bar_fills_with_the_steps():
    assert progress.bar(0, 10, 10) == "[----------]"
    assert progress.bar(5, 10, 10) == "[#####-----]"
    assert progress.bar(12, 12, 10) == "[##########]"
    assert progress.bar(3, 0, 4) == "[####]"


@pytest.mark.parametrize("event,cli_text,app_text", [
    ({"type": "probe", "epoch": 1, "hit_rate": None, "paraphrase_hit_rate": None, "still_likely": 3},
     "probe after epoch 1: true answer still likely for 3",
     "After epoch 1: the true answer is still likely for 3 of the facts, training goes on"),
    ({"type": "probe", "epoch": 2, "hit_rate": 0.25, "paraphrase_hit_rate": 0.0, "still_likely": 0},
     "probe after epoch 2: forget hit rate 25%, paraphrases 0%, true answer still likely for 0",
     "After epoch 2: 25% of forget questions still answered; the true answer is still likely for 0 of the facts"),
    ({"type": "probe", "epoch": 3, "hit_rate": 0.0, "paraphrase_hit_rate": None},
     "probe after epoch 3: forget hit rate 0%, paraphrases n/a",
     "After epoch 3: 0% of forget questions still answered"),
    ({"type": "note", "text": "meow_patch does not apply here, so meow ran instead: no preserved text"},
     "note: meow_patch does not apply here, so meow ran instead: no preserved text",
     "Note: meow_patch does not apply here, so meow ran instead: no preserved text"),
    ({"type": "task", "text": "sampling the original model's answers"},
     "sampling the original model's answers", "Training: sampling the original model's answers"),
])
def test_probe_progress_lines_in_the_cli_and_the_app(event, cli_text, app_text, capsys):
    """A probe that skipped the greedy answers (a true answer still likely) says so, in both."""
    from meow_app import cli
    from studio import unlearn_tab

    cli._print_event(event)
    assert capsys.readouterr().err.strip() == cli_text
    assert unlearn_tab._event_status(event, [], lambda *a, **k: None) == app_text
