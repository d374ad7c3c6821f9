"""Diagnostics meters every node uses: rates, stamp-gap delivery, latencies, throttled logs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from x3kd_ros.nodes.meters import DeliveryMeter, LatencyWindow, RateMeter, ThrottledLog


def test_rate_meter_over_a_sliding_window():
    meter = RateMeter(window_s=1.0)
    assert meter.rate_hz(0) == 0.0
    for k in range(11):  # 10 Hz for one second
        meter.tick(k * 100_000_000)
    assert meter.rate_hz(1_000_000_000) == pytest.approx(10.0)
    assert meter.rate_hz(1_950_000_000) == 0.0  # only the last tick is still in the window
    assert meter.count == 11


def test_delivery_meter_reads_loss_from_gaps_in_the_stamps():
    """Issue 16: what a lossy transport looks like from the receiving side (x3kd_detector's
    "images arriving at N % of the camera rate")."""
    period = 1_000_000_000 // 12
    rng = np.random.default_rng(0)
    for keep, low, high in ((1.0, 1.0, 1.0), (0.5, 0.35, 0.65), (0.2, 0.12, 0.35)):
        meter = DeliveryMeter(window_s=5.0)
        arrived = [k for k in range(120) if k in (0, 1) or rng.random() < keep]
        for k in arrived:
            meter.tick(k * period + int(rng.integers(-3_000_000, 3_000_001)))  # +-3 ms stamp jitter
        received, expected, period_s = meter.counts()
        assert period_s == pytest.approx(period / 1e9, rel=0.02)
        # 60 frames in the 5 s window, less gaps of >= 1 s (silence, not loss: they bias high at heavy loss)
        assert 10 <= expected <= 60
        assert low <= meter.fraction() <= high, (keep, received, expected)

    meter = DeliveryMeter(min_frames=10)
    for k in range(5):
        meter.tick(k * period)
    assert np.isnan(meter.fraction())  # too few frames to judge
    for k in [5, 5, 7, 6, 8, 9, 10, 11]:  # a repeated and an out-of-order stamp: not loss
        meter.tick(k * period)
    assert meter.counts()[:2] == (11, 11) and meter.fraction() == 1.0
    meter.tick(11 * period + 3_000_000_000)  # 3 s without frames: silence, not 36 lost frames
    meter.tick(12 * period + 3_000_000_000)
    assert meter.counts()[:2] == (12, 12)
    meter.tick(0)  # stamps jumped back (a looped bag): start afresh
    assert meter.resets == 1 and meter.counts() == (0, 0, pytest.approx(float("nan"), nan_ok=True))


def test_latency_window_keeps_the_last_values():
    window = LatencyWindow(size=3)
    for value in (10.0, 20.0, 30.0, 60.0):
        window.add(value)
    assert window.summary() == {"last": 60.0, "mean": pytest.approx(110 / 3), "max": 60.0, "p50": 30.0,
                                "p90": pytest.approx(54.0), "p99": pytest.approx(59.4)}
    empty = LatencyWindow().summary()
    assert set(empty) == {"last", "mean", "max", "p50", "p90", "p99"} and all(math.isnan(v) for v in empty.values())


def test_throttled_log_reports_what_it_suppressed(logger):
    now = [0.0]
    log = ThrottledLog(logger, period_s=5.0, clock=lambda: now[0])
    assert log.warn("cam_front:stale", "stale image")
    now[0] = 1.0
    assert not log.warn("cam_front:stale", "stale image")
    assert log.warn("cam_back:stale", "other key")  # keys are throttled separately
    now[0] = 6.0
    assert log.warn("cam_front:stale", "stale image")
    assert [t for _, t in logger.lines] == ["stale image", "other key",
                                            "stale image (+1 more like this in the last 6 s)"]
