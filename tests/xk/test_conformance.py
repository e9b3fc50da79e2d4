"""MIKEY-TICKET conformance (issue 11) through the real node: one module-scoped node on SoftHSM,
real TLS, UEs on the UE listener and the DF2 on the LI listener.

What the codec and the UE roles do is tested in tests/mikey; here each rule is driven through the
node's two boundaries: TicketService (a request the rules refuse before authentication is
INVALID_ARGUMENT with the ERR in "mikey-error") and XkService GetKeys (MALFORMED_MESSAGE, the ERR
in "mikey-error"), and the keys GetKeys releases are the keys the UEs really use: with the SPIs,
for the crypto sessions the answer has, with the lengths the security policy asks for, and the
UEs' own keys where the ticket lets them supply some."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import grpc
import pylibsrtp
import pytest

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.mikey import codec as c
from firmware.mikey.constants import DataType, ErrNo, KeyDataType, MacAlg
from firmware.mikey.message import Message, decode, encode
from firmware.mikey.prf import PrfFunc
from firmware.mikey.rules import COMPOSITIONS, MISSING_ERR
from firmware.mikey.transfer import SessionKey
from tests.api.conftest import exchange_via
from tests.calls import BOB, requested_policy, t_at, ues
from tests.mikey.test_srtp import AES_256_CM_HMAC_SHA1_80, aes256_session, rtp
from tests.xk.conftest import ALICE, INITIATOR, RESPONDER, Xk, error_reason

pytestmark = pytest.mark.softhsm

UE_KEYS = c.TpFlags.L | c.TpFlags.M
NO_FLAGS = c.TpFlags(0)


@dataclasses.dataclass
class Exchanged:
    transfer_init: bytes
    transfer_resp: bytes
    alice_keys: list[SessionKey]
    bob_keys: list[SessionKey]


def exchanged(
    xk: Xk,
    *,
    prf: PrfFunc = PrfFunc.MIKEY_1,
    forking: bool = False,
    flags: c.TpFlags = NO_FLAGS,
    policies: Sequence[c.SecurityPolicy] = (),
    policy_nos: tuple[int, ...] = (),
    resp_sessions: Sequence[c.GenericIdEntry] = (),
    init_keys: Sequence[c.KeyData] = (),
    resp_keys: Sequence[c.KeyData] = (),
) -> Exchanged:
    """A whole call alice -> bob through the node's UE listener, with the Ticket Policy flags,
    security policies, added crypto sessions and UE-supplied keys given."""
    exchange = exchange_via(kms_pb2_grpc.TicketServiceStub(xk.channel("ue", None)))
    alice, bob = ues(prf)
    now = xk.rn.clock.now
    base = requested_policy(prf, forking, [BOB.encode()])
    policy = dataclasses.replace(base, flags=base.flags | flags)
    alice.process_request_resp(
        exchange(alice.request_init(csb_id=1, t=t_at(now), rand_i=os.urandom(32), policy=policy))
    )
    entries = [
        c.GenericIdEntry.srtp(i, 0x1000 + i, roc=0, seq=1, policy_nos=policy_nos) for i in (1, 2)
    ]
    ti = alice.transfer_init(
        csb_id=0x0A0B0C0D,
        t=t_at(now),
        rand_i=os.urandom(32),
        sessions=entries,
        responder=BOB.encode(),
        policies=policies,
        keys=init_keys,
    )
    bob.receive_transfer_init(ti)
    bob.process_resolve_resp(
        exchange(bob.resolve_init(csb_id=2, t=t_at(now), rand_r=os.urandom(32)))
    )
    tr = bob.transfer_resp(
        t=t_at(now), rand_r=os.urandom(32), sessions=resp_sessions, keys=resp_keys
    )
    return Exchanged(ti, tr, alice.process_transfer_resp(tr), bob.session_keys())


def released(xk: Xk, call: Exchanged, target: str = BOB, with_resp: bool = True) -> list[Any]:
    role = RESPONDER if target == BOB else INITIATOR
    answer = xk.get_keys(
        call.transfer_init,
        target,
        role,
        xk.warrant(target),
        call.transfer_resp if with_resp else b"",
    )
    return list(answer.sessions)


def as_released(keys: list[SessionKey]) -> list[tuple[int, bytes, bytes, bytes]]:
    return [(k.cs_id, k.tek, k.salt, k.spi) for k in keys]


def of(sessions: list[Any]) -> list[tuple[int, bytes, bytes, bytes]]:
    return [(s.cs_id, s.session_key, s.salt, s.spi) for s in sessions]


def refused(xk: Xk, transfer_init: bytes, transfer_resp: bytes = b"") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        xk.get_keys(transfer_init, BOB, RESPONDER, xk.warrant(BOB), transfer_resp)
    return info.value


def ticket_refused(xk: Xk, data: bytes) -> grpc.RpcError:
    stub = kms_pb2_grpc.TicketServiceStub(xk.channel("ue", None))
    with pytest.raises(grpc.RpcError) as info:
        stub.Exchange(kms_pb2.MikeyMessage(data=data), timeout=30)
    return info.value


def mikey_error(err: grpc.RpcError) -> int:
    return int(dict(err.trailing_metadata())["mikey-error"])


def without(data: bytes, index: int) -> bytes:
    """The message with payload `index` left out (the rules run before any MAC check)."""
    msg = decode(data)
    return encode(Message(msg.header, msg.payloads[:index] + msg.payloads[index + 1 :]))


# --- items 1 and 2: SPIs, and the crypto sessions of the answer -------------------------------


@pytest.mark.parametrize("forking", [False, True], ids=["plain", "forking"])
def test_getkeys_returns_the_spi_of_every_crypto_session_6_2_1(xk: Xk, forking: bool) -> None:
    """RFC 6043 6.2.1: "An SPI (or MKI) MUST be specified for each key"; the crypto sessions are
    named by the SPIs the KMS gave (the TRANSFER_INIT offered none), and GetKeys returns them."""
    call = exchanged(xk, forking=forking)
    assert all(k.spi for k in call.alice_keys)
    for target in (ALICE, BOB):
        assert of(released(xk, call, target)) == as_released(call.alice_keys)


def test_getkeys_releases_the_crypto_sessions_the_responder_adds_4_2_2_3(xk: Xk) -> None:
    """RFC 6043 4.2.2.3: "If the Responder adds crypto sessions, the #CS SHALL be updated": the
    keys of every crypto session of the answer, with the answer's SPIs; without the answer, only
    the offer's."""
    added = c.GenericIdEntry.srtp(7, 0x2000, roc=0, seq=1, spi=b"\x77\x77\x77\x77")
    call = exchanged(xk, forking=True, resp_sessions=[added])
    assert [k.cs_id for k in call.alice_keys] == [1, 2, 7]
    assert of(released(xk, call)) == as_released(call.alice_keys) == as_released(call.bob_keys)
    assert [s.cs_id for s in released(xk, call, ALICE, with_resp=False)] == [1, 2]


