"""What an engine is: the interface both engines implement (DVC's queue in runner, Ray in
ray_engine) and the options the command line gives them. Both take the cells still to run, in
the order given, and return the (done, failed) names; both run each cell as the same DVC
experiment, so the report reads the same refs whichever engine ran them."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from fashionbg.study.plan.definition import Cell
from fashionbg.study.plan.schedule import Capacity


class Engine(Protocol):
    """Used as `with engine:` around everything the study does with it (Ray stays connected)."""

    def __enter__(self) -> Engine: ...

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 trace: TracebackType | None) -> None: ...

    def capacity(self, todo: Sequence[Cell]) -> Capacity:
        """The devices the cells will share; UserError for a cell that can never run."""

    def run(self, todo: Sequence[Cell]) -> tuple[list[str], list[str]]:
        """Run the cells; (done, failed) names. Ctrl-C stops them and KeyboardInterrupt goes on."""


@dataclass(frozen=True)
class EngineOptions:
    """How the study is told where to run: all optional, all from the command line."""
    git_remote: str | None = None    # across machines: workers clone from and push to it
    dvc_remote: str | None = None    # across machines: workers pull and push outputs here
    cpus_per_cell: int = 1           # cores (and threads) a cell gets


def nproc(cell: Cell, params: dict[str, Any]) -> int:
    """The training processes (GPUs) a cell asks for."""
    return int(cell.params.get("train.nproc", params["train"]["nproc"]))
