"""The audit trail of real releases and refusals, keyed by the SoftHSM audit key: a flipped byte,
a deleted record, two swapped records and a cut tail are each named by verify (and by the
VerifyAudit RPC) as the first bad record; and a node killed with SIGKILL in the middle of a burst
of releases restarts with an intact log that holds every release a client saw acknowledged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.audit.log import verify
from firmware.config import load
from hsm.softhsm import SoftHsmToken
from hsm.vault import VaultSettings
from tests.api.conftest import exchange_via
from tests.calls import ALICE, ALICE_PSK, BOB, BOB_PSK, full_call
from tests.xk.conftest import (
    DEADLINE,
    DF2,
    INITIATOR,
    RESPONDER,
    Xk,
    start_xk_node,
    unique,
)

pytestmark = pytest.mark.softhsm

RECORDS = 30


@pytest.fixture
def audited(
    tmp_path: Path, softhsm_token: SoftHsmToken, vault_settings: VaultSettings, _vault_keys: None
) -> Iterator[Xk]:
    """A node of its own (its log gets tampered with) holding RECORDS records of releases and
    refusals."""
    rn = start_xk_node(tmp_path, softhsm_token, vault_settings)
    xk = Xk(rn)
    try:
        call = xk.call(forking=False)
        liid = xk.warrant(BOB)
        while xk.node.audit.count < RECORDS:
            if xk.node.audit.count % 3:
                xk.get_keys(call.transfer_init, BOB, RESPONDER, liid, call.transfer_resp)
            else:
                with pytest.raises(grpc.RpcError):
                    xk.get_keys(call.transfer_init, BOB, INITIATOR, liid)
        yield xk
    finally:
        xk.close()
        rn.node.stop(1.0)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _copy(xk: Xk, tmp_path: Path, lines: list[bytes], name: str) -> Path:
    """The node's log with `lines` as content, beside a copy of its signed head."""
    log = xk.rn.cfg.audit_log
    path = tmp_path / name / log.name
    path.parent.mkdir()
    path.write_bytes(b"".join(lines))
    head = log.with_name(log.name + ".head")
    path.with_name(head.name).write_bytes(head.read_bytes())
    return path


def test_the_untouched_log_verifies(audited: Xk) -> None:
    result = verify(audited.rn.cfg.audit_log, audited.node.vault.audit_hmac)
    assert (result.intact, result.records, result.first_bad) == (True, RECORDS, 0)
    answer = audited.admin().VerifyAudit(kms_pb2.VerifyAuditRequest(), timeout=DEADLINE)
    assert (answer.intact, answer.records, answer.first_bad_record) == (True, RECORDS, 0)


def test_a_flipped_byte_anywhere_names_its_record(audited: Xk, tmp_path: Path) -> None:
    lines = _lines(audited.rn.cfg.audit_log)
    mac = audited.node.vault.audit_hmac
    seen = iter(range(10**6))

    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(st.integers(0, RECORDS - 1), st.data())
    def flipped(index: int, data: st.DataObject) -> None:
        line = bytearray(lines[index])
        offset = data.draw(st.integers(0, len(line) - 2), label="offset")  # not the newline
        bit = data.draw(st.integers(0, 7), label="bit")
        line[offset] ^= 1 << bit
        changed = [*lines[:index], bytes(line), *lines[index + 1 :]]
        result = verify(_copy(audited, tmp_path, changed, f"flip{next(seen)}"), mac)
        assert not result.intact
        assert result.first_bad == index + 1

    flipped()


@pytest.mark.parametrize("field", [b'"mac":"', b'"prev":"'])
def test_a_hex_digit_of_another_case_is_a_changed_record(
    audited: Xk, tmp_path: Path, field: bytes
) -> None:
    """It parses to the same bytes, but it is not what was written (found by the test above)."""
    lines = _lines(audited.rn.cfg.audit_log)
    line = bytearray(lines[7])
    start = line.index(field) + len(field)
    letter = next(i for i in range(start, start + 64) if chr(line[i]) in "abcdef")
    line[letter] ^= 0x20  # 'a' -> 'A'
    lines[7] = bytes(line)
    result = verify(_copy(audited, tmp_path, lines, "case"), audited.node.vault.audit_hmac)
    assert (result.intact, result.first_bad) == (False, 8)


