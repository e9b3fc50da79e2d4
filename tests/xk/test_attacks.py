"""Xk tried as an attacker would, through the real server (SoftHSM, real mutual TLS on loopback):
key holders forging answers, another agency's DF2, certificates of the wrong SAN type or revoked,
fields that would split or flood, bytes that do not even decode. Each test is named after the
attack it stops; the core tests (tests/core/test_xk.py) hold the rules one by one."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from cryptography import x509

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.config import RolesConfig
from firmware.core.fields import MAX_FIELD_BYTES
from firmware.devpki import issue
from hsm.softhsm import SoftHsmToken
from hsm.vault import VaultSettings
from tests.api.conftest import exchange_via
from tests.core.world import Ues, session
from tests.xk.conftest import (
    ALICE,
    BOB,
    CAROL,
    DEADLINE,
    DF2,
    DF2_NAME,
    INITIATOR,
    RESPONDER,
    AlarmWatcher,
    Xk,
    error_reason,
    start_xk_node,
    unique,
)

pytestmark = pytest.mark.softhsm

DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
ROLES = "\n".join(
    [
        'df2 = ["dns:df2.li.example.net", "dns:df2b.li.example.net", "dns:both.li.example.net"]',
        'admin = ["dns:admin.li.example.net", "dns:both.li.example.net"]',
    ]
)
QUEUE = 16


@pytest.fixture(scope="module")
def xk(
    tmp_path_factory: pytest.TempPathFactory,
    softhsm_token: SoftHsmToken,
    vault_settings: VaultSettings,
    _vault_keys: None,
) -> Iterator[Xk]:
    directory = tmp_path_factory.mktemp("attacks")
    rn = start_xk_node(
        directory,
        softhsm_token,
        vault_settings,
        roles=ROLES,
        extra_config=f"\n[alarms]\nqueue_size = {QUEUE}\n",
    )
    pki = rn.pki
    issue(pki, "df2b", [x509.DNSName("df2b.li.example.net")])
    issue(
        pki,
        "both",
        [x509.DNSName("both.li.example.net"), x509.UniformResourceIdentifier("urn:both")],
    )
    issue(pki, "uri-df2", [x509.UniformResourceIdentifier("df2.li.example.net")])
    issue(pki, "df2-spare", [x509.DNSName("df2.li.example.net")])
    client = Xk(rn)
    try:
        yield client
    finally:
        client.close()
        rn.node.stop(1.0)


@pytest.fixture
def ues(xk: Xk) -> Ues:
    stub = kms_pb2_grpc.TicketServiceStub(xk.channel("ue", None))
    return Ues(exchange_via(stub), lambda: xk.rn.clock.now)


def refused(xk: Xk, *args: Any, **kw: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        xk.get_keys(*args, **kw)
    return info.value


def one_alarm(watcher: AlarmWatcher, reason: str, correlation_id: str) -> Any:
    """The next alarm is the refusal's (and only one: a sentinel refusal comes right after)."""
    alarm = watcher.next()
    assert (alarm.reason, alarm.correlation_id) == (reason, correlation_id)
    return alarm


# --- the responder bound by the KMS's own record ---------------------------------------------


@pytest.mark.parametrize("forking", [True, False])
def test_refuses_an_initiator_forged_answer_naming_another_allowed_responder(
    xk: Xk, ues: Ues, watcher: AlarmWatcher, forking: bool
) -> None:
    offer = ues.offer(forking=forking, responders=(BOB, CAROL))
    ues.answer(offer, BOB)
    forged = ues.forged_answer(offer, naming=CAROL)
    corr = unique("forged")
    records = xk.node.audit.count
    err = refused(xk, offer.transfer_init, CAROL, RESPONDER, xk.warrant(CAROL), forged, corr)
    assert (err.code(), error_reason(err)) == (DENIED, "TARGET_MISMATCH")
    one_alarm(watcher, "TARGET_MISMATCH", corr)
    assert [r["event"] for r in xk.audit_records()[records + 1 :]] == ["KEY_REFUSED"]


