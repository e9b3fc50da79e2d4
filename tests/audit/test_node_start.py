"""The start rules through a real node (SoftHSM audit key, SQLite store, real TLS listeners):
a torn last line is cut and recorded; a tail cut while the node was stopped, with or without an
older genuine head put back, a deleted log and a forged or unsigned head each stop the start with
one line; `kmsnode audit accept-gap` lets the node start again with the gap reported, which
VerifyAudit and `kmsnode audit verify` then show as acknowledged; and `kmsnode serve` on a
refused log prints one line and exits 1."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from firmware import cli
from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from firmware.audit.chain import canonical
from firmware.audit.recovery import HINT
from firmware.config import Config
from firmware.core.errors import AuditIntegrityError
from firmware.store.sqlite import SqliteStore
from hsm.softhsm import SoftHsmToken
from hsm.vault import Pkcs11Vault, VaultSettings
from tests.api import conftest as api_conftest
from tests.api.conftest import RunningNode, start_node
from tests.calls import BOB
from tests.xk.conftest import AlarmWatcher

pytestmark = pytest.mark.softhsm

DEADLINE = 30.0
DF2 = "df2.li.example.net"
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) [\w.]+: ")


class Nodes:
    """Starts of one node directory (the same log, store and token each time)."""

    def __init__(self, directory: Path, token: SoftHsmToken, settings: VaultSettings) -> None:
        self.directory, self.token, self.settings = directory, token, settings
        self.running: RunningNode | None = None

    def start(self) -> RunningNode:
        self.running = start_node(self.directory, self.token, self.settings)
        return self.running

    def stop(self) -> Config:
        assert self.running is not None
        self.running.node.stop(1.0)
        cfg, self.running = self.running.cfg, None
        return cfg

    def refused(self) -> str:
        """The one line a start that must not happen raises. start_node's vault and store are
        closed here (a vault left logged in would let later tests log in with any PIN)."""
        vaults: list[Pkcs11Vault] = []
        stores: list[SqliteStore] = []

        def vault(settings: VaultSettings, monitor: bool = True) -> Pkcs11Vault:
            vaults.append(Pkcs11Vault.open(settings, monitor=monitor))
            return vaults[-1]

        def store(path: Path) -> SqliteStore:
            stores.append(SqliteStore(path))
            return stores[-1]

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(api_conftest, "Pkcs11Vault", SimpleNamespace(open=vault))
            patch.setattr(api_conftest, "SqliteStore", store)
            try:
                with pytest.raises(AuditIntegrityError) as info:
                    self.start()
            finally:
                for opened in (*vaults, *stores):
                    opened.close()
        message = str(info.value)
        assert "\n" not in message and message.endswith(HINT), message
        return message


@pytest.fixture
def nodes(
    tmp_path: Path, softhsm_token: SoftHsmToken, vault_settings: VaultSettings, _vault_keys: None
) -> Iterator[Nodes]:
    n = Nodes(tmp_path, softhsm_token, vault_settings)
    try:
        yield n
    finally:
        if n.running is not None:
            n.stop()


def _audited_changes(rn: RunningNode, n: int) -> None:
    """n warrants put through AdminService: each is audited before it is made."""
    with rn.channel("li", "admin") as channel:
        stub = kms_pb2_grpc.AdminServiceStub(channel)
        for i in range(n):
            warrant = kms_pb2.Warrant(liid=f"LIID-{i}", target_identity=BOB, df2_identities=[DF2])
            warrant.valid_from.FromSeconds(int(rn.clock.now) - 60)
            warrant.valid_until.FromSeconds(int(rn.clock.now) + 3600)
            stub.PutWarrant(warrant, timeout=DEADLINE)


def _with_records(nodes: Nodes, n: int = 6) -> Config:
    """The node started, n audited changes made, stopped: NODE_STARTED + n records."""
    _audited_changes(nodes.start(), n)
    return nodes.stop()


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _cut(cfg: Config, records: int) -> int:
    """Cut the last `records` records off the log; returns how many are left."""
    lines = _lines(cfg.audit_log)[:-records]
    cfg.audit_log.write_bytes(b"".join(lines))
    return len(lines)


def _head(cfg: Config) -> Path:
    return cfg.audit_log.with_name(cfg.audit_log.name + ".head")


def _verify_audit(rn: RunningNode) -> Any:
    with rn.channel("li", "admin") as channel:
        return kms_pb2_grpc.AdminServiceStub(channel).VerifyAudit(
            kms_pb2.VerifyAuditRequest(), timeout=DEADLINE
        )


def test_a_node_cuts_a_torn_last_line_at_start_and_records_the_bytes_cut(nodes: Nodes) -> None:
    cfg = _with_records(nodes)
    n = len(_lines(cfg.audit_log))
    with open(cfg.audit_log, "ab") as handle:
        handle.write(b'{"event":"ADMIN_PUT_WARRANT","fields":{"liid":"LIID-')
    rn = nodes.start()
    assert rn.node.audit.start_findings.torn_bytes == 52
    assert rn.node.audit.start_findings.accepted_gaps == ()
    records = [json.loads(line) for line in _lines(cfg.audit_log)]
    assert [r["event"] for r in records[n : n + 2]] == ["AUDIT_RECOVERED", "NODE_STARTED"]
    assert records[n]["fields"] == {"torn_bytes": 52}
    answer = _verify_audit(rn)
    assert (answer.intact, answer.first_bad_record) == (True, 0)
    assert answer.records == len(_lines(cfg.audit_log))


def test_a_node_refuses_to_start_on_a_tail_cut_while_it_was_stopped(nodes: Nodes) -> None:
    cfg = _with_records(nodes)
    n = _cut(cfg, 3)
    message = nodes.refused()
    assert f"ends at record {n}" in message and "3 record(s) missing" in message


def test_a_node_refuses_to_start_on_a_tail_cut_under_an_older_genuine_head_put_back(
    nodes: Nodes,
) -> None:
    cfg = _with_records(nodes, 3)
    old_head, old_size = _head(cfg).read_bytes(), cfg.audit_log.stat().st_size
    old = len(_lines(cfg.audit_log))
    _audited_changes(nodes.start(), 3)
    nodes.stop()
    n = len(_lines(cfg.audit_log))
    with open(cfg.audit_log, "r+b") as handle:
        handle.truncate(old_size)
    _head(cfg).write_bytes(old_head)
    message = nodes.refused()
    assert f"the state store's head counts {n}" in message
    assert f"{n - old} record(s) missing" in message


def test_a_node_refuses_to_start_when_its_log_and_head_file_were_deleted(nodes: Nodes) -> None:
    cfg = _with_records(nodes)
    n = len(_lines(cfg.audit_log))
    cfg.audit_log.unlink()
    _head(cfg).unlink()
    message = nodes.refused()
    assert "is missing" in message and f"{n} record(s) missing" in message


@pytest.mark.parametrize("kind", ["forged", "unsigned"])
def test_a_node_refuses_to_start_on_a_forged_or_unsigned_head_after_a_tail_cut(
    nodes: Nodes, kind: str
) -> None:
    cfg = _with_records(nodes)
    n = _cut(cfg, 3)
    head = {"count": n, "mac": json.loads(_lines(cfg.audit_log)[-1])["mac"]}
    if kind == "forged":
        head["sig"] = os.urandom(32).hex()
    _head(cfg).write_bytes(canonical(head))
    assert "does not verify" in nodes.refused()


def _kmsnode(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_accept_gap_lets_the_node_start_with_the_gap_reported_and_verify_audit_intact(
    nodes: Nodes, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _with_records(nodes)
    n = _cut(cfg, 3)
    nodes.refused()
    code, out, err = _kmsnode(capsys, "audit", "verify", "--config", str(cfg.path))
    assert code == 1 and "NOT intact" in out
    code, out, err = _kmsnode(
        capsys, "audit", "accept-gap", "--config", str(cfg.path), "--reason", "disk swapped"
    )
    assert code == 0, err
    missing = f"records {n + 1}..{n + 3} (3 missing)"
    assert missing in out and f"by record {n + 4}: disk swapped" in out

    rn = nodes.start()
    (gap,) = rn.node.audit.start_findings.accepted_gaps
    assert (gap.first, gap.last, gap.record, gap.reason) == (n + 1, n + 3, n + 4, "disk swapped")
    # TAMPER at start reaches the watchers that subscribe after it (nobody could watch before)
    watcher = AlarmWatcher(rn.channel("li", "df2"))
    try:
        alarm = watcher.next()
        assert alarm.reason == "TAMPER" and "disk swapped" in alarm.detail
        assert f"records {n + 1}..{n + 3}" in alarm.detail
    finally:
        watcher.close()
    answer = _verify_audit(rn)
    records = len(_lines(cfg.audit_log))
    assert (answer.intact, answer.records, answer.first_bad_record) == (True, records, 0)
    code, out, err = _kmsnode(capsys, "audit", "verify", "--config", str(cfg.path))
    assert code == 0, out + err
    assert f"acknowledged gap: {missing}" in out and "disk swapped" in out
    assert f"audit log intact: {records} records" in out
    nodes.stop()
    assert nodes.start().node.audit.start_findings.accepted_gaps == ()  # reported once


def test_accept_gap_refuses_while_the_node_holds_its_log(
    nodes: Nodes, capsys: pytest.CaptureFixture[str]
) -> None:
    rn = nodes.start()
    code, out, err = _kmsnode(
        capsys, "audit", "accept-gap", "--config", str(rn.cfg.path), "--reason", "r"
    )
    assert code == 1 and "in use by another process" in err and not out


def test_accept_gap_refuses_while_the_runtime_file_names_a_live_node(
    nodes: Nodes, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _with_records(nodes)
    _cut(cfg, 3)
    before = cfg.audit_log.read_bytes()
    cfg.runtime_file.write_text(json.dumps({"pid": os.getpid()}))  # a live process
    code, _out, err = _kmsnode(
        capsys, "audit", "accept-gap", "--config", str(cfg.path), "--reason", "r"
    )
    assert code == 1 and "the node is running" in err
    assert cfg.audit_log.read_bytes() == before


# --- `kmsnode serve` in a subprocess ----------------------------------------------------------


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firmware.cli", *args],
        capture_output=True, text=True, check=False, env=_env(), timeout=120,
    )  # fmt: skip


def _serve_and_stop(config: Path) -> None:
    """`kmsnode serve` until it listens, then SIGTERM: it must exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("UE listener on ")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=DEADLINE)


def test_serve_on_a_refused_log_prints_one_line_and_exits_1_until_the_gap_is_accepted(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "node"
    made = _run("dev-init", str(directory), "--ue-port", "0", "--li-port", "0")
    assert made.returncode == 0, made.stderr
    config = directory / "kmsnode.toml"
    for _ in range(2):
        _serve_and_stop(config)  # one NODE_STARTED record each
    log = directory / "audit.log"
    log.write_bytes(b"".join(_lines(log)[:1]))

    refused = _run("serve", "--config", str(config))  # exits (the timeout would raise)
    assert refused.returncode == 1 and not refused.stdout
    assert "Traceback" not in refused.stderr, refused.stderr
    # besides the start's INFO log records, one line: the error
    (error,) = [line for line in refused.stderr.splitlines() if not LOG_RECORD.match(line)]
    assert error.startswith("kmsnode: the audit log ")
    assert "1 record(s) missing" in error and error.endswith(HINT)

    accepted = _run("audit", "accept-gap", "--config", str(config), "--reason", "cut in test")
    assert accepted.returncode == 0, accepted.stderr
    _serve_and_stop(config)
    verified = _run("audit", "verify", "--config", str(config))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "acknowledged gap: records 2..2 (1 missing)" in verified.stdout