@pytest.mark.parametrize("index", [0, 13, RECORDS - 1])
def test_a_deleted_record_is_named(audited: Xk, tmp_path: Path, index: int) -> None:
    lines = _lines(audited.rn.cfg.audit_log)
    del lines[index]
    result = verify(_copy(audited, tmp_path, lines, "del"), audited.node.vault.audit_hmac)
    assert not result.intact
    assert result.first_bad == index + 1


@pytest.mark.parametrize("first", [0, 13, RECORDS - 2])
def test_two_swapped_records_name_the_first_of_them(
    audited: Xk, tmp_path: Path, first: int
) -> None:
    lines = _lines(audited.rn.cfg.audit_log)
    lines[first], lines[first + 1] = lines[first + 1], lines[first]
    result = verify(_copy(audited, tmp_path, lines, "swap"), audited.node.vault.audit_hmac)
    assert not result.intact
    assert result.first_bad == first + 1


@pytest.mark.parametrize("cut", [1, 7, RECORDS])
def test_a_cut_tail_names_the_first_missing_record(audited: Xk, tmp_path: Path, cut: int) -> None:
    lines = _lines(audited.rn.cfg.audit_log)[: RECORDS - cut]
    result = verify(_copy(audited, tmp_path, lines, "cut"), audited.node.vault.audit_hmac)
    assert not result.intact
    assert result.first_bad == RECORDS - cut + 1


def test_verify_audit_over_the_li_listener_names_a_record_changed_in_place(audited: Xk) -> None:
    log = audited.rn.cfg.audit_log
    lines = _lines(log)
    lines[11] = lines[11].replace(b'"RESPONDER"', b'"INITIATOR"')
    log.write_bytes(b"".join(lines))
    answer = audited.admin().VerifyAudit(kms_pb2.VerifyAuditRequest(), timeout=DEADLINE)
    assert (answer.intact, answer.records, answer.first_bad_record) == (False, RECORDS, 12)


def test_verify_audit_during_a_burst_of_releases_finds_the_log_intact_every_time(
    audited: Xk,
) -> None:
    """The node appends while it verifies: no half-written batch, no head newer than the
    records read, is taken for tampering."""
    call = audited.call(forking=False)
    liid = audited.warrant(BOB)
    stop = threading.Event()

    def burst() -> int:
        n = 0
        while not stop.is_set():
            audited.get_keys(call.transfer_init, BOB, RESPONDER, liid, call.transfer_resp)
            n += 1
        return n

    answers = []
    with ThreadPoolExecutor(3) as pool:
        running = [pool.submit(burst) for _ in range(3)]
        try:
            start = audited.node.audit.count
            while (audited.node.audit.count < start + 60 or len(answers) < 30) and not any(
                f.done()
                for f in running  # a client that failed ends the loop
            ):
                answers.append(
                    audited.admin().VerifyAudit(kms_pb2.VerifyAuditRequest(), timeout=DEADLINE)
                )
        finally:
            stop.set()
        released = sum(f.result(timeout=DEADLINE) for f in running)
    assert released >= 60
    assert [(a.intact, a.first_bad_record) for a in answers] == [(True, 0)] * len(answers)
    assert [a.records for a in answers] == sorted(a.records for a in answers)


def test_a_tail_cut_on_a_running_node_is_found_though_an_older_head_was_put_back(
    audited: Xk,
) -> None:
    log = audited.rn.cfg.audit_log
    head = log.with_name(log.name + ".head")
    old_head, kept = head.read_bytes(), _lines(log)
    call = audited.call(forking=False)
    liid = audited.warrant(BOB)
    for _ in range(5):
        audited.get_keys(call.transfer_init, BOB, RESPONDER, liid, call.transfer_resp)
    log.write_bytes(b"".join(kept))  # the five releases cut off ...
    head.write_bytes(old_head)  # ... and the genuine head of that time put back
    answer = audited.admin().VerifyAudit(kms_pb2.VerifyAuditRequest(), timeout=DEADLINE)
    assert (answer.intact, answer.records, answer.first_bad_record) == (False, RECORDS, RECORDS + 1)


# --- kill -9 during a burst of releases ---------------------------------------------------------


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}


def _kmsnode(*args: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "firmware.cli", *args],
        capture_output=True, text=True, check=False, env=_env(), timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