@pytest.mark.parametrize("forking", [True, False])
def test_refuses_one_responders_genuine_answer_presented_for_the_other(
    xk: Xk, ues: Ues, watcher: AlarmWatcher, forking: bool
) -> None:
    offer = ues.offer(forking=forking, responders=(BOB, CAROL))
    ues.answer(offer, BOB)
    carols = ues.answer(offer, CAROL)
    corr = unique("swapped")
    liid = xk.warrant(BOB)
    err = refused(xk, offer.transfer_init, BOB, RESPONDER, liid, carols.transfer_resp, corr)
    assert error_reason(err) == "TARGET_MISMATCH"
    one_alarm(watcher, "TARGET_MISMATCH", corr)


@pytest.mark.parametrize("forking", [True, False])
def test_each_responder_with_its_own_answer_gets_its_own_keys(
    xk: Xk, ues: Ues, forking: bool
) -> None:
    offer = ues.offer(forking=forking, responders=(BOB, CAROL))
    answers = {who: ues.answer(offer, who) for who in (BOB, CAROL)}
    for who, answer in answers.items():
        got = xk.get_keys(
            offer.transfer_init, who, RESPONDER, xk.warrant(who), answer.transfer_resp
        )
        assert [(s.cs_id, s.session_key, s.salt) for s in got.sessions] == session(answer.keys)


# --- warrant and session time ------------------------------------------------------------------


def test_refuses_a_session_whose_ticket_ended_before_the_warrant_began(
    xk: Xk, ues: Ues, watcher: AlarmWatcher
) -> None:
    offer = ues.offer(forking=False)
    ues.answer(offer, BOB)
    now = xk.rn.clock.now
    liid = xk.warrant(BOB, valid_from=now + 5400, valid_until=now + 36000)
    xk.rn.clock.now = now + 7200  # warrant active, the ticket (1 h) long over
    try:
        err = refused(xk, offer.transfer_init, BOB, RESPONDER, liid, correlation_id="late-1")
    finally:
        xk.rn.clock.now = now
    assert err.code() == DENIED
    assert error_reason(err) in ("TICKET_EXPIRED", "NO_ACTIVE_WARRANT")
    one_alarm(watcher, error_reason(err), "late-1")


def test_releases_a_session_already_running_when_the_warrant_starts(xk: Xk, ues: Ues) -> None:
    offer = ues.offer(forking=False)
    answer = ues.answer(offer, BOB)
    now = xk.rn.clock.now
    liid = xk.warrant(BOB, valid_from=now + 300, valid_until=now + 3000)
    xk.rn.clock.now = now + 600  # mid-session: TS 33.107 7A.7.5
    try:
        got = xk.get_keys(offer.transfer_init, BOB, RESPONDER, liid)
    finally:
        xk.rn.clock.now = now
    assert [(s.cs_id, s.session_key, s.salt) for s in got.sessions] == session(answer.keys)


# --- bytes that do not decode --------------------------------------------------------------------


def _raw_call(xk: Xk, method: str, payload: bytes, client: str = "df2") -> grpc.RpcError:
    channel = xk.channel("li", client)
    rpc = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as info:
        rpc(payload, timeout=DEADLINE)
    return info.value


def _string_field(number: int, raw: bytes) -> bytes:
    return bytes([number << 3 | 2, len(raw)]) + raw


@pytest.mark.parametrize(
    ("method", "client", "payload"),
    [
        (
            "/kms.v1.XkService/GetKeys",
            "df2",
            _string_field(1, b"sip:\xff@x") + _string_field(5, b"L"),
        ),
        ("/kms.v1.XkService/GetKeys", "df2", _string_field(5, b"L\xc3\x28")),
        ("/kms.v1.XkService/GetKeys", "df2", b"\x0a\xff\xff\xff"),  # length past the end
        ("/kms.v1.AdminService/PutWarrant", "admin", _string_field(1, b"\xe2\x82")),
        ("/kms.v1.AdminService/PutUser", "admin", _string_field(1, b"\xed\xa0\x80")),
    ],
)
def test_a_request_that_does_not_decode_is_refused_invalid_argument_and_alarmed(
    xk: Xk, watcher: AlarmWatcher, caplog: pytest.LogCaptureFixture, method: str, client: str,
    payload: bytes,
) -> None:  # fmt: skip
    records = xk.node.audit.count
    err = _raw_call(xk, method, payload, client)
    assert (err.code(), error_reason(err)) == (INVALID, "INVALID_REQUEST")
    alarm = watcher.next()
    assert alarm.reason == "INVALID_REQUEST" and "decode" in alarm.detail
    (record,) = xk.audit_records()[records:]
    assert record["fields"]["reason"] == "INVALID_REQUEST"
    assert "Traceback" not in caplog.text


