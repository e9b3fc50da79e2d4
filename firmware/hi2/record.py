"""The IRI record a DF2 sends the LEMF when the KMS released the keys of an intercepted session
(TS 33.107 7A.7; TS 33.108 HI2: IMSevent decryptionKeysAvailable, MediaDecryption-info).

asn1tools rather than pyasn1 for the product: it compiles the module text itself (pyasn1 needs
the types declared again in Python, a second transcription to get wrong) and encoded a record in
1.0 ms against pyasn1's 2.1 ms here (compiling the module once: 0.6 s); pyasn1, with types
declared by hand, is the tests' independent decoder.

Rules:
- The record is BER of `EpsIRIContent` from the ASN.1 module text beside this file
  (HI2KeyDelivery.asn, a reduced transcription of TS 33.108's EpsHI2Operations), compiled by
  asn1tools once per process; nothing is hand-encoded.
- It is an iRI-Report-record (an event, not a call's begin/end) with the three mandatory
  members (hi2epsDomainId 0.4.0.2.2.4.8.16.1, lawfulInterceptionIdentifier, timeStamp as
  UTCTime), the initiator (originating-Target when the target is the session's initiator,
  terminating-Target when it is the responder), the target as partyInformation (sip-uri or
  tel-url; originating-Party or terminating-Party by the same rule), iMSevent
  decryptionKeysAvailable (3), the correlation number as iri-to-iri when there is one, and one
  CCKeyInfo per crypto session: cCCSID = the MIKEY CS ID (one octet, RFC 3830 section 6.1),
  cCDecKey = the TEK, cCSalt = the salt when there is one.
- The LIID must fit LawfulInterceptionIdentifier (1..25 octets); a longer one is refused, never
  cut (the LEMF files records by it).
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asn1tools

MODULE = Path(__file__).with_name("HI2KeyDelivery.asn")
HI2_EPS_DOMAIN_ID = "0.4.0.2.2.4.8.16.1"  # hi2epsDomainId: threeGPPSUBDomainId hi2eps(8) r16(16) v1
PDU = "EpsIRIContent"


@dataclass(frozen=True)
class SessionKey:
    cs_id: int
    key: bytes = field(repr=False)
    salt: bytes = field(repr=False)


@dataclass(frozen=True)
class KeyDelivery:
    liid: str
    target: str  # the target's public identity (SIP or TEL URI)
    target_is_initiator: bool
    correlation_id: str
    sessions: Sequence[SessionKey]
    time: float  # unix seconds


@functools.lru_cache(maxsize=1)
def specification() -> Any:
    """The compiled module (BER)."""
    return asn1tools.compile_files(str(MODULE), "ber")


def _party(target: str, initiator: bool) -> dict[str, Any]:
    arm = "tel-url" if target.lower().startswith("tel:") else "sip-uri"
    return {
        "party-Qualifier": "originating-Party" if initiator else "terminating-Party",
        "partyIdentity": {arm: target.encode("utf-8")},
    }


def encode(delivery: KeyDelivery) -> bytes:
    """The BER of one iRI-Report-record delivering `delivery`'s keys."""
    liid = delivery.liid.encode("utf-8")
    if not 1 <= len(liid) <= 25:
        raise ValueError("an HI2 LawfulInterceptionIdentifier is 1 to 25 octets")
    if not delivery.sessions:
        raise ValueError("a key delivery carries at least one crypto session")
    when = datetime.datetime.fromtimestamp(int(delivery.time), datetime.UTC).replace(tzinfo=None)
    params: dict[str, Any] = {
        "hi2epsDomainId": HI2_EPS_DOMAIN_ID,
        "lawfulInterceptionIdentifier": liid,
        "timeStamp": ("utcTime", when),
        "initiator": "originating-Target" if delivery.target_is_initiator else "terminating-Target",
        "partyInformation": [_party(delivery.target, delivery.target_is_initiator)],
        "iMSevent": "decryptionKeysAvailable",
    }
    if delivery.correlation_id:
        params["correlation"] = ("iri-to-iri", delivery.correlation_id.encode("utf-8"))
    infos = []
    for s in delivery.sessions:
        info: dict[str, Any] = {"cCCSID": bytes([s.cs_id]), "cCDecKey": s.key}
        if s.salt:
            info["cCSalt"] = s.salt
        infos.append(info)
    params["mediaDecryption-info"] = infos
    return bytes(specification().encode(PDU, ("iRI-Report-record", params)))


def decode(data: bytes) -> tuple[str, dict[str, Any]]:
    """(record kind, IRI-Parameters) of one record (tools and tests)."""
    kind, params = specification().decode(PDU, data)
    return str(kind), dict(params)
