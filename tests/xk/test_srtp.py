"""An independent SRTP implementation closes the loop: alice protects RTP with her TEK and salt in
libsrtp (pylibsrtp); the keys GetKeys returns unprotect it, crypto session by crypto session, with
the SSRC the TRANSFER_INIT's GENERIC-ID map gives each CS ID (what a LEMF would do)."""

from __future__ import annotations

import struct

import pylibsrtp
import pytest

from firmware.mikey.codec import GenericIdMap
from firmware.mikey.message import decode
from firmware.mikey.prf import PrfFunc
from tests.xk.conftest import ALICE, BOB, INITIATOR, RESPONDER, Xk

pytestmark = pytest.mark.softhsm

PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
PAYLOAD_TYPE = 96


def rtp(ssrc: int, seq: int, payload: bytes) -> bytes:
    """A minimal RTP packet: V=2, no padding/extension/CSRC, marker 0."""
    return struct.pack("!BBHII", 0x80, PAYLOAD_TYPE, seq & 0xFFFF, seq * 160, ssrc) + payload


def session(key: bytes, salt: bytes, ssrc: int) -> pylibsrtp.Session:
    """A libsrtp session for one SSRC (the stream takes its direction from its first use)."""
    assert len(key) == 16 and len(salt) == 14  # AES_CM_128 master key and master salt
    policy = pylibsrtp.Policy(
        key=key + salt, ssrc_type=pylibsrtp.Policy.SSRC_SPECIFIC, ssrc_value=ssrc,
        srtp_profile=PROFILE,
    )  # fmt: skip
    return pylibsrtp.Session(policy)


def ssrcs_of(transfer_init: bytes) -> dict[int, int]:
    cs_map = decode(transfer_init).header.cs_map
    assert isinstance(cs_map, GenericIdMap)
    return {e.cs_id: e.ssrc for e in cs_map.entries if e.ssrc is not None}


@pytest.mark.parametrize("prf", list(PrfFunc), ids=lambda p: p.name)
@pytest.mark.parametrize(
    ("target", "role"), [(ALICE, INITIATOR), (BOB, RESPONDER)], ids=["initiator", "responder"]
)
def test_srtp_protected_by_alice_is_unprotected_with_the_keys_getkeys_returns(
    xk: Xk, prf: PrfFunc, target: str, role: int
) -> None:
    call = xk.call(prf, forking=True, sessions=2)
    ssrcs = ssrcs_of(call.transfer_init)
    assert ssrcs == {1: 0x1000, 2: 0x1001}
    # alice's side: libsrtp protects 20 packets per crypto session with her TEK and salt
    sent: dict[int, list[tuple[bytes, bytes]]] = {}
    for key in call.alice_keys:
        sender = session(key.tek, key.salt, ssrcs[key.cs_id])
        packets = [rtp(ssrcs[key.cs_id], seq, bytes([key.cs_id, seq]) * 80) for seq in range(1, 21)]
        sent[key.cs_id] = [(p, sender.protect(p)) for p in packets]
        assert all(
            srtp != plain and len(srtp) == len(plain) + 10 for plain, srtp in sent[key.cs_id]
        )
    # the LEMF's side: only what Xk released
    answer = xk.get_keys(call.transfer_init, target, role, xk.warrant(target), call.transfer_resp)
    assert sorted(s.cs_id for s in answer.sessions) == [1, 2]
    for released in answer.sessions:
        receiver = session(released.session_key, released.salt, ssrcs[released.cs_id])
        for plain, srtp in sent[released.cs_id]:
            assert receiver.unprotect(srtp) == plain


def test_keys_of_another_crypto_session_or_call_do_not_unprotect(xk: Xk) -> None:
    call, other = xk.call(sessions=2), xk.call(sessions=1)
    ssrcs = ssrcs_of(call.transfer_init)
    key = call.alice_keys[0]
    packet = session(key.tek, key.salt, ssrcs[1]).protect(rtp(ssrcs[1], 1, b"x" * 160))
    liid = xk.warrant(ALICE)
    mine = xk.get_keys(call.transfer_init, ALICE, INITIATOR, liid, call.transfer_resp)
    theirs = xk.get_keys(other.transfer_init, ALICE, INITIATOR, liid, other.transfer_resp)
    cs2 = next(s for s in mine.sessions if s.cs_id == 2)
    for wrong in (cs2, theirs.sessions[0]):
        receiver = session(wrong.session_key, wrong.salt, ssrcs[1])
        with pytest.raises(pylibsrtp.Error):
            receiver.unprotect(packet)
