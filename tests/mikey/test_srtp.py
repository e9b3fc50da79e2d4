"""An independent SRTP implementation closes the loop for AES_256_CM_HMAC_SHA1_80 (RFC 6188): the
Initiator and the Responder of exchange.py, against the in-test KMS double, agree on 32-byte TEKs
because the security policy asks for them, and libsrtp (pylibsrtp) protects with one side's keys
and unprotects with the other's - and with the keys the Xk view derives.

pylibsrtp offers only DTLS-SRTP profiles, and RFC 5764 defines none for AES-256-CM; so the crypto
policy of its (statically linked) libsrtp is set to AES_ICM_256 + HMAC-SHA1-80 by hand, after
checking that libsrtp laid the AES-128 profile out as expected (srtp_crypto_policy_t: cipher
type, cipher key length with salt, auth type, auth key length, tag length, services)."""

from __future__ import annotations

import struct

import pylibsrtp
import pytest
from pylibsrtp._binding import ffi

from firmware.mikey import codec as c
from firmware.mikey.constants import PrfFunc, ProtType, SrtpParam
from firmware.mikey.message import decode

from .corpus import FORKING, PLAIN, run
from .test_keys import xk_view

AES_128_PROFILE = (1, 30, 3, 20, 10, 3)  # AES_ICM_128, 16+14, HMAC_SHA1, 20, 10, conf+auth
AES_ICM_256, AES_256_KEY_WITH_SALT = 5, 46  # libsrtp cipher id, 32-byte key + 14-byte salt
AES_256_CM_HMAC_SHA1_80 = c.SecurityPolicy(1, ProtType.SRTP, tuple(
    c.PolicyParam(t, bytes((v,))) for t, v in (
        (SrtpParam.ENCR_ALG, 1), (SrtpParam.SESSION_ENCR_KEY_LEN, 32), (SrtpParam.AUTH_ALG, 1),
        (SrtpParam.SESSION_AUTH_KEY_LEN, 20), (SrtpParam.SESSION_SALT_LEN, 14),
        (SrtpParam.AUTH_TAG_LEN, 10))))  # fmt: skip


def rtp(ssrc: int, seq: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 160, ssrc) + payload


def aes256_session(key: bytes, salt: bytes, ssrc: int) -> pylibsrtp.Session:
    assert len(key) == 32 and len(salt) == 14
    policy = pylibsrtp.Policy(key=key + salt, ssrc_type=pylibsrtp.Policy.SSRC_SPECIFIC,
                              ssrc_value=ssrc)  # fmt: skip
    for part in (policy._policy.rtp, policy._policy.rtcp):
        raw = ffi.buffer(ffi.addressof(part))
        assert struct.unpack("6i", raw[:24]) == AES_128_PROFILE, "libsrtp layout changed"
        raw[0:8] = struct.pack("2i", AES_ICM_256, AES_256_KEY_WITH_SALT)
    return pylibsrtp.Session(policy)


@pytest.mark.parametrize("flags", [FORKING, PLAIN], ids=["forking", "plain"])
def test_aes_256_cm_hmac_sha1_80_srtp_between_initiator_and_responder(flags: c.TpFlags) -> None:
    """RFC 3830 6.10.1: 'if "Session Encr. key length" is set, this should also be seen as the
    Master key length'; RFC 6188 4.1: AES_256_CM uses a 256-bit master key and a 112-bit master
    salt; RFC 6043 12.1: 'If session keys (TEK/TGK/GTGK) longer than 128 bits are used, 128-bit
    algorithms SHALL NOT be used' - the exchange runs on PRF-HMAC-SHA-256 with 32-byte keys."""
    r = run(flags, prf=PrfFunc.PRF_HMAC_SHA_256, key_len=32, rand_len=32, psks=(b"a" * 32,
            b"b" * 32), policies=[AES_256_CM_HMAC_SHA1_80], policy_nos=(1,))  # fmt: skip
    cs_map = decode(r.transfer_init).header.cs_map
    assert isinstance(cs_map, c.GenericIdMap)
    ssrcs = {e.cs_id: e.ssrc for e in cs_map.entries}
    lemf = {k.cs_id: k for k in xk_view(r)}
    for alice, bob in zip(r.initiator_keys, r.responder_keys, strict=True):
        assert alice == bob == lemf[alice.cs_id] and len(alice.tek) == 32
        ssrc = ssrcs[alice.cs_id]
        assert ssrc is not None
        sender = aes256_session(alice.tek, alice.salt, ssrc)
        packets = [rtp(ssrc, seq, bytes((alice.cs_id, seq)) * 80) for seq in range(1, 11)]
        protected = [sender.protect(p) for p in packets]
        assert all(len(s) == len(p) + 10 for p, s in zip(packets, protected, strict=True))
        receiver = aes256_session(bob.tek, bob.salt, ssrc)
        assert [receiver.unprotect(s) for s in protected] == packets
        # every byte of the 256-bit key matters: the last one flipped does not unprotect
        wrong = aes256_session(bob.tek[:-1] + bytes((bob.tek[-1] ^ 1,)), bob.salt, ssrc)
        with pytest.raises(pylibsrtp.Error):
            wrong.unprotect(protected[0])
