"""A probe that test_distributed puts on PYTHONPATH of a two-process training run: Python
imports it at the start of every process, and in a training rank (RANK set) with RANK_PROBE
naming a folder it records, one file per process, the prepared-cache row behind every dataset
item the process (or its loader workers) read, and the epoch `fit` kept, so the test counts
what each process did instead of trusting the code's own counters. Elsewhere it does nothing."""
from __future__ import annotations

import os
from pathlib import Path


def record(what: str, value: int) -> None:
    name = f"{os.environ['RANK']}-{os.getpid()}.txt"        # forked workers: files of their own
    with open(Path(os.environ["RANK_PROBE"]) / name, "a") as f:
        f.write(f"{what} {value}\n")


def install() -> None:
    from fashionbg.classify.data import ArrayDataset
    from fashionbg.nn import engine
    from fashionbg.segment.data import InstanceDataset, SemanticDataset

    for cls, rows in ((ArrayDataset, "indices"), (SemanticDataset, "rows"),
                      (InstanceDataset, "rows")):
        def read(self, i, get=cls.__getitem__, rows=rows):
            record("row", int(getattr(self, rows)[i]))
            return get(self, i)

        cls.__getitem__ = read

    fit = engine.fit

    def kept(*args, **kwargs):
        result = fit(*args, **kwargs)
        record("kept", result.best_epoch)
        return result

    engine.fit = kept        # before nn.training imports it


if "RANK" in os.environ and "RANK_PROBE" in os.environ:
    install()