# --- alarms kept to their agency --------------------------------------------------------------


def test_a_second_df2s_watcher_sees_none_of_the_first_df2s_alarms_an_admin_sees_both(
    xk: Xk, watcher: AlarmWatcher
) -> None:
    other = AlarmWatcher(xk.channel("li", "df2b"))
    mine = AlarmWatcher(xk.channel("li", "df2"))
    try:
        refused(xk, b"junk", ALICE, INITIATOR, unique("L"), correlation_id="agency-1")
        refused(xk, b"junk", ALICE, INITIATOR, unique("L"), correlation_id="agency-2",
                client="df2b")  # fmt: skip
        xk.node.alarms.raise_alarm("HSM_REMOVED", detail="test: a node alarm")
        assert [watcher.next().correlation_id for _ in range(3)] == ["agency-1", "agency-2", ""]
        assert [mine.next().correlation_id, mine.next().reason] == ["agency-1", "HSM_REMOVED"]
        assert [other.next().correlation_id, other.next().reason] == ["agency-2", "HSM_REMOVED"]
        # nothing else queued for either DF2 (the admin's probe shows the bus is idle)
        assert mine.alarms.empty() and other.alarms.empty()
    finally:
        other.close()
        mine.close()


def test_watchers_that_never_read_hold_at_most_their_queue(xk: Xk) -> None:
    """Four watchers that never read must not grow the node's memory: each subscription holds at
    most `queue_size` alarms however many are raised; the rest are dropped and counted."""
    stub = kms_pb2_grpc.AdminServiceStub(xk.channel("li", "admin"))
    calls = [stub.WatchAlarms(kms_pb2.WatchAlarmsRequest(), timeout=DEADLINE) for _ in range(3)]
    df2 = kms_pb2_grpc.AdminServiceStub(xk.channel("li", "df2"))
    calls.append(df2.WatchAlarms(kms_pb2.WatchAlarmsRequest(), timeout=DEADLINE))
    try:
        for call in calls:
            call.initial_metadata()  # subscribed; never read from here on
        before = xk.node.metrics.alarms_dropped._value.get()
        for i in range(3000):
            xk.node.alarms.raise_alarm("HSM_REMOVED", detail=f"flood {i}")
        subs = xk.node.alarms._subscribers
        assert len(subs) >= 4
        assert max(s.pending for s in subs) <= QUEUE
        assert xk.node.metrics.alarms_dropped._value.get() > before
    finally:
        for call in calls:
            call.cancel()


def test_more_watchers_than_the_cap_per_identity_are_refused_resource_exhausted(xk: Xk) -> None:
    stub = kms_pb2_grpc.AdminServiceStub(xk.channel("li", "df2b"))
    calls = []
    try:
        for _ in range(4):  # [alarms] watchers_per_identity default
            call = stub.WatchAlarms(kms_pb2.WatchAlarmsRequest(), timeout=DEADLINE)
            call.initial_metadata()
            calls.append(call)
        extra = stub.WatchAlarms(kms_pb2.WatchAlarmsRequest(), timeout=DEADLINE)
        with pytest.raises(grpc.RpcError) as info:
            next(extra)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for call in calls:
            call.cancel()


# --- fields that would split or flood ----------------------------------------------------

LONG = "x" * (MAX_FIELD_BYTES + 1)


def _stamp(unix: float) -> Any:
    from google.protobuf import timestamp_pb2

    stamp = timestamp_pb2.Timestamp()
    stamp.FromSeconds(int(unix))
    return stamp


