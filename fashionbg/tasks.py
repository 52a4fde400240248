"""Every task class by name, for code that meets a task by its name alone, without its data:
the study's pre-flight times each through its `rehearsal` (fashionbg.nn.task). The names are
contracts.tasks.TASKS' (a test keeps the two equal); segmentation tasks come from
segment.tasks.TASKS."""
from __future__ import annotations

from fashionbg.classify.task import ClassifyTask
from fashionbg.nn.task import Task
from fashionbg.segment import tasks as segment

TASK_CLASSES: dict[str, type[Task]] = {"classify": ClassifyTask, **segment.TASKS}
