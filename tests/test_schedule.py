"""The study's cell order and wall-time model on known per-cell times: longest first, each cell
starting on the earliest-free devices it needs."""
from fashionbg.study.plan.schedule import Capacity, longest_first, makespan, most_at_once

HOURS = {"instance-s0": 5.0, "semantic-s0": 3.0, "resnet18-s0": 2.0, "shallow-s0": 1.0,
         "shallow-s1": 1.0}


def test_longest_cells_come_first_and_ties_keep_one_order():
    assert longest_first(HOURS) == ["instance-s0", "semantic-s0", "resnet18-s0", "shallow-s0",
                                    "shallow-s1"]


def test_the_wall_time_spreads_the_cells_over_the_devices():
    # two GPUs: instance (5) | semantic (3) then resnet18 (3+2=5); shallow on the first free
    # at 5 → 6, the other at 5 → 6: 6 h, against 12 h one after another
    assert makespan(HOURS, Capacity(2, "GPU", {})) == 6.0
    assert makespan(HOURS, Capacity(1, "queue slot", {})) == sum(HOURS.values())
    assert makespan(HOURS, Capacity(8, "GPU", {})) == 5.0   # the longest cell bounds it


def test_a_cell_on_several_devices_waits_for_them_all():
    # instance on 2 of 3 GPUs (0-5), semantic on the third (0-3), then resnet18 (3-5), the
    # shallow ones on the first two free at 5
    widths = {"instance-s0": 2}
    assert makespan(HOURS, Capacity(3, "GPU", widths)) == 6.0
    assert makespan({"a": 1.0, "b": 1.0}, Capacity(2, "GPU", {"a": 4})) == 2.0   # capped at 2


def test_how_many_cells_run_at_once():
    widths = {"instance-s0": 2, "semantic-s0": 2}
    assert most_at_once(list(HOURS), Capacity(1, "queue slot", {})) == 1
    assert most_at_once(list(HOURS), Capacity(4, "GPU", widths)) == 3
    assert most_at_once(list(HOURS), Capacity(64, "core", widths)) == 5
