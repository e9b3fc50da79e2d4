"""An independent decoder of our HI2 key-delivery records: pyasn1 types declared by hand from
the member names and tags of TS 33.108 EpsHI2Operations as shared/spec/li-interfaces.md 2.2
records them (not generated from firmware/hi2/HI2KeyDelivery.asn), IMPLICIT tagging, a tagged
CHOICE explicitly tagged as X.680 requires."""

from __future__ import annotations

from pyasn1.type import char, constraint, namedtype, namedval, tag, univ, useful


def _ctx(number: int, constructed: bool = False) -> tag.Tag:
    form = tag.tagFormatConstructed if constructed else tag.tagFormatSimple
    return tag.Tag(tag.tagClassContext, form, number)


def _implicit(cls: type, number: int, constructed: bool = False, **kw: object) -> object:
    return cls(**kw).subtype(implicitTag=_ctx(number, constructed))  # type: ignore[call-arg]


class CCKeyInfo(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("cCCSID", univ.OctetString().subtype(implicitTag=_ctx(1))),
        namedtype.NamedType("cCDecKey", univ.OctetString().subtype(implicitTag=_ctx(2))),
        namedtype.OptionalNamedType("cCSalt", univ.OctetString().subtype(implicitTag=_ctx(3))),
    )


class MediaDecryptionInfo(univ.SequenceOf):
    componentType = CCKeyInfo()


class PartyIdentity(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.OptionalNamedType("sip-uri", univ.OctetString().subtype(implicitTag=_ctx(8))),
        namedtype.OptionalNamedType("tel-url", univ.OctetString().subtype(implicitTag=_ctx(9))),
    )


class PartyInformation(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType(
            "party-Qualifier",
            univ.Enumerated(
                namedValues=namedval.NamedValues(
                    ("originating-Party", 0), ("terminating-Party", 1), ("forwarded-to-Party", 2)
                )
            ).subtype(implicitTag=_ctx(0)),
        ),
        namedtype.NamedType(
            "partyIdentity", PartyIdentity().subtype(implicitTag=_ctx(1, constructed=True))
        ),
    )


class TimeStamp(univ.Choice):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("utcTime", useful.UTCTime().subtype(implicitTag=_ctx(1))),
    )


class CorrelationValues(univ.Choice):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("iri-to-iri", univ.OctetString().subtype(implicitTag=_ctx(1))),
    )


class IRIParameters(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("hi2epsDomainId", univ.ObjectIdentifier().subtype(implicitTag=_ctx(0))),
        namedtype.NamedType(
            "lawfulInterceptionIdentifier",
            univ.OctetString()
            .subtype(subtypeSpec=constraint.ValueSizeConstraint(1, 25))
            .subtype(implicitTag=_ctx(1)),
        ),
        namedtype.NamedType(
            "timeStamp", TimeStamp().subtype(explicitTag=_ctx(3, constructed=True))
        ),
        namedtype.OptionalNamedType(
            "initiator",
            univ.Enumerated(
                namedValues=namedval.NamedValues(
                    ("not-Available", 0), ("originating-Target", 1), ("terminating-Target", 2)
                )
            ).subtype(implicitTag=_ctx(4)),
        ),
        namedtype.OptionalNamedType(
            "partyInformation",
            univ.SetOf(componentType=PartyInformation()).subtype(
                implicitTag=_ctx(9, constructed=True)
            ),
        ),
        namedtype.OptionalNamedType("iMSevent", univ.Enumerated().subtype(implicitTag=_ctx(29))),
        namedtype.OptionalNamedType(
            "correlation", CorrelationValues().subtype(explicitTag=_ctx(35, constructed=True))
        ),
        namedtype.OptionalNamedType(
            "mediaDecryption-info",
            MediaDecryptionInfo().subtype(implicitTag=_ctx(42, constructed=True)),
        ),
    )


class EpsIRIContent(univ.Choice):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType(
            "iRI-Report-record", IRIParameters().subtype(implicitTag=_ctx(4, constructed=True))
        ),
    )


__all__ = ["EpsIRIContent", "char"]