# --- item 3: key lengths from the security policy ---------------------------------------------


def test_an_aes_256_policy_gets_32_byte_keys_that_unprotect_srtp_rfc_6188(xk: Xk) -> None:
    """RFC 3830 6.10.1 (session encryption key length = master key length), RFC 6188
    AES_256_CM_HMAC_SHA1_80: 32-byte TEKs and 14-byte salts, and libsrtp unprotects with the
    released keys what alice protected with hers."""
    call = exchanged(
        xk,
        prf=PrfFunc.PRF_HMAC_SHA_256,
        forking=True,
        policies=[AES_256_CM_HMAC_SHA1_80],
        policy_nos=(AES_256_CM_HMAC_SHA1_80.policy_no,),
    )
    sessions = released(xk, call)
    assert [(len(s.session_key), len(s.salt)) for s in sessions] == [(32, 14)] * 2
    ssrcs = {1: 0x1001, 2: 0x1002}
    for key, lemf in zip(call.alice_keys, sessions, strict=True):
        sender = aes256_session(key.tek, key.salt, ssrcs[key.cs_id])
        receiver = aes256_session(lemf.session_key, lemf.salt, ssrcs[lemf.cs_id])
        packet = rtp(ssrcs[key.cs_id], 1, b"\x5a" * 160)
        assert receiver.unprotect(sender.protect(packet)) == packet
    other = aes256_session(sessions[1].session_key, sessions[1].salt, ssrcs[1])
    with pytest.raises(pylibsrtp.Error):
        other.unprotect(
            aes256_session(call.alice_keys[0].tek, call.alice_keys[0].salt, ssrcs[1]).protect(
                rtp(ssrcs[1], 1, b"\x5a" * 160)
            )
        )


