"""amphora.heaptrim: free C heap pages handed back on a timer."""

from twisted.internet.task import Clock

from amphora.heaptrim import TRIM_INTERVAL, HeapTrimmer, malloc_trim


def test_trims_at_start_and_every_interval_until_stopped():
    clock, calls = Clock(), []
    trimmer = HeapTrimmer(clock, function=lambda pad: calls.append(pad) or 1)
    trimmer.startService()
    assert calls == [0]
    clock.advance(TRIM_INTERVAL)
    clock.advance(TRIM_INTERVAL)
    assert calls == [0, 0, 0]
    trimmer.stopService()
    clock.advance(TRIM_INTERVAL * 3)
    assert len(calls) == 3 and not clock.getDelayedCalls()


def test_the_real_function_runs():
    function = malloc_trim()
    assert function is not None  # glibc here
    assert function(0) in (0, 1)
