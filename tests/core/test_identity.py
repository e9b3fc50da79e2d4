from __future__ import annotations

import pytest

from firmware.core.identity import IdentityError, canonical, same_identity


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:alice@ims.example.net", "SIP:alice@IMS.EXAMPLE.NET"),
        ("sip:alice@ims.example.net", "sip:alice@ims.example.net;transport=tcp"),
        ("sip:alice@ims.example.net", "sip:%61lice@ims.example.net"),
        ("tel:+15551234567", "tel:+1-555-123-4567"),
        ("tel:+15551234567", "tel:+1(555)123.4567;foo=bar"),
        ("tel:1234;phone-context=Example.com", "tel:12-34;phone-context=example.com"),
    ],
)
def test_equivalent_identities_compare_equal(a: str, b: str) -> None:
    assert canonical(a) == canonical(b)
    assert same_identity(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:alice@ims.example.net", "sip:Alice@ims.example.net"),
        ("sip:alice@ims.example.net", "sip:alice@ims.example.net:5060"),
        ("sip:alice@ims.example.net", "sips:alice@ims.example.net"),
        ("tel:+15551234567", "tel:+15551234568"),
        ("sip:alice@ims.example.net", "tel:+15551234567"),
    ],
)
def test_different_identities_do_not_compare_equal(a: str, b: str) -> None:
    assert not same_identity(a, b)


@pytest.mark.parametrize(
    "bad",
    ["", "alice", "http://x", "tel:12ab!", "tel:1234", "sip:alice@", "sip:a@b c", "sip:a@h:x"],
)
def test_refuses_what_is_not_a_sip_or_tel_uri(bad: str) -> None:
    with pytest.raises(IdentityError):
        canonical(bad)
    assert not same_identity(bad, bad)
