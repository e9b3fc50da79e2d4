"""Rules both stores share, so that SQLite and PostgreSQL keep exactly the same contract.

Rules:
- Text values are stored exactly as given and returned exactly as stored: nothing is stripped,
  split or joined. A text value that one of the stores cannot hold (a NUL character: PostgreSQL
  text cannot; not UTF-8 encodable: neither can) is refused by both with InvalidRequest before
  anything is written, so a state moved from one store to the other never fails half-way.
- COUNTER timestamps are unsigned 64-bit (RFC 3830 section 6.6, TS type 2); both databases have
  signed 64-bit integers, so a counter is stored as `value - 2**63`, which keeps its order.
- The audit head only moves forward: a lower count, or the same count with another MAC, is
  refused (AuditHeadRegression); the same head again is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable

from firmware.core.errors import AuditHeadRegression, InvalidRequest
from firmware.core.ports import Destination, User, Warrant

COUNTER_OFFSET = 1 << 63


def counter_key(value: int) -> int:
    """The stored form of a COUNTER timestamp (order-preserving, fits a signed 64-bit column)."""
    if not 0 <= value < 1 << 64:
        raise InvalidRequest("COUNTER timestamp is not a 64-bit unsigned value")
    return value - COUNTER_OFFSET


def check_text(values: Iterable[str], what: str) -> None:
    """Refuse text that either store would change or fail on."""
    for value in values:
        if "\x00" in value:
            raise InvalidRequest(f"{what} contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"{what} is not valid Unicode text") from None


def check_user(user: User) -> None:
    check_text((user.identity, *user.aliases), "user identity")


def check_warrant(warrant: Warrant) -> None:
    check_text((warrant.liid, warrant.target, warrant.xid, warrant.delivery_type), "warrant")
    check_text(warrant.df2_identities, "DF2 identity")
    check_text(warrant.dids, "warrant DID")


def check_destination(destination: Destination) -> None:
    d = destination
    check_text((d.did, d.friendly_name, d.delivery_type, d.address), "destination")


def audit_head_regression(kept: tuple[int, bytes], count: int, mac: bytes) -> AuditHeadRegression:
    """The error for a refused `set_audit_head(count, mac)` over the stored head `kept`."""
    if count < kept[0]:
        return AuditHeadRegression(
            f"audit head would go back from record {kept[0]} to record {count}"
        )
    return AuditHeadRegression(f"audit head {count} is already stored with another MAC")


def audit_head_allowed(kept: tuple[int, bytes] | None, count: int, mac: bytes) -> bool:
    return kept is None or kept[0] < count or (kept[0] == count and kept[1] == mac)
