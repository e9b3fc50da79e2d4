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
from firmware.mikey.message import Message, decode, encode, encode_decoded, mac_input
from firmware.mikey.prf import PrfFunc

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
    back = encode_decoded(msg)
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


def test_unknown_data_type_answers_err_13_unsupported_message_type() -> None:
    """RFC 4738 6: 'Added to "Error payload name spaces:" Unsupported message type ------- 13'."""
    raw = bytearray(SEEDS[1])
    raw[1] = 200
    with pytest.raises(MikeyError) as exc:
        decode(bytes(raw))
    assert exc.value.err is ErrNo.UNSUPPORTED_MESSAGE_TYPE and exc.value.offset == 1
    assert ErrNo.UNSUPPORTED_MESSAGE_TYPE == 13


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


def test_decode_accepts_any_bytes_like_and_keeps_bytes_fields() -> None:
    for form in (bytearray(SEEDS[1]), memoryview(SEEDS[1])):
        msg = decode(form)  # type: ignore[arg-type]
        assert msg == decode(SEEDS[1]) and type(msg.raw) is bytes
        assert all(type(p.value) is bytes for p in msg.find_all(c.Rand))


def test_key_data_refusals_name_the_offending_sub_payload() -> None:
    tgk = c.serialize_key_data([c.KeyData(KeyDataType.TGK, b"k" * 16)])
    second = c.serialize_key_data([c.KeyData(KeyDataType.TEK, b"t" * 16)])
    chained = b"\x05" + tgk[1:] + second  # Next Payload 5 (T) instead of 20 (key data)
    with pytest.raises(MikeyError, match="payload type 5 inside KEMAC key data") as exc:
        c.parse_key_data(chained, base=100)
    assert exc.value.offset == 100
    with pytest.raises(MikeyError, match="1 bytes after the last key data") as exc:
        c.parse_key_data(tgk + b"\x00")
    assert exc.value.offset == len(tgk)


def test_encoder_refuses_chains_it_could_not_decode() -> None:
    h = c.Header(DataType.TRANSFER_INIT, 1)
    with pytest.raises(MikeyError, match="KeyData is not a MIKEY payload"):
        encode(Message(h, (c.KeyData(KeyDataType.TEK, b"k"),)))  # type: ignore[arg-type]
    tp = c.TicketPolicy(1, 1, 1, PrfFunc.MIKEY_1, c.TpFlags.D, ())
    with pytest.raises(MikeyError, match="TP Data may not contain TP or TICKET"):
        encode(Message(h, (c.TicketPolicy(1, 1, 1, PrfFunc.MIKEY_1, c.TpFlags.D, (tp,)),)))
    with pytest.raises(MikeyError, match="Policy no does not fit in 8 bits"):
        encode(Message(h, (c.SecurityPolicy(256, 0),)))


def test_cs_ids_follow_the_map_type() -> None:
    srtp = c.SrtpIdMap((c.SrtpIdEntry(0, 1, 0), c.SrtpIdEntry(0, 2, 0)))
    generic = c.GenericIdMap((c.GenericIdEntry.srtp(7, 1), c.GenericIdEntry.srtp(3, 2)))
    assert c.Header(DataType.PSK_INIT, 1, srtp).cs_ids == (1, 2)  # position, 1-based
    assert c.Header(DataType.TRANSFER_INIT, 1, generic).cs_ids == (7, 3)  # the CS ID fields
    assert c.Header(DataType.REQUEST_INIT_PSK, 1, c.EmptyMap()).cs_ids == ()


def test_generic_id_srtp_session_data_is_ssrc_then_roc_and_seq_under_the_s_flag() -> None:
    short = c.GenericIdEntry.srtp(1, 0x01020304)
    assert (short.s_flag, short.session_data, short.ssrc) == (
        False,
        bytes((1, 2, 3, 4)),
        0x01020304,
    )
    full = c.GenericIdEntry.srtp(1, 0x01020304, roc=5, seq=6)
    assert full.s_flag and full.session_data == bytes((1, 2, 3, 4, 0, 0, 0, 5, 0, 6))
    assert c.GenericIdEntry(1, session_data=b"\x01").ssrc is None
    header = c.Header(DataType.TRANSFER_INIT, 1, c.GenericIdMap((full,)))
    assert decode(encode(Message(header))).header == header


@pytest.mark.parametrize(
    ("ts_type", "value", "as_64"),
    [
        (TsType.NTP_UTC, bytes(range(8)), bytes(range(8))),
        (TsType.COUNTER, b"\x00\x00\x01\x02", bytes(6) + b"\x01\x02"),  # zero-extended counter
        (TsType.NTP_UTC_32, b"\xe0\x00\x00\x01", b"\xe0\x00\x00\x01" + bytes(4)),  # zero fraction
    ],
)
def test_timestamps_widen_to_64_bits_for_the_aes_cm_iv(
    ts_type: TsType, value: bytes, as_64: bytes
) -> None:
    assert c.Timestamp(ts_type, value).as_64() == as_64


def test_ticket_policy_lookups_when_tp_data_is_absent() -> None:
    tp = c.TicketPolicy(1, 1, 1, PrfFunc.MIKEY_1, c.TpFlags.D, None)
    assert tp.tr(c.TsRole.TRs) is None and tp.idr(IdRole.IDRi) == [] and tp.find_all(c.Rand) == []
    assert decode(encode(Message(c.Header(DataType.REQUEST_INIT_PSK, 1), (tp,)))).payloads == (tp,)


def test_message_lookups_of_absent_payloads() -> None:
    msg = decode(SEEDS[1])
    assert msg.find(c.Ticket) is None and msg.find_all(c.Ticket) == []
    assert msg.idr(IdRole.IDRi) is None and msg.randr(c.RandRole.RANDRi) is None
    with pytest.raises(MikeyError, match="Ticket payload missing"):
        msg.require(c.Ticket)
    with pytest.raises(MikeyError, match="not decoded"):
        Message(msg.header, msg.payloads).payload_bytes(0)
    with pytest.raises(MikeyError, match="not decoded"):
        mac_input(Message(msg.header, msg.payloads))


def test_mikey_error_text_names_offset_and_err_but_no_data() -> None:
    e = MikeyError("truncated RAND", 12, ErrNo.UNSPECIFIED)
    assert str(e) == "truncated RAND at offset 12 (ERR 12 UNSPECIFIED)"
    assert repr(e) == "MikeyError('truncated RAND', offset=12, err=UNSPECIFIED)"
    assert str(MikeyError("MAC verification failed", -1, ErrNo.AUTH_FAILURE)) == (
        "MAC verification failed (ERR 0 AUTH_FAILURE)"
    )
