from __future__ import annotations

import pytest

from firmware.core.freshness import (
    ReplayCache,
    StaleTimestamp,
    ntp64_to_unix,
    ntp_seconds_to_unix,
    unix_to_ntp64,
)

NOW = 1_800_000_000.0


def test_ntp_round_trip_and_era_rule() -> None:
    assert ntp64_to_unix(unix_to_ntp64(NOW + 0.5)) == pytest.approx(NOW + 0.5)
    # 2036-02-07 wraps the 32-bit seconds; a seconds value with MSB 0 is in era 1.
    assert ntp_seconds_to_unix(0) == 2_085_978_496.0
    assert ntp_seconds_to_unix(0x8000_0000) < ntp_seconds_to_unix(0)


def test_refuses_a_timestamp_outside_the_skew() -> None:
    cache = ReplayCache(skew=60, started_at=NOW - 3600)
    cache.check_time(NOW - 59, NOW)
    with pytest.raises(StaleTimestamp):
        cache.check_time(NOW - 61, NOW)
    with pytest.raises(StaleTimestamp):
        cache.check_time(NOW + 61, NOW)


def test_refuses_messages_stamped_before_a_restart() -> None:
    cache = ReplayCache(skew=60, started_at=NOW)
    with pytest.raises(StaleTimestamp):
        cache.check_time(NOW - 1, NOW + 1)
    cache.check_time(NOW + 0.5, NOW + 1)


def test_refuses_a_replayed_message_until_it_leaves_the_window() -> None:
    cache = ReplayCache(skew=60, started_at=0)
    cache.admit(b"mac-1", NOW, NOW)
    with pytest.raises(StaleTimestamp):
        cache.admit(b"mac-1", NOW, NOW + 30)
    cache.admit(b"mac-2", NOW, NOW)
    assert len(cache) == 2
    cache.admit(b"mac-3", NOW + 200, NOW + 200)  # expires the first two
    assert len(cache) == 1


def test_a_full_cache_fails_closed() -> None:
    cache = ReplayCache(skew=60, started_at=0, capacity=2)
    cache.admit(b"a", NOW, NOW)
    cache.admit(b"b", NOW, NOW)
    with pytest.raises(StaleTimestamp):
        cache.admit(b"c", NOW, NOW)
