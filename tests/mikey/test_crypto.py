"""Key derivation and KEMAC primitives: the fast PRF against the reference PRF, and the refusals
that keep attacker-chosen lengths from becoming keys, labels or crashes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.mikey import crypto
from firmware.mikey.constants import CONST_AUTH, CONST_MPKR_FORKED, EncrAlg, ErrNo, MacAlg
from firmware.mikey.errors import MikeyError
from firmware.mikey.prf import PrfFunc, hmac_digest, prf, prf_with_hmac

FAST = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@settings(FAST, max_examples=300)
@given(
    st.sampled_from(PrfFunc),
    st.binary(min_size=1, max_size=100),
    st.binary(max_size=40),
    st.integers(1, 80),
)
def test_fast_prf_equals_the_reference_prf_for_every_key_and_output_length(
    func: PrfFunc, inkey: bytes, label: bytes, out_len: int
) -> None:
    """Keys of several 256-bit chunks (XORed chains) and outputs of several hash blocks."""
    expected = prf(func, inkey, label, out_len)
    assert len(expected) == out_len
    assert crypto.fast_prf(func, inkey, label, out_len) == expected
    if len(inkey) <= 32:  # one chunk: a PRF port over an HMAC (the HSM's TPK) gives the same
        port = prf_with_hmac(func, lambda d: hmac_digest(func, inkey, d), label, out_len)
        assert port == expected
        mac_port = crypto.hmac_port(func, lambda d: hmac_digest(func, inkey, d))
        assert crypto.fast_prf(func, mac_port, label, out_len) == expected


@pytest.mark.parametrize(
    ("encr", "mac"),
    [
        (EncrAlg.AES_CM_256, MacAlg.HMAC_SHA_256_256),
        (EncrAlg.AES_CM_128, MacAlg.HMAC_SHA_1_160),
        (EncrAlg.NULL, MacAlg.HMAC_SHA_1_160),
    ],
)
@pytest.mark.parametrize("func", list(PrfFunc))
def test_a_port_derives_a_whole_key_set_in_one_call_with_the_same_keys(
    func: PrfFunc, encr: EncrAlg, mac: MacAlg
) -> None:
    """One HSM call per key set (encr/salt/auth), not one per key; keys of length 0 not asked."""
    inkey = bytes(range(32))
    calls: list[list[tuple[bytes, int]]] = []
    mac_port = crypto.hmac_port(func, lambda d: hmac_digest(func, inkey, d))

    def port(wants: list[tuple[bytes, int]]) -> list[bytes]:
        calls.append(list(wants))
        return mac_port(wants)

    rand = bytes(16)
    by_port = crypto.message_keys(func, port, 7, response=True, rand_i=rand, rand_r=None,
                                  encr_alg=encr, mac_alg=mac)  # fmt: skip
    by_bytes = crypto.message_keys(func, inkey, 7, response=True, rand_i=rand, rand_r=None,
                                   encr_alg=encr, mac_alg=mac)  # fmt: skip
    assert by_port == by_bytes
    assert len(calls) == 1
    assert [n for _, n in calls[0]] == [n for n in (encr.key_len, encr.salt_len, mac.key_len) if n]


def test_an_empty_key_is_refused_rather_than_used_as_a_public_key() -> None:
    """An empty PSK / MPK would make every derived key computable by anyone."""
    with pytest.raises(MikeyError, match="empty"):
        crypto.fast_prf(PrfFunc.MIKEY_1, b"", b"label", 20)
    with pytest.raises(ValueError, match="empty"):
        prf(PrfFunc.PRF_HMAC_SHA_256, b"", b"label", 32)


def test_labels_refuse_lengths_their_length_fields_cannot_carry() -> None:
    """A 256-byte RAND or a 64 KiB ID would wrap the length byte/word and alias another label."""
    with pytest.raises(MikeyError, match="RAND longer than 255"):
        crypto.message_key_label(CONST_AUTH, 1, 1, bytes(256), None)
    assert crypto.message_key_label(CONST_AUTH, 1, 1, bytes(255), None)[10] == 255
    with pytest.raises(MikeyError) as exc:
        crypto.fork_label(CONST_MPKR_FORKED, bytes(0x10000), b"r")
    assert exc.value.err is ErrNo.INVALID_ID


def test_null_mac_computes_nothing_and_authenticates_nothing() -> None:
    assert crypto.compute_mac(MacAlg.NULL, b"k", b"data") == b""
    with pytest.raises(MikeyError) as exc:
        crypto.check_mac(MacAlg.NULL, b"k", b"data", b"")
    assert exc.value.err is ErrNo.INVALID_MAC


def _keys(alg: EncrAlg) -> crypto.MessageKeys:
    return crypto.message_keys(PrfFunc.MIKEY_1, bytes(16), 7, response=True, rand_i=b"r" * 16,
                               rand_r=None, encr_alg=alg)  # fmt: skip


def test_aes_kw_kemac_of_partial_blocks_is_refused_not_crashed_on() -> None:
    keys = _keys(EncrAlg.AES_KW_128)
    for bad in (bytes(20), bytes(8)):  # not whole 64-bit blocks / fewer than two blocks
        with pytest.raises(MikeyError) as exc:
            crypto.kemac_crypt(EncrAlg.AES_KW_128, keys, 7, bytes(8), bad, decrypt=False)
        assert exc.value.err is ErrNo.INVALID_EA
    for bad in (bytes(20), bytes(16)):  # received Encr data: not blocks / no key data block
        with pytest.raises(MikeyError) as exc:
            crypto.kemac_crypt(EncrAlg.AES_KW_128, keys, 7, bytes(8), bad, decrypt=True)
        assert exc.value.err is ErrNo.INVALID_EA


def test_aes_cm_iv_needs_a_112_bit_salt_and_a_64_bit_timestamp() -> None:
    keys = _keys(EncrAlg.AES_CM_128)
    assert len(crypto.aes_cm_iv(keys.salt_key, 7, bytes(8))) == 16
    for salt, t64 in ((keys.salt_key[:13], bytes(8)), (keys.salt_key, bytes(4))):
        with pytest.raises(MikeyError) as exc:
            crypto.aes_cm_iv(salt, 7, t64)
        assert exc.value.err is ErrNo.INVALID_EA
