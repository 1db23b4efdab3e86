"""Placement: what a job gets from the free slots. Checked by example and by property."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from training_platform.scheduling.placement import Demand, Slot, capacity_check, choose


def _gpus(host: str, count: int, name: str = "H100", memory: int = 81920) -> list[Slot]:
    return [Slot(host, "gpu", i, name, memory, memory) for i in range(count)]


def test_best_fit_keeps_big_blocks_whole() -> None:
    free = _gpus("big", 4) + _gpus("small", 1)
    assert [(s.host, s.index) for s in choose(Demand(gpus=1), free)] == [("small", 0)]
    assert [s.index for s in choose(Demand(gpus=2), free)] == [0, 1]
    assert choose(Demand(gpus=5), free) is None


def test_requests_by_host_devices_type_and_memory() -> None:
    free = _gpus("a", 2, "A100", 40960) + _gpus("b", 2, "H100", 81920)
    assert {s.host for s in choose(Demand(gpus=1, gpu_type="h100"), free)} == {"b"}
    assert choose(Demand(gpus=1, min_memory_mb=50000), free)[0].host == "b"
    assert [s.index for s in choose(Demand(gpus=1, host="a", devices=(1,)), free)] == [1]
    assert choose(Demand(gpus=1, host="a", devices=(3,)), free) is None
    assert choose(Demand(gpus=1, memory_per_device_mb=90000), free) is None
    assert choose(Demand(gpus=1, memory_per_device_mb=90000), free, check_memory=False)


def test_cpu_jobs_take_cpu_slots_only() -> None:
    free = [Slot("a", "cpu", 0), *_gpus("a", 1)]
    assert [(s.kind, s.index) for s in choose(Demand(gpus=0), free)] == [("cpu", 0)]
    assert choose(Demand(gpus=0), _gpus("a", 1)) is None


def test_capacity_check_says_what_is_available() -> None:
    every = [*_gpus("node", 4), Slot("node", "cpu", 0)]
    assert capacity_check(Demand(gpus=4), every) is None
    reason = capacity_check(Demand(gpus=8), every)
    assert reason == "no host has 8 GPU(s); available: node: 4 x H100 (80 GB)"
    assert "of type 'A100'" in capacity_check(Demand(gpus=1, gpu_type="A100"), every)
    assert "devices [7]" in capacity_check(Demand(gpus=1, host="node", devices=(7,)), every)
    assert "no host has a GPU" in capacity_check(Demand(gpus=1), [Slot("node", "cpu", 0)])


slots_strategy = st.lists(
    st.builds(
        Slot,
        host=st.sampled_from(["a", "b", "c"]),
        kind=st.sampled_from(["gpu", "cpu"]),
        index=st.integers(0, 7),
        name=st.sampled_from(["A100", "H100"]),
        memory_total_mb=st.sampled_from([24576, 81920]),
        memory_free_mb=st.integers(0, 81920),
    ),
    max_size=24,
    unique_by=lambda s: (s.host, s.kind, s.index),
)
demand_strategy = st.builds(
    Demand,
    gpus=st.integers(0, 5),
    gpu_type=st.none() | st.sampled_from(["a100", "H100"]),
    min_memory_mb=st.none() | st.sampled_from([30000, 81920]),
    host=st.none() | st.sampled_from(["a", "b"]),
    memory_per_device_mb=st.integers(0, 90000),
)


@settings(max_examples=400, deadline=None)
@given(free=slots_strategy, demand=demand_strategy)
def test_a_choice_is_always_a_valid_lease(free: list[Slot], demand: Demand) -> None:
    chosen = choose(demand, free)
    if chosen is None:
        return
    assert len(chosen) == max(demand.gpus, 1)
    assert len({(s.host, s.kind, s.index) for s in chosen}) == len(chosen)  # no device twice
    assert len({s.host for s in chosen}) == 1  # one host
    assert all(s in free for s in chosen)
    for slot in chosen:
        assert slot.kind == ("cpu" if demand.gpus == 0 else "gpu")
        if demand.gpus:
            assert slot.memory_free_mb >= demand.memory_per_device_mb
            assert demand.gpu_type is None or demand.gpu_type.lower() in slot.name.lower()
            assert demand.min_memory_mb is None or slot.memory_total_mb >= demand.min_memory_mb
        assert demand.host is None or slot.host == demand.host
