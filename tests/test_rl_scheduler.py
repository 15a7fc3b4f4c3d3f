"""GroupScheduler: the episode manager's hook that fills GRPO groups."""
import pytest

from vla_robot.rl.scheduler import GroupScheduler


def test_fills_one_group_before_opening_the_next_and_visits_every_task():
    s = GroupScheduler({"reach": [0, 1], "push": [7]}, group_size=3, max_open=1)
    seen = []
    for _ in range(9):
        task, start = s.next()
        seen.append((task, start))
        s.record(task, start, 1 if len(seen) % 2 else 0)
    assert seen == [("reach", 0)] * 3 + [("push", 7)] * 3 + [("reach", 1)] * 3
    assert [(t, st, len(o)) for t, st, o in s.completed] == [("reach", 0, 3), ("push", 7, 3), ("reach", 1, 3)]


def test_discarded_episodes_do_not_count_and_are_scheduled_again():
    s = GroupScheduler({"reach": [5]}, group_size=2)
    t, st = s.next()
    s.record(t, st, None)  # discarded by the operator
    assert s.next() == ("reach", 5)
    assert not s.record("reach", 5, 1)
    assert s.next() == ("reach", 5)
    assert s.record("reach", 5, 0)  # completes the group
    assert s.completed == [("reach", 5, [1, 0])]


def test_parallel_episodes_finish_open_groups_first():
    s = GroupScheduler({"reach": [0, 1, 2]}, group_size=2, max_open=2)
    a = [s.next() for _ in range(3)]  # two for group 0, then group 1 opens
    assert a == [("reach", 0), ("reach", 0), ("reach", 1)]
    s.record("reach", 0, 1)
    s.record("reach", 0, 0)
    assert s.next() == ("reach", 1)


def test_expire_closes_stale_groups():
    s = GroupScheduler({"reach": [0, 1]}, group_size=4)
    t, st = s.next(version=0)
    s.record(t, st, 1)
    assert s.expire(version=5, max_staleness=2) == 1
    assert s.next(version=5) == ("reach", 1)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least one start condition"):
        GroupScheduler({"reach": []})
    s = GroupScheduler({"reach": [0]}, group_size=2)
    with pytest.raises(ValueError, match="no open group"):
        s.record("reach", 3, 1)
    s.next()
    with pytest.raises(ValueError, match="label must be 1, 0 or None"):
        s.record("reach", 0, 2)


def test_position_says_which_group_and_which_episode_of_it():
    s = GroupScheduler({"reach": [0, 1]}, group_size=2)
    t, st = s.next()
    assert s.position(t, st) == (1, 1)
    assert s.next() == ("reach", 0) and s.position("reach", 0) == (1, 2)
    s.record("reach", 0, 1)
    s.record("reach", 0, None)  # discarded: handed out again, as the 2nd episode of group 1
    assert s.next() == ("reach", 0) and s.position("reach", 0) == (1, 2)
    s.record("reach", 0, 0)
    assert s.next() == ("reach", 1) and s.position("reach", 1) == (2, 1)
    assert s.position("reach", 0) is None  # complete: no longer open