class Served:
    """`kmsnode serve` in a subprocess; its listener ports from its first two lines."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "firmware.cli", "serve", "--config",
             str(directory / "kmsnode.toml")],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(),
        )  # fmt: skip
        assert self.proc.stdout is not None
        ue, li = self.proc.stdout.readline(), self.proc.stdout.readline()
        assert ue.startswith("UE listener on ") and li.startswith("LI listener on "), (ue, li)
        self.ue_port, self.li_port = int(ue.rsplit(":", 1)[1]), int(li.rsplit(":", 1)[1])

    def channel(self, listener: str, client: str | None = None) -> grpc.Channel:
        pki = self.directory / "pki"
        ca = (pki / "ca.pem").read_bytes()
        creds = (
            grpc.ssl_channel_credentials(ca)
            if client is None
            else grpc.ssl_channel_credentials(
                ca, (pki / f"{client}.key").read_bytes(), (pki / f"{client}.pem").read_bytes()
            )
        )
        port = self.ue_port if listener == "ue" else self.li_port
        return grpc.secure_channel(f"localhost:{port}", creds)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE)


def _stamp(unix: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromSeconds(int(unix))
    return stamp


KILL_AFTER = 150  # acknowledged releases before the SIGKILL
BURST_CLIENTS = 6


def test_sigkill_during_a_burst_of_releases_loses_no_acknowledged_release(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "node"
    _kmsnode("dev-init", str(directory), "--ue-port", "0", "--li-port", "0", "--metrics-port", "0")
    node = Served(directory)
    try:
        with node.channel("li", "admin") as admin_ch:
            admin = kms_pb2_grpc.AdminServiceStub(admin_ch)
            for identity, psk in ((ALICE, ALICE_PSK), (BOB, BOB_PSK)):
                admin.PutUser(kms_pb2.PutUserRequest(identity=identity, psk=psk), timeout=DEADLINE)
            liid = unique("LIID")
            now = time.time()
            admin.PutWarrant(
                kms_pb2.Warrant(
                    liid=liid, target_identity=BOB, valid_from=_stamp(now - 60),
                    valid_until=_stamp(now + 3600), df2_identities=[DF2],
                ),
                timeout=DEADLINE,
            )  # fmt: skip
        with node.channel("ue") as ue_ch:
            exchange = exchange_via(kms_pb2_grpc.TicketServiceStub(ue_ch))
            calls = [full_call(exchange, time.time()) for _ in range(8)]

        acknowledged: list[str] = []
        lock = threading.Lock()
        enough = threading.Event()

        def burst(client: int) -> int:
            """GetKeys until the node is gone; returns how many were refused by the kill."""
            with node.channel("li", "df2") as ch:
                stub = kms_pb2_grpc.XkServiceStub(ch)
                for i in range(10**6):
                    call = calls[(client + i) % len(calls)]
                    corr = f"burst-{client}-{i}"
                    request = kms_pb2.GetKeysRequest(
                        target_identity=BOB, target_role=RESPONDER,
                        transfer_init=call.transfer_init, transfer_resp=call.transfer_resp,
                        liid=liid, correlation_id=corr,
                    )  # fmt: skip
                    try:
                        answer = stub.GetKeys(request, timeout=DEADLINE)
                    except grpc.RpcError as err:
                        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                        return i
                    assert answer.sessions[0].session_key == call.bob_keys[0].tek
                    with lock:
                        acknowledged.append(corr)
                        if len(acknowledged) >= KILL_AFTER:
                            enough.set()
            raise AssertionError("unreachable")

        with ThreadPoolExecutor(BURST_CLIENTS) as pool:
            running = [pool.submit(burst, c) for c in range(BURST_CLIENTS)]
            assert enough.wait(timeout=120), "the burst did not get going"
            node.proc.send_signal(signal.SIGKILL)
            assert node.proc.wait(timeout=DEADLINE) == -signal.SIGKILL
            for future in running:
                future.result(timeout=120)
    finally:
        node.stop()

    restarted = Served(directory)
    try:
        with restarted.channel("li", "admin") as ch:
            answer = kms_pb2_grpc.AdminServiceStub(ch).VerifyAudit(
                kms_pb2.VerifyAuditRequest(), timeout=DEADLINE
            )
        assert answer.intact, answer
        log = load(directory / "kmsnode.toml").audit_log.read_bytes().splitlines()
        released = {
            r["fields"]["correlation_id"]
            for r in map(json.loads, log)
            if r["event"] == "KEY_RELEASE"
        }
        assert answer.records == len(log)
        assert len(acknowledged) >= KILL_AFTER
        assert set(acknowledged) <= released
        restarted.proc.send_signal(signal.SIGTERM)
        assert restarted.proc.wait(timeout=60) == 0
    finally:
        restarted.stop()
