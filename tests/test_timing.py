"""The amp's clock model, without sockets: fitted from reads of emulated devices whose true sample
times are known (chunked delivery, random latency, clock drift, stalls)."""

import numpy as np
import pytest

from mushu_amp.timing import ClockModel, ExactClock

MS = 1_000_000


def device_reads(fs=1000.0, ppm=100.0, chunk=8, latency_ms=(0.5, 4.0), seconds=600.0, seed=1, t0=5_000 * MS,
                 stalls=(), wake_ms=0.2):
    """Reads of a device on a clock ``ppm`` fast, delivering ``chunk`` samples after a uniform latency.

    The reading thread blocks until a chunk is there and wakes up to ``wake_ms`` late (a loaded host);
    a chunk that arrives while it is late is returned with the next. ``stalls``: ``(at_s, for_s)``
    pauses of the device's acquisition (the sample count stops following the clock).
    Returns the true acquisition time of every sample and the reads ``(end_sample, t_read_ns)``.
    """
    rng = np.random.default_rng(seed)
    period = 1e9 / fs / (1 + ppm * 1e-6)
    n = int(seconds * fs)
    true = t0 + np.arange(n) * period
    for at_s, for_s in stalls:
        true[int(at_s * fs):] += for_s * 1e9
    ends = np.arange(chunk, n + 1, chunk)
    arrive = true[ends - 1] + rng.uniform(*latency_ms, len(ends)) * MS
    arrive = np.maximum.accumulate(arrive)  # USB delivers in order
    reads, ready = [], -np.inf
    for end, t in zip(ends, arrive):
        if t <= ready and reads:  # it came while the thread was still waking up: returned with that read
            reads[-1] = (int(end), reads[-1][1])
            continue
        ready = t + rng.uniform(0, wake_ms) * MS
        reads.append((int(end), int(ready)))
    return true, reads


def stamp_errors(model, true, reads):
    """Each read's samples stamped by the model as it stood after that read, minus their true times."""
    errors = np.empty(reads[-1][0])
    start = 0
    for end, t in reads:
        model.observe(end, t)
        first = model.time_of(start)
        errors[start:end] = first + np.arange(end - start) * model.period_ns - true[start:end]
        start = end
    return errors


def test_a_drifting_device_with_chunk_latency_is_stamped_within_a_quarter_sample():
    true, reads = device_reads()
    model = ClockModel(1000.0, latency_ns=MS // 2)  # the driver declares the 0.5 ms it always takes
    errors = stamp_errors(model, true, reads)
    late = np.abs(errors[2000:])  # after the first two seconds' fit
    assert np.percentile(late, 99) < 250_000 and late.max() < 1 * MS, (np.percentile(late, 99), late.max())
    first, last = np.abs(errors[2000:60_000]), np.abs(errors[-60_000:])
    assert np.percentile(first, 99) < 250_000 and np.percentile(last, 99) < 250_000  # nothing accumulates
    assert model.drift_ppm == pytest.approx(100.0, abs=2.0)
    assert model.rate == pytest.approx(1000.1, abs=0.002)
    assert model.anchors == 1
    # before the fit the first reads can only be stamped by their own time: late by their latency at most
    assert np.abs(errors[:2000]).max() < 3.7 * MS and np.median(np.abs(errors[1000:2000])) < 0.5 * MS


def test_read_time_stamping_is_late_by_the_whole_latency():
    # The baseline: a block stamped with its read time (its last sample then), as if no latency.
    true, reads = device_reads(seconds=60)
    errors = [t - true[end - 1] for end, t in reads]  # the last sample's stamp
    assert np.median(errors) > 2 * MS and min(errors) >= MS // 2


def test_no_sample_is_stamped_after_the_read_that_returned_it():
    true, reads = device_reads(seconds=120, seed=3)
    model = ClockModel(1000.0)
    for end, t in reads:
        model.observe(end, t)
        assert model.time_of(end - 1) <= t


def test_a_stalled_device_re_anchors_and_is_then_stamped_as_before():
    true, reads = device_reads(seconds=120, stalls=[(60.0, 2.0)], seed=5)
    model = ClockModel(1000.0, latency_ns=MS // 2)
    errors = stamp_errors(model, true, reads)
    assert model.anchors == 2
    after = np.abs(errors[62_000:])  # from a second after the stall on
    assert np.percentile(after, 99) < 250_000 and after.max() < 1 * MS


def test_an_ideal_device_is_stamped_at_its_samples():
    true, reads = device_reads(ppm=0.0, latency_ms=(0.0, 0.0), wake_ms=0.0, chunk=1, seconds=30)
    model = ClockModel(1000.0)
    errors = stamp_errors(model, true, reads)
    assert np.abs(errors).max() < 2_000  # ns: rounding only


def test_an_exact_clock_is_what_its_driver_says():
    clock = ExactClock(123 * MS, 512.0)
    clock.observe(10, 10**12)
    assert clock.time_of(0) == 123 * MS and clock.time_of(512) == 1123 * MS
    assert clock.status()["model"] == "exact" and clock.drift_ppm == 0.0


def test_a_wall_clock_stamp_maps_onto_the_monotonic_clock_never_before_it_was_taken():
    # A kernel's packet stamp is on the wall clock; its monotonic time must lie between the monotonic
    # reads around the moment it was taken, whatever preempts the reading thread.
    from mushu_core.clock import WallToMonotonic, now_ns
    import time

    wall = WallToMonotonic()
    worst_early = worst_late = 0
    for _ in range(20000):
        before = now_ns()
        stamp = time.time_ns()
        after = now_ns()
        t = wall.to_monotonic(stamp, now_ns())
        worst_early = max(worst_early, before - t)
        worst_late = max(worst_late, t - after)
    assert worst_early < 20_000 and worst_late < 20_000, (worst_early, worst_late)
    assert wall.to_monotonic(time.time_ns() + 5 * 10**9, now_ns()) <= now_ns()  # a stepped clock: the read time