FIELD_CASES = {
    "getkeys-liid-long": ("xk", "GetKeys", lambda xk: kms_pb2.GetKeysRequest(
        target_identity=ALICE, target_role=INITIATOR, transfer_init=b"x", liid=LONG)),
    "getkeys-liid-newline": ("xk", "GetKeys", lambda xk: kms_pb2.GetKeysRequest(
        target_identity=ALICE, target_role=INITIATOR, transfer_init=b"x", liid="L1\nL2")),
    "getkeys-correlation-control": ("xk", "GetKeys", lambda xk: kms_pb2.GetKeysRequest(
        target_identity=ALICE, target_role=INITIATOR, transfer_init=b"x", liid="L1",
        correlation_id="c\x1b[31m")),
    "getkeys-target-long": ("xk", "GetKeys", lambda xk: kms_pb2.GetKeysRequest(
        target_identity="sip:" + LONG + "@x.net", target_role=INITIATOR, transfer_init=b"x",
        liid="L1")),
    "putuser-identity-long": ("admin", "PutUser", lambda xk: kms_pb2.PutUserRequest(
        identity="sip:" + LONG + "@x.net")),
    "putuser-alias-control": ("admin", "PutUser", lambda xk: kms_pb2.PutUserRequest(
        identity="sip:dave@ims.example.net", aliases=["tel:+1555\r\n"])),
    "deleteuser-identity-control": ("admin", "DeleteUser", lambda xk: kms_pb2.DeleteUserRequest(
        identity="sip:alice@ims.example.net\x00")),
    "putwarrant-df2-newline": ("admin", "PutWarrant", lambda xk: kms_pb2.Warrant(
        liid=unique("W"), target_identity=ALICE, valid_from=_stamp(xk.rn.clock.now),
        valid_until=_stamp(xk.rn.clock.now + 60), df2_identities=["df2.li.example.net\nevil"])),
    "putwarrant-liid-long": ("admin", "PutWarrant", lambda xk: kms_pb2.Warrant(
        liid=LONG, target_identity=ALICE, valid_from=_stamp(xk.rn.clock.now),
        valid_until=_stamp(xk.rn.clock.now + 60), df2_identities=[DF2])),
    "putwarrant-target-control": ("admin", "PutWarrant", lambda xk: kms_pb2.Warrant(
        liid=unique("W"), target_identity=ALICE + "\u2028", valid_from=_stamp(xk.rn.clock.now),
        valid_until=_stamp(xk.rn.clock.now + 60), df2_identities=[DF2])),
    "deletewarrant-liid-long": ("admin", "DeleteWarrant", lambda xk: kms_pb2.DeleteWarrantRequest(
        liid=LONG)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(FIELD_CASES))
def test_oversized_and_control_character_fields_are_refused_before_anything_is_stored(
    xk: Xk, watcher: AlarmWatcher, name: str
) -> None:
    service, method, build = FIELD_CASES[name]
    stub = xk.xk() if service == "xk" else xk.admin()
    warrants_before = len(xk.node.store.list_warrants())
    users_before = xk.node.store.count_users()
    records = xk.node.audit.count
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(build(xk), timeout=DEADLINE)
    assert (info.value.code(), error_reason(info.value)) == (INVALID, "INVALID_REQUEST")
    assert watcher.next().reason == "INVALID_REQUEST"
    new = xk.audit_records()[records:]
    assert [r["event"] for r in new] == [
        "KEY_REFUSED" if method == "GetKeys" else "REQUEST_REFUSED"
    ]
    for value in new[0]["fields"].values():
        if isinstance(value, str):
            assert "\n" not in value and len(value) <= MAX_FIELD_BYTES + 8
    assert len(xk.node.store.list_warrants()) == warrants_before
    assert xk.node.store.count_users() == users_before


def test_a_df2_identity_is_stored_and_listed_exactly_as_one_identity(xk: Xk) -> None:
    liid = unique("W")
    now = xk.rn.clock.now
    odd = "urn:agency:df2,with,commas"
    xk.admin().PutWarrant(
        kms_pb2.Warrant(liid=liid, target_identity=ALICE, valid_from=_stamp(now),
                        valid_until=_stamp(now + 60), df2_identities=[odd, DF2]),
        timeout=DEADLINE,
    )  # fmt: skip
    listed = xk.admin().ListWarrants(kms_pb2.ListWarrantsRequest(), timeout=DEADLINE)
    (warrant,) = [w for w in listed.warrants if w.liid == liid]
    assert sorted(warrant.df2_identities) == sorted([odd, DF2])


def test_a_certificate_without_a_role_cannot_fill_the_audit_log(xk: Xk) -> None:
    """A role-less certificate of the LI CA hammering the node: at most the configured records a
    second (the node's clock stands still here), the rest summarised once, every one alarmed."""
    issue(xk.rn.pki, "nobody", [x509.DNSName("nobody.li.example.net")])
    stub = kms_pb2_grpc.AdminServiceStub(xk.channel("li", "nobody"))
    records = xk.node.audit.count
    for _ in range(60):
        with pytest.raises(grpc.RpcError):
            stub.ListWarrants(kms_pb2.ListWarrantsRequest(), timeout=DEADLINE)
    assert xk.node.audit.count - records == 10  # [audit] refused_records_per_second default
    xk.rn.clock.now += 1
    try:
        with pytest.raises(grpc.RpcError):
            stub.ListWarrants(kms_pb2.ListWarrantsRequest(), timeout=DEADLINE)
    finally:
        xk.rn.clock.now -= 1
    summary, last = xk.audit_records()[-2:]
    assert summary["event"] == "AUDIT_SUPPRESSED" and summary["fields"]["suppressed"] == 50
    assert last["event"] == "ROLE_REFUSED"


# --- certificate identities exact ----------------------------------------------------------------


def test_a_uri_san_spelling_a_dns_role_entry_gets_no_role(xk: Xk, ues: Ues) -> None:
    offer = ues.offer(forking=False)
    err = refused(xk, offer.transfer_init, ALICE, INITIATOR, xk.warrant(ALICE), client="uri-df2")
    assert error_reason(err) == "ROLE_NOT_ALLOWED"


def test_a_multi_san_certificate_is_audited_and_alarmed_with_all_its_identities(
    xk: Xk, ues: Ues, watcher: AlarmWatcher
) -> None:
    offer = ues.offer(forking=False)
    liid = xk.warrant(ALICE, df2=("both.li.example.net",))
    xk.get_keys(offer.transfer_init, ALICE, INITIATOR, liid, client="both")
    release = xk.audit_records()[-1]
    assert release["event"] == "KEY_RELEASE"
    assert release["fields"]["caller"] == ["dns:both.li.example.net", "uri:urn:both"]
    refused(xk, b"junk", ALICE, INITIATOR, liid, correlation_id="multi-1", client="both")
    alarm = one_alarm(watcher, "MALFORMED_MESSAGE", "multi-1")
    assert alarm.caller == "dns:both.li.example.net,uri:urn:both"


def test_a_revoked_df2_certificate_is_refused_after_a_reload_without_restart(
    xk: Xk, ues: Ues, watcher: AlarmWatcher
) -> None:
    """The same identity on another certificate is revoked by its fingerprint; the reload (what
    SIGHUP runs: tests/test_cli.py sends the signal to `kmsnode serve`) takes effect at once."""
    pem = (xk.rn.pki / "df2-spare.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    fingerprint = cert.fingerprint(cert.signature_hash_algorithm or _sha256()).hex()
    offer = ues.offer(forking=False)
    liid = xk.warrant(ALICE)
    assert xk.get_keys(offer.transfer_init, ALICE, INITIATOR, liid, client="df2-spare").sessions
    members = xk.node.cfg.roles.members
    try:
        xk.node.roles.reload(RolesConfig(members, revoked_fingerprints=frozenset({fingerprint})))
        err = refused(xk, offer.transfer_init, ALICE, INITIATOR, liid, correlation_id="revoked-1",
                      client="df2-spare")  # fmt: skip
        assert error_reason(err) == "ROLE_NOT_ALLOWED" and "revoked" in (err.details() or "")
        one_alarm(watcher, "ROLE_NOT_ALLOWED", "revoked-1")
        # the other certificate with the same identity still works
        assert xk.get_keys(offer.transfer_init, ALICE, INITIATOR, liid).sessions
    finally:
        xk.node.roles.reload(xk.node.cfg.roles)


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def test_a_revocation_list_signed_by_the_li_ca_revokes_and_one_of_another_ca_is_refused(
    xk: Xk, ues: Ues, watcher: AlarmWatcher, tmp_path: Any
) -> None:
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization

    from firmware.devpki import ca_key
    from firmware.devpki import make_dev_pki as other_pki

    pki = xk.rn.pki
    li_ca = x509.load_pem_x509_certificate((pki / "li-ca.pem").read_bytes())
    spare = x509.load_pem_x509_certificate((pki / "df2-spare.pem").read_bytes())
    now = datetime.datetime.now(datetime.UTC)

    def crl(signer: Any, issuer: x509.Name) -> bytes:
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(spare.serial_number)
            .revocation_date(now)
            .build()
        )
        return (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer)
            .last_update(now)
            .next_update(now + datetime.timedelta(days=1))
            .add_revoked_certificate(revoked)
            .sign(signer, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
        )

    good = tmp_path / "li.crl"
    good.write_bytes(crl(ca_key(pki), li_ca.subject))
    members = xk.node.cfg.roles.members
    offer = ues.offer(forking=False)
    liid = xk.warrant(ALICE)
    try:
        xk.node.roles.reload(RolesConfig(members, crl=good))
        err = refused(xk, offer.transfer_init, ALICE, INITIATOR, liid, client="df2-spare")
        assert error_reason(err) == "ROLE_NOT_ALLOWED"
        watcher.next()
        # a CRL in the LI CA's name but signed by another key: refused, the old roles kept
        other_pki(tmp_path / "other" / "pki")
        forged = tmp_path / "forged.crl"
        forged.write_bytes(crl(ca_key(tmp_path / "other" / "pki"), li_ca.subject))
        with pytest.raises(Exception, match="not signed"):
            xk.node.roles.reload(RolesConfig(members, crl=forged))
        assert error_reason(refused(xk, offer.transfer_init, ALICE, INITIATOR, liid,
                                    client="df2-spare")) == "ROLE_NOT_ALLOWED"  # fmt: skip
    finally:
        xk.node.roles.reload(xk.node.cfg.roles)


def test_no_record_in_the_whole_log_holds_key_material(xk: Xk, ues: Ues) -> None:
    """Every PSK the node was given or generated and every key it released: nowhere in the
    audit log, in hex (either case) or base64."""
    import base64

    generated = (
        xk.admin()
        .PutUser(
            kms_pb2.PutUserRequest(identity=f"sip:{unique('erin')}@ims.example.net"),
            timeout=DEADLINE,
        )
        .psk
    )
    given = os.urandom(32)
    xk.admin().PutUser(
        kms_pb2.PutUserRequest(identity=f"sip:{unique('fred')}@ims.example.net", psk=given),
        timeout=DEADLINE,
    )
    offer = ues.offer(forking=True)
    answer = ues.answer(offer, BOB)
    got = xk.get_keys(offer.transfer_init, BOB, RESPONDER, xk.warrant(BOB), answer.transfer_resp)
    from tests.calls import ALICE_PSK, BOB_PSK
    from tests.xk.conftest import CAROL_PSK

    secrets = [generated, given, ALICE_PSK, BOB_PSK, CAROL_PSK, offer.alice.mpki]
    secrets += [s.session_key for s in got.sessions] + [s.salt for s in got.sessions]
    log = xk.rn.cfg.audit_log.read_bytes()
    for secret in secrets:
        for form in (secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode()):
            assert form.encode() not in log


def test_the_df2_name_of_the_dev_certificate_is_every_san(xk: Xk, watcher: AlarmWatcher) -> None:
    refused(xk, b"junk", ALICE, INITIATOR, unique("L"), correlation_id="name-1")
    assert one_alarm(watcher, "NO_ACTIVE_WARRANT", "name-1").caller == DF2_NAME


def test_the_fingerprint_in_records_is_the_certificates_sha256(xk: Xk) -> None:
    refused(xk, b"junk", ALICE, INITIATOR, unique("L"), correlation_id="fp-1")
    record = xk.audit_records()[-1]
    der = x509.load_pem_x509_certificate((xk.rn.pki / "df2.pem").read_bytes())
    from cryptography.hazmat.primitives.serialization import Encoding

    assert (
        record["fields"]["fingerprint"]
        == hashlib.sha256(der.public_bytes(Encoding.DER)).hexdigest()
    )
