"""One progress bar over a study's cells, whichever engine runs them: cells finished, tqdm's
estimate of the time left, and which cell runs where."""
from __future__ import annotations

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
