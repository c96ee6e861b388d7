"""Times in and out of the stored form (microseconds since the epoch, UTC)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from habitus.ledger._codec import from_micros, to_micros


def test_times_round_trip_and_a_repeated_time_is_not_answered_with_another() -> None:
    moments = [datetime(2026, 11, 27, 22, 0, tzinfo=UTC) + timedelta(microseconds=i * 977) for i in range(50)]
    for moment in moments + moments[::-1] + [moments[3]] * 3:
        assert from_micros(to_micros(moment)) == moment
    assert from_micros(0) == datetime(1970, 1, 1, tzinfo=UTC)


def test_threads_converting_different_times_each_get_their_own() -> None:
    wrong: list[tuple[int, datetime]] = []

    def convert(offset: int) -> None:
        for i in range(20_000):
            micros = 1_800_000_000_000_000 + offset * 1_000_000 + i % 7
            value = from_micros(micros)
            if to_micros(value) != micros:
                wrong.append((micros, value))

    threads = [threading.Thread(target=convert, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong
