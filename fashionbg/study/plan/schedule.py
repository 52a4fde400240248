"""The order cells run in and the wall time that gives, from a time per cell: the longest cells
start first (so the hours-long ones do not leave a tail with most devices idle), and each cell
starts as soon as the devices it asks for are free (greedy list scheduling, the engine's own
policy: the DVC queue runs one cell at a time, Ray starts whatever fits)."""
from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Capacity:
    """What an engine spreads the cells over: `devices` of one kind (GPUs, cores, or the
    queue's single slot), of which each cell takes `widths[name]` (1 where not said)."""
    devices: int
    unit: str
    widths: Mapping[str, int]

    def width(self, name: str) -> int:
        return min(self.widths.get(name, 1), self.devices)

    def describe(self) -> str:
        return f"{self.devices} {self.unit}{'s' if self.devices != 1 else ''}"


def longest_first(seconds: Mapping[str, float]) -> list[str]:
    """Names, longest first; ties by name so the order is the same on every run."""
    return sorted(seconds, key=lambda name: (-seconds[name], name))


def makespan(seconds: Mapping[str, float], capacity: Capacity) -> float:
    """The wall time of running the cells longest first, each starting when as many devices as
    it takes are free (the earliest-free ones)."""
    free = [0.0] * capacity.devices   # when each device is free next
    end = 0.0
    for name in longest_first(seconds):
        taken = [heapq.heappop(free) for _ in range(capacity.width(name))]
        finish = max(taken) + seconds[name]
        for _ in taken:
            heapq.heappush(free, finish)
        end = max(end, finish)
    return end


def most_at_once(names: list[str], capacity: Capacity) -> int:
    """How many cells can run at the same moment at most: the narrowest ones, as many as fit on
    the devices (whose outputs the disk must hold side by side)."""
    count, used = 0, 0
    for name in sorted(names, key=capacity.width):
        used += capacity.width(name)
        if used > capacity.devices:
            break
        count += 1
    return count
