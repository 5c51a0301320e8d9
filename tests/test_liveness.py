"""Telling a slow peer from a dead or hung one (gist.comm.liveness).

The verdicts are checked on a made-up clock; the heartbeats themselves
through a real TCP store on the loopback interface. The end-to-end cases
(a dead, hung or slow worker process) are in test_distributed.py."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from gist.comm.group import free_port
from gist.comm.liveness import MIN_CPU_S, Beat, Liveness, PeerSilent, PeerWatch

TIMEOUT = 10.0


def _watch(*records: tuple[float, Beat | None]) -> PeerWatch:
    """A watch of peer 1 fed ``(time, record)`` pairs, started at time 0."""
    watch = PeerWatch([1], TIMEOUT, now=0.0)
    for now, record in records:
        watch.update(1, record, now)
    return watch


def test_beat_round_trips_through_text():
    beat = Beat(7, 12.5, True)
    assert Beat.decode(beat.encode()) == beat


def test_a_busy_peer_is_alive_however_long_it_takes():
    # its CPU time rises at every beat, for ten timeouts
    records = [(t, Beat(t, 0.5 * t, False)) for t in range(0, 100, 2)]
    watch = _watch(*records)
    assert watch.verdict(100.0) is None


def test_a_peer_waiting_on_another_rank_is_alive():
    records = [(t, Beat(t, 1.0, True)) for t in range(0, 100, 2)]
    assert _watch(*records).verdict(100.0) is None


def test_a_peer_without_new_beats_is_dead_after_the_timeout():
    watch = _watch((0.0, Beat(3, 1.0, False)), (5.0, Beat(3, 1.0, False)))
    assert watch.verdict(TIMEOUT - 1) is None
    silent = watch.verdict(TIMEOUT + 1)
    assert silent is not None and silent.rank == 1
    assert "no heartbeat" in str(silent) and "died or froze" in str(silent)


def test_a_peer_that_never_beats_is_dead_after_the_timeout():
    watch = _watch((4.0, None), (8.0, None))
    assert "no heartbeat" in str(watch.verdict(TIMEOUT + 1))


def test_a_beating_but_idle_peer_is_hung_after_the_timeout():
    # beats go on, CPU time rises by less than MIN_CPU_S, never waiting
    records = [(t, Beat(t, 1.0 + MIN_CPU_S * t / 100, False)) for t in range(0, 14, 1)]
    watch = _watch(*records)
    assert watch.verdict(TIMEOUT - 1) is None
    silent = watch.verdict(13.0)
    assert silent is not None and "alive but hung" in str(silent) and "--timeout" in str(silent)


def test_idle_time_restarts_when_the_peer_works_again():
    records = [(t, Beat(t, 1.0, False)) for t in range(0, 9)]
    records += [(9.0, Beat(9, 2.0, False))]  # a second of CPU
    records += [(t, Beat(t, 2.0, False)) for t in range(10, 18)]
    assert _watch(*records).verdict(17.0) is None


@pytest.fixture
def store_address(monkeypatch):
    """A TCP store on the loopback interface, as a job's rendezvous has."""
    port = free_port()
    master = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10))
    yield "127.0.0.1", port
    del master


def test_heartbeats_through_a_real_store(store_address):
    host, port = store_address
    me = Liveness(0, 0.8, host, port)
    peer = Liveness(1, 0.8, host, port)
    try:
        first = me.read(1)
        time.sleep(0.3)
        later = me.read(1)
        assert first is not None and later is not None and later.beat > first.beat

        # a wait on a live peer returns what the call returns
        assert me.call(lambda: 42, [1]) == 42

        # errors of the call itself come through unchanged
        with pytest.raises(KeyError):
            me.call(lambda: {}["missing"], [1])

        # a wait on a peer that beats but does nothing (this process is idle
        # but for the test's own waits) fails, naming it as hung
        never = threading.Event()
        started = time.monotonic()
        with pytest.raises(PeerSilent) as err:
            me.call(never.wait, [1])
        assert err.value.rank == 1 and "alive but hung" in str(err.value)
        assert 0.8 < time.monotonic() - started < 0.8 + 3

        # the peer stops beating (a frozen process): named as dead
        peer.stop()
        with pytest.raises(PeerSilent) as err:
            me.call(never.wait, [1])
        assert err.value.rank == 1 and "no heartbeat" in str(err.value)
    finally:
        me.stop()
        peer.stop()