# --- item 10: keys the UEs supply -------------------------------------------------------------


def test_keys_the_initiator_supplies_under_l_are_the_keys_getkeys_releases_4_2_2_1(
    xk: Xk,
) -> None:
    """RFC 6043 4.2.2.1: with the L flag the TRANSFER_INIT may carry the Initiator's own KEMAC
    (keys derived from MPKi, 5.2); the media uses those keys, so GetKeys releases them."""
    teks = [
        c.KeyData(KeyDataType.TEK_SALT, b"I" * 16, b"s" * 14),
        c.KeyData(KeyDataType.TEK_SALT, b"J" * 16, b"t" * 14),
    ]
    call = exchanged(xk, flags=UE_KEYS, init_keys=teks)
    assert [(k.tek, k.salt) for k in call.alice_keys] == [(t.key, t.salt) for t in teks]
    for target in (ALICE, BOB):
        assert of(released(xk, call, target)) == as_released(call.alice_keys)


@pytest.mark.parametrize("forking", [False, True], ids=["plain", "forking"])
def test_a_tgk_the_responder_supplies_under_m_gives_the_keys_getkeys_releases_4_2_2_3(
    xk: Xk, forking: bool
) -> None:
    """RFC 6043 4.2.2.3 / 5.2: the Responder's own KEMAC is keyed from MPKi, or MPKr' with key
    forking ("If a new TGK is exchanged, it SHALL NOT be forked")."""
    call = exchanged(
        xk, forking=forking, flags=UE_KEYS, resp_keys=[c.KeyData(KeyDataType.TGK, b"R" * 16)]
    )
    assert as_released(call.alice_keys) == as_released(call.bob_keys)
    assert of(released(xk, call)) == as_released(call.alice_keys)
    ticket_only = exchanged(xk, forking=forking)
    assert [k.tek for k in call.alice_keys] != [k.tek for k in ticket_only.alice_keys]


# --- items 4, 5 and 8: required payloads, unknown values, header rules ------------------------


def _required(data_type: DataType) -> list[int]:
    """Indexes (into a complete message of ours) of the payloads the RFC requires."""
    return [n for n, slot in enumerate(COMPOSITIONS[data_type]) if slot.required]


def test_every_required_payload_of_a_ticket_request_and_resolve_missing_is_invalid_argument(
    xk: Xk,
) -> None:
    """RFC 6043 4.2.1 / 4.2.3: a REQUEST_INIT or RESOLVE_INIT without T (or any payload it must
    carry) is INVALID_ARGUMENT with the ERR that names it (INVALID_TS for T), never INTERNAL."""
    exchange = exchange_via(kms_pb2_grpc.TicketServiceStub(xk.channel("ue", None)))
    alice, bob = ues(PrfFunc.MIKEY_1)
    now = xk.rn.clock.now
    policy = requested_policy(PrfFunc.MIKEY_1, False, [BOB.encode()])
    request = alice.request_init(csb_id=3, t=t_at(now), rand_i=os.urandom(32), policy=policy)
    alice.process_request_resp(exchange(request))
    bob.receive_transfer_init(
        alice.transfer_init(
            csb_id=4,
            t=t_at(now),
            rand_i=os.urandom(32),
            sessions=[c.GenericIdEntry.srtp(1, 0x1000)],
            responder=BOB.encode(),
        )
    )
    resolve = bob.resolve_init(csb_id=5, t=t_at(now), rand_r=os.urandom(32))
    for data in (request, resolve):
        msg = decode(data)
        kinds = [type(p) for p in msg.payloads]
        assert kinds[0] is c.Timestamp
        dropped = 0
        for n, payload in enumerate(msg.payloads):
            if any(s.required and s.holds(payload) for s in COMPOSITIONS[msg.header.data_type]):
                err = ticket_refused(xk, without(data, n))
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, type(payload).__name__
                assert mikey_error(err) == MISSING_ERR.get(type(payload), ErrNo.UNSPECIFIED)
                dropped += 1
        assert dropped == len(_required(msg.header.data_type))
        assert mikey_error(ticket_refused(xk, without(data, 0))) == ErrNo.INVALID_TS


