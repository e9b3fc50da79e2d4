"""Manifest canonicalisation, signing and the verification order (signature, product, version)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image.errors import BadManifest, BadSignature, Downgrade, WrongKey, WrongProduct
from image.manifest import (
    DOMAIN,
    Artifact,
    BuildInfo,
    Manifest,
    VerityInfo,
    canonical_json,
    parse_manifest,
    sign_manifest,
    verify_signature,
)
from image.verify import check_manifest

from .conftest import Keys

HEX64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-+_é", min_size=1, max_size=20)


def sample(product: str = "kmsnode", security_version: int = 5) -> Manifest:
    return Manifest(
        product=product,
        version="1.0.0",
        security_version=security_version,
        build=BuildInfo("a" * 40, 1767225600, "trixie", "kmsnode-image 1"),
        artifacts={"root.img": Artifact(8192, "0" * 64), "root.verity": Artifact(4096, "1" * 64)},
        verity=VerityInfo("2" * 64, "3" * 64, "12345678-1234-4234-8234-123456789abc", 2),
        packages={"python3": "3.13.5-1", "systemd": "257.8-1"},
    )


manifests = st.builds(
    Manifest,
    product=NAME,
    version=NAME,
    security_version=st.integers(0, 2**40),
    build=st.builds(
        BuildInfo, commit=HEX64, source_date_epoch=st.integers(0, 2**33), suite=NAME, builder=NAME
    ),
    artifacts=st.dictionaries(
        NAME, st.builds(Artifact, size=st.integers(0, 2**40), sha256=HEX64), max_size=5
    ),
    verity=st.builds(
        VerityInfo,
        root_hash=HEX64,
        salt=HEX64,
        uuid=st.uuids().map(str),
        data_blocks=st.integers(1, 2**30),
    ),
    packages=st.dictionaries(NAME, NAME, max_size=10),
)


# Generation is slow on a loaded 2-core machine; the property, not the speed, is under test.
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests)
def test_canonical_bytes_round_trip_to_the_same_manifest(m: Manifest) -> None:
    data = m.canonical_bytes()
    assert parse_manifest(data) == m
    assert parse_manifest(data).canonical_bytes() == data


def test_canonical_form_sorts_keys_and_has_no_whitespace() -> None:
    data = sample().canonical_bytes()
    assert b" " not in data.replace(b"kmsnode-image 1", b"")
    obj = json.loads(data)
    assert list(obj) == sorted(obj)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b.replace(b'{"artifacts"', b'{ "artifacts"'),
        lambda b: json.dumps(json.loads(b), sort_keys=True).encode(),  # ", " and ": " separators
        lambda b: b + b"\n",
    ],
    ids=["inner-space", "pretty-separators", "trailing-newline"],
)
def test_refuses_manifest_bytes_that_are_not_canonical(mangle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadManifest, match="canonical"):
        parse_manifest(mangle(sample().canonical_bytes()))


def test_refuses_duplicate_keys_that_could_hide_a_second_meaning() -> None:
    data = sample().canonical_bytes().replace(b'"format":1,', b'"format":1,"format":1,')
    with pytest.raises(BadManifest, match="duplicate"):
        parse_manifest(data)


def test_refuses_floats_and_unknown_fields() -> None:
    obj = sample().to_json_obj()
    obj["security_version"] = 5.0
    with pytest.raises(BadManifest):
        parse_manifest(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())
    obj = sample().to_json_obj()
    obj["extra"] = "x"
    with pytest.raises(BadManifest, match="unknown"):
        parse_manifest(canonical_json(obj))


def test_refuses_unknown_manifest_format() -> None:
    obj = sample().to_json_obj()
    obj["format"] = 2
    with pytest.raises(BadManifest, match="format"):
        parse_manifest(canonical_json(obj))


def test_signature_verifies_under_the_pinned_key(keys: Keys) -> None:
    data = sample().canonical_bytes()
    verify_signature(data, sign_manifest(data, keys.signer), keys.signer.public_key())


def test_refuses_a_manifest_signed_by_another_key(keys: Keys) -> None:
    data = sample().canonical_bytes()
    with pytest.raises(WrongKey, match="another key"):
        verify_signature(data, sign_manifest(data, keys.other), keys.signer.public_key())


def test_refuses_another_keys_signature_relabelled_with_the_pinned_key_id(keys: Keys) -> None:
    data = sample().canonical_bytes()
    env = json.loads(sign_manifest(data, keys.other))
    env["keyid"] = json.loads(sign_manifest(data, keys.signer))["keyid"]
    with pytest.raises(BadSignature, match="does not verify"):
        verify_signature(data, canonical_json(env), keys.signer.public_key())


def test_refuses_one_changed_byte_in_a_signed_manifest(keys: Keys) -> None:
    data = sample().canonical_bytes()
    sig = sign_manifest(data, keys.signer)
    changed = data.replace(b'"security_version":5', b'"security_version":9')
    with pytest.raises(BadSignature):
        verify_signature(changed, sig, keys.signer.public_key())


def test_signature_without_the_domain_prefix_is_refused(keys: Keys) -> None:
    data = sample().canonical_bytes()
    raw = keys.signer.sign(data)  # a signature over the bare bytes, e.g. from another protocol
    env = json.loads(sign_manifest(data, keys.signer))
    env["sig"] = base64.b64encode(raw).decode()
    with pytest.raises(BadSignature):
        verify_signature(data, canonical_json(env), keys.signer.public_key())
    assert keys.signer.public_key().verify(keys.signer.sign(DOMAIN + data), DOMAIN + data) is None


def test_refuses_a_manifest_for_another_product(keys: Keys) -> None:
    data = sample(product="othernode").canonical_bytes()
    with pytest.raises(WrongProduct, match="othernode"):
        check_manifest(data, sign_manifest(data, keys.signer), keys.signer.public_key(), "kmsnode")


def test_refuses_a_downgrade_below_the_installed_security_version(keys: Keys) -> None:
    data = sample(security_version=4).canonical_bytes()
    with pytest.raises(Downgrade, match="rollback"):
        check_manifest(
            data, sign_manifest(data, keys.signer), keys.signer.public_key(), "kmsnode", 5
        )


def test_accepts_the_same_security_version_as_installed(keys: Keys) -> None:
    data = sample(security_version=5).canonical_bytes()
    m = check_manifest(
        data, sign_manifest(data, keys.signer), keys.signer.public_key(), "kmsnode", 5
    )
    assert m.security_version == 5


def test_signature_is_checked_before_product_or_version(keys: Keys) -> None:
    data = sample(product="othernode", security_version=0).canonical_bytes()
    with pytest.raises(WrongKey):
        check_manifest(
            data, sign_manifest(data, keys.other), keys.signer.public_key(), "kmsnode", 5
        )


def test_signer_repr_never_shows_the_private_key(keys: Keys) -> None:
    assert "PRIVATE" not in repr(keys.signer) and "_key" not in repr(keys.signer)
