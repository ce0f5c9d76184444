"""progress.py: the words the CLI's bar and the app's status line show for a step event."""

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