def test_every_required_payload_of_a_ticket_transfer_missing_is_malformed_at_xk(xk: Xk) -> None:
    """RFC 6043 4.2.2: a TRANSFER_INIT / TRANSFER_RESP without a payload it must carry (T, RANDRi,
    TICKET, V; with the G/I flags RANDRr, IDRr, RANDRkms) is MALFORMED_MESSAGE with its ERR."""
    call = exchanged(xk, forking=True)
    init, resp = decode(call.transfer_init), decode(call.transfer_resp)
    opened_flags = init.require(c.Ticket).policy.flags
    for data, msg, is_init in ((call.transfer_init, init, True), (call.transfer_resp, resp, False)):
        slots = COMPOSITIONS[msg.header.data_type]
        dropped = 0
        for n, payload in enumerate(msg.payloads):
            must = any(
                s.holds(payload)
                and (s.required or (s.if_flags is not None and opened_flags & s.if_flags))
                for s in slots
            )
            if not must:
                continue
            stripped = without(data, n)
            err = refused(xk, *((stripped,) if is_init else (call.transfer_init, stripped)))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, type(payload).__name__
            assert error_reason(err) == "MALFORMED_MESSAGE"
            assert mikey_error(err) == MISSING_ERR.get(type(payload), ErrNo.UNSPECIFIED)
            dropped += 1
        assert dropped >= 3
    assert mikey_error(refused(xk, without(call.transfer_init, 0))) == ErrNo.INVALID_TS


def test_an_unknown_data_type_is_err_13_at_the_kms_and_at_xk_rfc_4738(xk: Xk) -> None:
    """RFC 4738 6 ("Unsupported message type ------- 13"): a data type outside the registry."""
    call = exchanged(xk)
    for data, at_xk in ((call.transfer_init, True), (call.transfer_init, False)):
        unknown = data[:1] + bytes([200]) + data[2:]
        err = refused(xk, unknown) if at_xk else ticket_refused(xk, unknown)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert mikey_error(err) == ErrNo.UNSUPPORTED_MESSAGE_TYPE


def test_a_ticket_transfer_with_the_srtp_id_map_is_refused_at_xk_6_1(xk: Xk) -> None:
    """RFC 6043 6.1: "the SRTP-ID map ... SHALL NOT be used" in a Ticket Transfer."""
    call = exchanged(xk)
    init = decode(call.transfer_init)
    srtp_map = c.SrtpIdMap((c.SrtpIdEntry(0, 0x1001, 0),))
    bad = encode(Message(dataclasses.replace(init.header, cs_map=srtp_map), init.payloads))
    err = refused(xk, bad)
    assert error_reason(err) == "MALFORMED_MESSAGE"
    resp = decode(call.transfer_resp)
    bad_resp = encode(Message(dataclasses.replace(resp.header, cs_map=srtp_map), resp.payloads))
    assert error_reason(refused(xk, call.transfer_init, bad_resp)) == "MALFORMED_MESSAGE"


