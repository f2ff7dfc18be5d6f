"""Built-in verifiable tasks: prompts with fixed train / held-out splits and gold verifiers.

from training.tasks import get_task
task = get_task("arithmetic")
for ex in task.examples("heldout"):
    messages = task.messages(ex)          # send to the policy
    score = task.reward(ex, completion)   # 1.0 correct, 0.0 wrong (fractions allowed)
"""

from __future__ import annotations

from training.tasks.arithmetic import ArithmeticTask
from training.tasks.base import SPLITS, Example, Task
from training.tasks.constraints import ConstraintsTask
from training.tasks.sorting import SortingTask

TASKS: dict[str, Task] = {task.name: task for task in (ArithmeticTask(), ConstraintsTask(), SortingTask())}


def get_task(name: str) -> Task:
    """The registered task called `name`; a ValueError names the known ones otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}: known tasks are {', '.join(sorted(TASKS))}") from None


__all__ = [
    "SPLITS",
    "TASKS",
    "ArithmeticTask",
    "ConstraintsTask",
    "Example",
    "SortingTask",
    "Task",
    "get_task",
]
