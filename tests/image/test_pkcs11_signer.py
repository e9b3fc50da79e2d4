"""Release signing with an Ed25519 key inside a PKCS#11 token (SoftHSM), verified by the flasher."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsm.softhsm import SoftHsmToken
from image.flash import flash
from image.manifest import key_id, sign_manifest, verify_signature
from image.p11sign import Pkcs11Signer

from .conftest import Keys, make_release

pytestmark = pytest.mark.softhsm
ED25519_OID = bytes.fromhex("06032b6570")


@pytest.fixture(scope="module")
def token_signer(softhsm_token: SoftHsmToken) -> Pkcs11Signer:
    # The session's token (tests/conftest.py): python-pkcs11 loads the module once per process,
    # and SoftHSM reads SOFTHSM2_CONF only at its first C_Initialize, so every test of the
    # process shares one token; the release key gets a label of its own in it.
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism

    from hsm.vault import PKCS11_LOCK

    label = "release-signing"
    with (
        PKCS11_LOCK,
        pkcs11.lib(softhsm_token.module_path)
        .get_token(token_label=softhsm_token.label)
        .open(user_pin=softhsm_token.pin, rw=True) as s,
    ):
        if not list(s.get_objects({Attribute.LABEL: label})):
            s.generate_keypair(
                KeyType.EC_EDWARDS,
                mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                public_template={
                    Attribute.EC_PARAMS: ED25519_OID,
                    Attribute.LABEL: label,
                    Attribute.TOKEN: True,
                    Attribute.VERIFY: True,
                },
                private_template={
                    Attribute.LABEL: label,
                    Attribute.TOKEN: True,
                    Attribute.SIGN: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                },
            )
    return Pkcs11Signer(
        softhsm_token.module_path, softhsm_token.label, label, softhsm_token.pin_file
    )


def test_a_manifest_signed_in_the_token_verifies_under_its_public_key(
    token_signer: Pkcs11Signer, tmp_path: Path
) -> None:
    rel = make_release(tmp_path / "rel", token_signer)
    verify_signature(
        rel.manifest_path.read_bytes(), rel.sig_path.read_bytes(), token_signer.public_key()
    )
    flash(
        str(rel.disk),
        str(tmp_path / "t.img"),
        token_signer.public_key(),
        "kmsnode",
        log=lambda _: None,
    )


def test_token_key_and_file_key_have_different_ids(token_signer: Pkcs11Signer, keys: Keys) -> None:
    assert key_id(token_signer.public_key()) != key_id(keys.signer.public_key())
    data = b'{"x":1}'
    with pytest.raises(Exception):  # noqa: B017 - not a manifest: refused before signing
        sign_manifest(data, token_signer)


def test_signer_repr_shows_no_pin(token_signer: Pkcs11Signer, softhsm_token: SoftHsmToken) -> None:
    assert softhsm_token.pin not in repr(token_signer)
