"""What a study shows of its cells as they run, whichever engine runs them: one progress bar
(cells finished, tqdm's estimate of the time left, which cell runs where) and, at the end, where
the cells' time went."""
from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm


class Progress:
    def __init__(self, total: int) -> None:
        self.bar = tqdm(total=total, unit="cell", desc="study", dynamic_ncols=True)
        self.shown = ""

    def update(self, finished: int, running: dict[str, str]) -> None:
        """`finished` cells so far; `running`: cell → where it runs (node, GPU)."""
        if finished > self.bar.n:
            self.bar.update(finished - self.bar.n)
        where = ", ".join(f"{name}→{at}" for name, at in sorted(running.items())) or "-"
        if where != self.shown:   # a postfix set at every poll would flood a log file
            self.bar.set_postfix_str(where)
            self.shown = where

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


@dataclass(frozen=True)
class CellTime:
    """A finished cell's seconds before its first stage (clone, checkout), in its stages and
    after them (publish), and the devices (GPUs, else CPU threads) its stages held."""
    before: float
    stages: float
    after: float
    devices: int

    def describe(self) -> str:
        return (f"{self.before:.1f} s before its stages, {self.stages:.1f} s in them, "
                f"{self.after:.1f} s after")


def time_summary(cells: list[CellTime], wall: float, devices: float, kind: str) -> str:
    """Where the cells' time went, in sum, and the share of the `devices` (of `kind`, GPU or
    CPU) spent in the cells' stages over the study's wall time (upstream runs included)."""
    before, stages, after = (sum(getattr(c, k) for c in cells)
                             for k in ("before", "stages", "after"))
    busy = sum(c.stages * c.devices for c in cells)
    share = busy / (wall * devices) if wall > 0 and devices > 0 else 0.0
    return (f"{len(cells)} cells in {wall:.0f} s: {before:.0f} s before their stages "
            f"(clone, checkout), {stages:.0f} s in them, {after:.0f} s after (publish); "
            f"{kind}s busy in stages {share:.0%} of the time")
