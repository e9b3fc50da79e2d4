"""Pre-authentication cost caps (issue 10 item 5): what a sender that has not authenticated yet can
make us parse is bounded in bytes and payloads (nested ones included), and the bound is checked
before the work it bounds.  Speed itself is measured in bench/bench_mikey.py, never here."""

from __future__ import annotations

import pytest

from firmware.mikey import codec as c
from firmware.mikey.buffer import UNLIMITED, Reader
from firmware.mikey.constants import ErrNo, IdRole, IdType, PrfFunc
from firmware.mikey.errors import MikeyError
from firmware.mikey.message import UE_LIMITS, DecodeLimits, decode
from firmware.mikey.ticket import (
    TICKET_DATA_MAX_PAYLOADS,
    TICKET_MAX_PAYLOADS,
    peek_ticket,
    ticket_raw,
)

from .corpus import PLAIN, corpus, crafted_request, policy
from .kms_double import ntp_t


def test_a_240_kb_message_is_refused_by_its_size_before_any_parsing() -> None:
    big = crafted_request(120_000)
    assert len(big) > 240_000
    assert len(decode(big).payloads) == 120_004  # what it cost before: every payload parsed
    with pytest.raises(MikeyError, match="longer than 16384 bytes") as exc:
        decode(big, limits=UE_LIMITS)
    assert (exc.value.err, exc.value.offset) == (ErrNo.UNSPECIFIED, UE_LIMITS.max_size)
    with pytest.raises(MikeyError, match="longer than"):  # size first: not even the HDR is read
        decode(bytes(UE_LIMITS.max_size + 1), limits=UE_LIMITS)


def test_the_payload_bound_counts_nested_payloads_and_stops_at_the_first_beyond_it() -> None:
    limits = DecodeLimits(max_size=UE_LIMITS.max_size, max_payloads=20)
    fits = crafted_request(20 - 4 - 3)  # T, RANDRi, TP (+3 nested), V
    assert len(decode(fits, limits=limits).payloads) == 20 - 3
    over = decode(crafted_request(20 - 4 - 3 + 1))
    with pytest.raises(MikeyError, match="more payloads than") as exc:
        decode(over.raw, limits=limits)
    assert exc.value.offset == over.offsets[-1]  # the 21st payload (the V)
    nested = crafted_request(0, nested=30)
    with pytest.raises(MikeyError, match="more payloads than") as exc:
        decode(nested, limits=limits)
    assert 0 < exc.value.offset < len(nested)
    assert len(decode(nested).require(c.TicketPolicy).idr(IdRole.IDRr)) == 31


def test_every_message_of_an_exchange_decodes_within_the_ue_limits() -> None:
    for raw in corpus():
        assert decode(raw, limits=UE_LIMITS) == decode(raw)


def test_an_unverified_ticket_is_parsed_within_its_own_payload_bounds() -> None:
    """peek_ticket reads a ticket before its MAC is checked (to pick the TPK version)."""
    pol = policy(PLAIN)
    wide = c.TicketPolicy(1, 1, 1, PrfFunc.MIKEY_1, PLAIN, (
        *(pol.payloads or ()), *(c.RoleIdentity(IdRole.IDRr, IdType.URI, b"") for _ in range(
            TICKET_MAX_PAYLOADS))))  # fmt: skip
    td = c.TicketData(c.TicketHeader(b"v1"), (ntp_t(1),))
    with pytest.raises(MikeyError, match="more payloads than"):
        peek_ticket(ticket_raw(c.Ticket(wide, c.serialize_ticket_data(td))))
    padded = c.TicketData(c.TicketHeader(b"v1"), (c.Rand(b""),) * (TICKET_DATA_MAX_PAYLOADS + 1))
    with pytest.raises(MikeyError, match="more payloads than"):
        peek_ticket(ticket_raw(c.Ticket(pol, c.serialize_ticket_data(padded))))
    assert Reader(b"").budget == UNLIMITED
