"""PskObjects' bookkeeping without a token (hsm/psks.py): what it hands back to destroy."""

from __future__ import annotations

import pytest

from firmware.core.ports import WrappedKey
from hsm.psks import PskObjects


def w(version: int, n: int) -> WrappedKey:
    return WrappedKey(version, bytes([n]) * 40)


def test_put_hands_back_the_replaced_object_and_the_least_recently_used_beyond_the_limit() -> None:
    held = PskObjects(limit=2)
    assert held.put(w(1, 1), "a") == [] and held.put(w(1, 2), "b") == []
    assert held.get(w(1, 1)) == "a"  # now the most recent: b goes first
    assert held.put(w(1, 3), "c") == ["b"]
    assert held.put(w(1, 3), "c2") == ["c"]
    assert len(held) == 2 and held.get(w(1, 2)) is None


def test_pop_version_hands_back_every_object_of_that_kek_version_only() -> None:
    held = PskObjects()
    held.put(w(1, 1), "a")
    held.put(w(2, 2), "b")
    held.put(w(1, 3), "c")
    assert sorted(held.pop_version(1)) == ["a", "c"]
    assert held.get(w(2, 2)) == "b" and len(held) == 1
    assert held.pop(w(2, 2)) == "b" and held.pop(w(2, 2)) is None
    held.put(w(3, 4), "d")
    held.clear()
    assert len(held) == 0


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PskObjects(limit)
