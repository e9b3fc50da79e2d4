"""Release signing with an Ed25519 key inside a PKCS#11 token (SoftHSM), verified by the flasher."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from image.flash import flash
from image.manifest import key_id, sign_manifest, verify_signature
from image.p11sign import Pkcs11Signer

from .conftest import Keys, make_release

pytestmark = pytest.mark.softhsm
ED25519_OID = bytes.fromhex("06032b6570")


@pytest.fixture(scope="module")
def token_signer(tmp_path_factory: pytest.TempPathFactory) -> Pkcs11Signer:
    # One token per module: python-pkcs11 loads the module once per process, and SoftHSM reads
    # SOFTHSM2_CONF only at its first C_Initialize.
    tmp_path = tmp_path_factory.mktemp("release-token")
    if shutil.which("softhsm2-util") is None:
        pytest.skip("softhsm2 not installed")
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism

    from hsm.softhsm import create_token

    tok = create_token(tmp_path / "hsm", "release", "1234", "5678")
    os.environ.setdefault("SOFTHSM2_CONF", str(tok.conf))
    if os.environ["SOFTHSM2_CONF"] != str(tok.conf):
        pytest.skip("another SoftHSM configuration is already loaded in this process")
    with (
        pkcs11.lib(tok.module_path)
        .get_token(token_label="release")
        .open(user_pin="1234", rw=True) as s
    ):
        s.generate_keypair(
            KeyType.EC_EDWARDS,
            mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
            public_template={
                Attribute.EC_PARAMS: ED25519_OID,
                Attribute.LABEL: "rel",
                Attribute.TOKEN: True,
                Attribute.VERIFY: True,
            },
            private_template={
                Attribute.LABEL: "rel",
                Attribute.TOKEN: True,
                Attribute.SIGN: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
            },
        )
    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    os.chmod(pin, 0o600)
    return Pkcs11Signer(tok.module_path, "release", "rel", pin)


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


def test_signer_repr_shows_no_pin(token_signer: Pkcs11Signer) -> None:
    assert "1234" not in repr(token_signer)