def test_a_ticket_request_with_crypto_sessions_is_refused_at_the_kms_4_2_1_1(xk: Xk) -> None:
    """RFC 6043 4.2.1.1: REQUEST_INIT "#CS = 0 ... CS ID map type = Empty map"."""
    alice, _ = ues(PrfFunc.MIKEY_1)
    policy = requested_policy(PrfFunc.MIKEY_1, False, [BOB.encode()])
    data = alice.request_init(csb_id=6, t=t_at(xk.rn.clock.now), rand_i=os.urandom(32),
                              policy=policy)  # fmt: skip
    msg = decode(data)
    generic = c.GenericIdMap((c.GenericIdEntry.srtp(1, 0x1000),))
    err = ticket_refused(
        xk, encode(Message(dataclasses.replace(msg.header, cs_map=generic), msg.payloads))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_transfer_resp_must_use_the_transfer_inits_prf_12_1(xk: Xk) -> None:
    """RFC 6043 4.2.2.3 (the TRANSFER_RESP repeats the TRANSFER_INIT's HDR PRF) and 12.1 (one
    algorithm strength): a 160-bit MAC under PRF-HMAC-SHA-256 is malformed (ERR Invalid MAC); a
    consistently weaker answer to a PRF-HMAC-SHA-256 offer does not verify."""
    call = exchanged(xk, prf=PrfFunc.PRF_HMAC_SHA_256)
    init, resp = decode(call.transfer_init), decode(call.transfer_resp)
    assert init.header.prf_func == resp.header.prf_func == PrfFunc.PRF_HMAC_SHA_256
    weak_v = c.Verification(MacAlg.HMAC_SHA_1_160, bytes(20))
    mixed = encode(Message(resp.header, (*resp.payloads[:-1], weak_v)))
    err = refused(xk, call.transfer_init, mixed)
    assert (error_reason(err), mikey_error(err)) == ("MALFORMED_MESSAGE", ErrNo.INVALID_MAC)
    weaker = dataclasses.replace(resp.header, prf_func=PrfFunc.MIKEY_1)
    err = refused(xk, call.transfer_init, encode(Message(weaker, (*resp.payloads[:-1], weak_v))))
    assert error_reason(err) == "MESSAGE_AUTH_FAILED"


def test_a_request_with_rands_weaker_than_its_psk_gets_a_mikey_error_message_12_1(xk: Xk) -> None:
    """RFC 6043 12.1: RANDs summing to less than the 32-byte PSK: an authenticated request,
    answered (status OK) with a MIKEY Error message."""
    alice, _ = ues(PrfFunc.MIKEY_1)
    policy = requested_policy(PrfFunc.MIKEY_1, False, [BOB.encode()])
    stub = kms_pb2_grpc.TicketServiceStub(xk.channel("ue", None))
    weak = alice.request_init(csb_id=8, t=t_at(xk.rn.clock.now), rand_i=os.urandom(16),
                              policy=policy)  # fmt: skip
    answer = decode(bytes(stub.Exchange(kms_pb2.MikeyMessage(data=weak), timeout=30).data))
    assert answer.header.data_type == DataType.ERROR
    assert [e.err_no for e in answer.find_all(c.ErrorPayload)] == [ErrNo.UNSPECIFIED]


def test_a_prf_hmac_sha_256_request_is_answered_with_256_bit_macs_and_keys_12_1(xk: Xk) -> None:
    """RFC 6043 12.1: the KMS answers a PRF-HMAC-SHA-256 request with a 256-bit V and 256-bit
    keys (MPK, TGK), never a 160-bit V."""
    exchange = exchange_via(kms_pb2_grpc.TicketServiceStub(xk.channel("ue", None)))
    alice, _ = ues(PrfFunc.PRF_HMAC_SHA_256)
    policy = requested_policy(PrfFunc.PRF_HMAC_SHA_256, True, [BOB.encode()])
    request = alice.request_init(csb_id=9, t=t_at(xk.rn.clock.now), rand_i=os.urandom(32),
                                 policy=policy)  # fmt: skip
    answer = exchange(request)
    v = decode(answer).require(c.Verification)
    assert (v.mac_alg, len(v.mac)) == (MacAlg.HMAC_SHA_256_256, 32)
    alice.process_request_resp(answer)
    assert len(alice.mpki) == 32 and {len(k.key) for k in alice.keys} == {32}
