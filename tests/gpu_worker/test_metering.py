"""``GpuMeter``: a pipeline call's time split between its jobs, by cost, only while they render."""

from __future__ import annotations

import pytest

from gpu_worker.metering import GpuMeter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_splits_its_time_in_proportion_to_cost() -> None:
    clock = Clock()
    meter = GpuMeter([1.0, 3.0], clock=clock)
    meter.start()
    for _ in range(4):
        clock.now += 0.5
        meter.step([True, True])
    clock.now += 1.0  # decoding after the last step
    meter.stop()
    assert meter.seconds == pytest.approx([0.75, 2.25])
    assert sum(meter.seconds) == pytest.approx(3.0)


def test_a_job_that_stops_pays_for_the_steps_it_rendered_and_the_others_for_the_rest() -> None:
    clock = Clock()
    meter = GpuMeter([2.0, 2.0], clock=clock)
    meter.start()
    clock.now += 1.0
    meter.step([True, True])
    clock.now += 1.0
    meter.step([False, True])  # the first was canceled during the second step
    clock.now += 1.0
    meter.step([False, True])
    clock.now += 1.0
    meter.stop()
    assert meter.seconds == pytest.approx([1.0, 3.0])


def test_when_every_job_stops_the_last_slice_is_still_paid() -> None:
    clock = Clock()
    meter = GpuMeter([1.0], clock=clock)
    meter.start()
    clock.now += 2.0
    meter.step([False])  # canceled: the call is abandoned here
    clock.now += 0.1
    meter.stop()
    assert meter.seconds == pytest.approx([2.1])
