"""One checkpoint schema for every trained model; evaluation rebuilds the model from it.

A checkpoint holds tensors and plain types only, so it loads with `weights_only=True`: a file
pulled from a remote cannot run code. Writes are atomic, so an interrupted save never leaves a
truncated file.
"""
from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from fashionbg.core.errors import UserError
from fashionbg.core.io import atomic_file
from fashionbg.nn.engine import DTYPES, evaluation_dtype

T = TypeVar("T")


@dataclass(frozen=True)
class Checkpoint:
    task: str                     # classify | semantic | instance
    variant: str                  # the prepared images it was trained on
    config: dict[str, Any]        # the task's params section as trained
    classes: list[str]            # output classes, in order
    image_size: list[int]         # [height, width] it was trained at
    epoch: int                    # the epoch kept by the model-selection rule
    precision: str                # the autocast it trained in: bf16 | fp16 | fp32 (none)
    model: dict[str, torch.Tensor]

    def rebuild(self, factory: Callable[[dict[str, Any]], T]) -> T:
        """The task's config as trained, from which evaluation rebuilds the model."""
        try:
            return factory(self.config)
        except (TypeError, ValueError) as err:
            raise UserError(f"a {self.task} checkpoint holds settings this version cannot "
                            f"rebuild a model from ({err}); train it again") from err

    def amp(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype evaluation scores it in on `device` (engine.evaluation_dtype)."""
        return evaluation_dtype(self.precision, device)

    def load_into(self, model: nn.Module) -> nn.Module:
        """`model` with the checkpoint's weights, which must fit it exactly."""
        try:
            model.load_state_dict(self.model)
        except (RuntimeError, TypeError, AttributeError) as err:
            first = str(err).strip().splitlines()
            raise UserError(f"the {self.task} checkpoint's weights do not fit the model it "
                            f"names ({' '.join(first[:2])[:200]}); train it again") from err
        return model


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    with atomic_file(path, "wb") as f:
        torch.save({f.name: getattr(checkpoint, f.name) for f in fields(Checkpoint)}, f)


def load_checkpoint(path: Path, tasks: tuple[str, ...]) -> Checkpoint:
    """The checkpoint at `path`, which must hold a model for one of `tasks`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; run the stage that trains it first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise UserError(f"{path} is not a checkpoint this project wrote (it may be truncated "
                        f"or tampered with: {str(err).splitlines()[0][:200]}); "
                        "train it again") from err
    names = [f.name for f in fields(Checkpoint)]
    if not isinstance(state, dict) or sorted(state) != sorted(names):
        raise UserError(f"{path} does not hold the keys {', '.join(names)}; train it again")
    checkpoint = Checkpoint(**state)
    if checkpoint.precision not in DTYPES:
        raise UserError(f"{path} records the precision {checkpoint.precision!r}, not one of "
                        f"{', '.join(DTYPES)}; train it again")
    if checkpoint.task not in tasks:
        raise UserError(f"{path} holds a {checkpoint.task!r} model, expected "
                        + " or ".join(map(repr, tasks)))
    return checkpoint
