"""Which task and start condition comes next, so that GRPO groups fill up.

On a robot, episodes are slow and a group is only useful once it holds n labelled outcomes of the
same (task, start condition). The episode manager asks :meth:`GroupScheduler.next` before each
reset and reports each outcome with :meth:`record`; the scheduler finishes open groups first
(fewest episodes missing), opens a new group only when fewer than ``max_open`` are open, and takes
start conditions round-robin per task so that every task is visited. Discarded episodes do not
count; a group that is too old for the learner (``expire``) is closed and its start re-queued.
"""
from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from vla_robot.data.schema import Label


@dataclass
class _Group:
    task: str
    start: Hashable
    outcomes: list[int] = field(default_factory=list)
    pending: int = 0            # episodes handed out but not yet recorded
    opened_version: int = 0
    number: int = 0             # 1 for the first group opened, 2 for the next, ... (for the operator)


class GroupScheduler:
    def __init__(self, tasks: dict[str, Sequence[Hashable]], group_size: int = 8, max_open: int = 1) -> None:
        if not tasks or any(len(s) == 0 for s in tasks.values()):
            raise ValueError("GroupScheduler needs at least one task, each with at least one start condition: "
                             f"got {({k: len(v) for k, v in tasks.items()})}")
        if group_size < 2 or max_open < 1:
            raise ValueError(f"group_size must be >= 2 and max_open >= 1, got {group_size} and {max_open}")
        self.tasks = {k: list(v) for k, v in tasks.items()}
        self.group_size = group_size
        self.max_open = max_open
        self._open: list[_Group] = []
        self._next_start = {k: 0 for k in self.tasks}
        self._task_order = list(self.tasks)
        self._next_task = 0
        self.completed: list[tuple[str, Hashable, list[int]]] = []
        self._opened = 0

    def next(self, version: int = 0) -> tuple[str, Hashable]:
        """The (task, start condition) of the next episode."""
        waiting = [g for g in self._open if len(g.outcomes) + g.pending < self.group_size]
        if not waiting and len(self._open) < self.max_open:
            waiting = [self._open_group(version)]
        if not waiting:  # every open group has all its episodes handed out: open one more anyway
            waiting = [self._open_group(version)]
        g = min(waiting, key=lambda g: self.group_size - len(g.outcomes) - g.pending)
        g.pending += 1
        return g.task, g.start

    def record(self, task: str, start: Hashable, label: int | None) -> bool:
        """Report an outcome as :attr:`Label.reward` (1, 0, or None for discarded/unlabelled).

        True when it completed its group."""
        g = next((g for g in self._open if g.task == task and g.start == start), None)
        if g is None:
            raise ValueError(f"record: no open group for task {task!r} start {start!r}; ask next() first")
        g.pending = max(0, g.pending - 1)
        try:
            reward = Label.from_reward(label).reward
        except ValueError:
            raise ValueError(f"record: label must be 1, 0 or None (discarded), as Label.reward gives, "
                             f"got {label!r}") from None
        if reward is None:
            return False
        g.outcomes.append(reward)
        if len(g.outcomes) >= self.group_size:
            self._open.remove(g)
            self.completed.append((g.task, g.start, g.outcomes))
            return True
        return False

    def position(self, task: str, start: Hashable) -> tuple[int, int] | None:
        """(group number, episodes of it handed out or recorded so far) of the open group of ``(task, start)``:
        right after :meth:`next`, the second is the place of the episode just handed out (3 of 8)."""
        g = next((g for g in self._open if g.task == task and g.start == start), None)
        return None if g is None else (g.number, len(g.outcomes) + g.pending)

    def expire(self, version: int, max_staleness: int) -> int:
        """Close groups opened before ``version - max_staleness``; returns how many were closed."""
        old = [g for g in self._open if g.opened_version < version - max_staleness and g.pending == 0]
        for g in old:
            self._open.remove(g)
        return len(old)

    def _open_group(self, version: int) -> _Group:
        task = self._task_order[self._next_task % len(self._task_order)]
        self._next_task += 1
        starts = self.tasks[task]
        start = starts[self._next_start[task] % len(starts)]
        self._next_start[task] += 1
        self._opened += 1
        g = _Group(task, start, opened_version=version, number=self._opened)
        self._open.append(g)
        return g
