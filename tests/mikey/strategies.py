"""Hypothesis strategies for every MIKEY payload and message data type."""

from __future__ import annotations

from hypothesis import strategies as st

from firmware.mikey import codec as c
from firmware.mikey.constants import (
    CertType,
    DataType,
    DhGroup,
    EncrAlg,
    ErrNo,
    HashFunc,
    IdRole,
    IdType,
    KeyDataType,
    MacAlg,
    PkeCache,
    RandRole,
    SignType,
    TsRole,
    TsType,
)
from firmware.mikey.message import Message
from firmware.mikey.prf import PrfFunc

u8 = st.integers(0, 255)
u32 = st.integers(0, 0xFFFFFFFF)
small = st.binary(max_size=24)


def open_registry(cls: type) -> st.SearchStrategy[int]:
    """A registered member, or any byte (unassigned, private-range or reserved values too): the
    open role/type registries parse every value (constants.py)."""
    return st.one_of(st.sampled_from(cls), u8)


id_roles = open_registry(IdRole)
id_types = open_registry(IdType)
rand_roles = open_registry(RandRole)
ts_roles = open_registry(TsRole)
err_nos = open_registry(ErrNo)


def _ts(draw: st.DrawFn) -> tuple[TsType, bytes]:
    t = draw(st.sampled_from(TsType))
    return t, draw(st.binary(min_size=t.value_len, max_size=t.value_len))


@st.composite
def timestamps(draw: st.DrawFn) -> c.Timestamp:
    return c.Timestamp(*_ts(draw))


@st.composite
def role_timestamps(draw: st.DrawFn) -> c.RoleTimestamp:
    return c.RoleTimestamp(draw(ts_roles), *_ts(draw))


@st.composite
def chashes(draw: st.DrawFn) -> c.CertHash:
    f = draw(st.sampled_from(HashFunc))
    return c.CertHash(f, draw(st.binary(min_size=f.hash_len, max_size=f.hash_len)))


@st.composite
def macs(draw: st.DrawFn) -> tuple[MacAlg, bytes]:
    a = draw(st.sampled_from(MacAlg))
    return a, draw(st.binary(min_size=a.mac_len, max_size=a.mac_len))


kvs = st.one_of(
    st.just(c.KvNull()),
    st.builds(c.KvSpi, small),
    st.builds(c.KvInterval, small, small),
)


@st.composite
def key_data(draw: st.DrawFn) -> c.KeyData:
    t = draw(st.sampled_from(KeyDataType))
    return c.KeyData(t, draw(st.binary(max_size=40)), draw(small) if t.has_salt else b"", draw(kvs))


@st.composite
def kemacs(draw: st.DrawFn) -> c.Kemac:
    a, m = draw(macs())
    return c.Kemac(draw(st.sampled_from(EncrAlg)), draw(st.binary(max_size=64)), a, m)


@st.composite
def dhs(draw: st.DrawFn) -> c.Dh:
    g = draw(st.sampled_from(DhGroup))
    v = draw(st.binary(min_size=g.value_len, max_size=g.value_len))
    return c.Dh(g, v, draw(kvs), draw(st.integers(0, 15)))


@st.composite
def verifications(draw: st.DrawFn) -> c.Verification:
    return c.Verification(*draw(macs()))


def simple_payloads() -> st.SearchStrategy[c.Payload]:
    return st.one_of(
        kemacs(),
        st.builds(c.Pke, st.sampled_from(PkeCache), small),
        dhs(),
        timestamps(),
        st.builds(c.Identity, id_types, small),
        st.builds(c.Certificate, st.sampled_from(CertType), small),
        chashes(),
        verifications(),
        st.builds(
            c.SecurityPolicy,
            u8,
            u8,
            st.lists(st.builds(c.PolicyParam, u8, small), max_size=4).map(tuple),
        ),
        st.builds(c.Rand, small),
        st.builds(c.ErrorPayload, err_nos, st.integers(0, 0xFFFF)),
        role_timestamps(),
        st.builds(c.RoleIdentity, id_roles, id_types, small),
        st.builds(c.RoleRand, rand_roles, small),
        st.builds(c.GeneralExtension, u8, small),
    )


nested = st.one_of(st.none(), st.lists(simple_payloads(), max_size=4).map(tuple))


@st.composite
def policies(draw: st.DrawFn) -> c.TicketPolicy:
    return c.TicketPolicy(
        draw(st.integers(0, 0xFFFF)), draw(u8), draw(u8), draw(st.sampled_from(PrfFunc)),
        c.TpFlags(draw(st.integers(0, 0xFFF))), draw(nested), draw(st.integers(0, 31)),
    )  # fmt: skip


@st.composite
def tickets(draw: st.DrawFn) -> c.Ticket:
    return c.Ticket(draw(policies()), draw(st.binary(max_size=48)), draw(nested))


def payloads() -> st.SearchStrategy[c.Payload]:
    return st.one_of(simple_payloads(), policies(), tickets())


@st.composite
def generic_entries(draw: st.DrawFn) -> c.GenericIdEntry:
    return c.GenericIdEntry(
        draw(u8),
        draw(u8),
        draw(st.booleans()),
        tuple(draw(st.lists(u8, max_size=3))),
        draw(small),
        draw(small),
    )


cs_maps = st.one_of(
    st.builds(c.SrtpIdMap, st.lists(st.builds(c.SrtpIdEntry, u8, u32, u32), max_size=3).map(tuple)),
    st.builds(c.EmptyMap, u8),
    st.builds(c.GenericIdMap, st.lists(generic_entries(), max_size=3).map(tuple)),
)


@st.composite
def headers(draw: st.DrawFn, data_type: DataType | None = None) -> c.Header:
    dt = data_type if data_type is not None else draw(st.sampled_from(DataType))
    return c.Header(
        dt, draw(u32), draw(cs_maps), draw(st.sampled_from(PrfFunc)), draw(st.booleans())
    )


@st.composite
def messages(draw: st.DrawFn, data_type: DataType | None = None) -> Message:
    body = draw(st.lists(payloads(), max_size=6))
    if draw(st.booleans()):
        body.append(c.Signature(draw(st.sampled_from(SignType)), draw(small)))
    return Message(draw(headers(data_type)), tuple(body))
