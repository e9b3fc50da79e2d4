"""Codec properties: round trips for every payload and data type; arbitrary or mutated bytes raise
only MikeyError (h11-style error contract)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.mikey import codec as c
from firmware.mikey.constants import DataType, ErrNo, IdRole, IdType, KeyDataType, TsType
from firmware.mikey.errors import MikeyError
from firmware.mikey.message import Message, decode, encode

from . import strategies as S
from .corpus import corpus

DATA = Path(__file__).parent / "data"
SEEDS = [(DATA / f).read_bytes() for f in ("mikey_psk_i_message.bin", "mikey_psk_r_message.bin")]
CORPUS = SEEDS + corpus()
FAST = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@settings(FAST, max_examples=400)
@given(st.sampled_from(DataType).flatmap(lambda dt: S.messages(dt)))
def test_every_data_type_round_trips(msg: Message) -> None:
    raw = encode(msg)
    back = decode(raw)
    assert back == msg
    assert encode(back) == raw
    assert back.raw == raw and len(back.offsets) == len(msg.payloads)


@settings(FAST, max_examples=300)
@given(st.lists(S.key_data(), max_size=4))
def test_key_data_sub_payloads_round_trip(keys: list[c.KeyData]) -> None:
    raw = c.serialize_key_data(keys)
    assert c.parse_key_data(raw) == tuple(keys)
    assert c.serialize_key_data(c.parse_key_data(raw)) == raw


@settings(FAST, max_examples=200)
@given(st.binary(max_size=8), st.lists(S.simple_payloads(), max_size=5))
def test_base_ticket_data_round_trips(thdr: bytes, body: list[c.Payload]) -> None:
    td = c.TicketData(c.TicketHeader(thdr), tuple(body))
    raw = c.serialize_ticket_data(td)
    assert c.parse_ticket_data(raw) == td
    assert c.serialize_ticket_data(c.parse_ticket_data(raw)) == raw


def _only_mikey_error(fn: object, data: bytes) -> None:
    try:
        fn(data)  # type: ignore[operator]
    except MikeyError as e:
        assert isinstance(e.err, ErrNo)
        assert -1 <= e.offset <= len(data) + 1


@settings(FAST, max_examples=8000)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_decode_or_raise_mikey_error(data: bytes) -> None:
    _only_mikey_error(decode, data)
    _only_mikey_error(c.parse_key_data, data)
    _only_mikey_error(c.parse_ticket_data, data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 3))
        if not raw:
            break
        i = draw(st.integers(0, len(raw) - 1))
        if op == 0:
            raw[i] = draw(st.integers(0, 255))
        elif op == 1:
            del raw[i:]
        elif op == 2:
            raw.insert(i, draw(st.integers(0, 255)))
        else:
            del raw[i]
    return bytes(raw)


@settings(FAST, max_examples=12500)
@given(mutated())
def test_mutated_messages_decode_or_raise_mikey_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except MikeyError as e:
        assert isinstance(e.err, ErrNo)
        return
    assert encode(msg) == data


def test_unknown_payload_type_is_refused_with_its_offset() -> None:
    raw = bytearray(SEEDS[1])
    raw[2] = 99  # HDR next payload
    with pytest.raises(MikeyError) as exc:
        decode(bytes(raw))
    assert exc.value.offset == 28 and "unknown payload type 99" in str(exc.value)


def test_unknown_data_type_answers_invalid_dt() -> None:
    raw = bytearray(SEEDS[1])
    raw[1] = 200
    with pytest.raises(MikeyError) as exc:
        decode(bytes(raw))
    assert exc.value.err is ErrNo.INVALID_DT and exc.value.offset == 1


@pytest.mark.parametrize(
    ("index", "value", "err"),
    [(3, 0x05, ErrNo.INVALID_PRF), (0, 2, ErrNo.UNSPECIFIED), (29, 9, ErrNo.INVALID_TS)],
)
def test_header_and_timestamp_errors_carry_err_numbers(index: int, value: int, err: ErrNo) -> None:
    raw = bytearray(SEEDS[1])
    raw[index] = value
    with pytest.raises(MikeyError) as exc:
        decode(bytes(raw))
    assert exc.value.err is err


def test_trailing_bytes_and_key_data_in_message_chain_are_refused() -> None:
    with pytest.raises(MikeyError, match="after the last payload"):
        decode(SEEDS[1] + b"\x00")
    raw = bytearray(SEEDS[1])
    raw[2] = 20
    with pytest.raises(MikeyError, match="not allowed"):
        decode(bytes(raw))


def test_encoder_refuses_values_it_could_not_decode() -> None:
    h = c.Header(DataType.TRANSFER_INIT, 1)
    bad = [
        c.Timestamp(TsType.NTP_UTC, b"\x00"),
        c.RoleIdentity(IdRole.IDRi, IdType.URI, bytes(70000)),
        c.Rand(bytes(256)),
        c.Pke(c.PkeCache.CACHE, bytes(0x4000)),
        c.Signature(c.SignType.RSA_PSS, bytes(0x1000)),
    ]
    for p in bad:
        with pytest.raises(MikeyError):
            encode(Message(h, (p,)))
    with pytest.raises(MikeyError, match="last payload"):
        encode(Message(h, (c.Signature(c.SignType.RSA_PSS, b""), c.Rand(b""))))
    with pytest.raises(MikeyError, match="carries no salt"):
        c.serialize_key_data([c.KeyData(KeyDataType.TEK, b"k", b"s")])
