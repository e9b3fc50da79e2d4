"""A full disk under the audit log while the HSM is fine, through the real server: releases and
admin changes are refused and nothing is acknowledged (fail closed), the node stays up, alarms
AUDIT_UNAVAILABLE once, and serves again as soon as the disk has room (AUDIT_RESTORED)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from firmware.api.proto.kms.v1 import kms_pb2
from hsm.softhsm import SoftHsmToken
from hsm.vault import VaultSettings
from tests.audit.diskfull import SmallDisk
from tests.xk.conftest import (
    ALICE,
    DEADLINE,
    DF2,
    INITIATOR,
    AlarmWatcher,
    Xk,
    error_reason,
    start_xk_node,
    unique,
)

pytestmark = pytest.mark.softhsm


@pytest.fixture(scope="module")
def disk_node(
    tmp_path_factory: pytest.TempPathFactory,
    softhsm_token: SoftHsmToken,
    vault_settings: VaultSettings,
    _vault_keys: None,
) -> Iterator[tuple[Xk, SmallDisk]]:
    directory = tmp_path_factory.mktemp("fulldisk")
    with SmallDisk(directory / "disk", size=256 * 1024) as disk:
        data = directory / "data"
        data.mkdir()
        (data / "audit.log").symlink_to(disk.path / "audit.log")  # only the log is on the disk
        rn = start_xk_node(directory, softhsm_token, vault_settings)
        client = Xk(rn)
        try:
            yield client, disk
        finally:
            client.close()
            rn.node.stop(1.0)


def _stamp(unix: float) -> Any:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromSeconds(int(unix))
    return stamp


def test_a_full_disk_refuses_releases_and_admin_changes_and_the_node_serves_again_after(
    disk_node: tuple[Xk, SmallDisk],
) -> None:
    xk, disk = disk_node
    watcher = AlarmWatcher(xk.channel("li", "admin"))
    try:
        call = xk.call(forking=False)
        liid = xk.warrant(ALICE)
        disk.fill()
        # the log's last page may still hold a few records: release until it is full (bounded)
        for _ in range(64):
            corr = unique("full")
            acknowledged = xk.node.audit.seq
            try:
                xk.get_keys(call.transfer_init, ALICE, INITIATOR, liid, correlation_id=corr)
            except grpc.RpcError as err:
                refused = err
                break
        else:
            raise AssertionError("the disk never filled")
        assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(refused) == "AUDIT_UNAVAILABLE"
        for key in call.alice_keys:  # nothing released in what the DF2 is told
            assert key.tek.hex() not in (refused.details() or "")
        node_alarm = watcher.next()
        assert node_alarm.reason == "AUDIT_UNAVAILABLE" and not node_alarm.liid
        refusal = watcher.next()
        assert (refusal.reason, refusal.correlation_id) == ("AUDIT_UNAVAILABLE", corr)
        # an admin change is refused before it is applied (audit before acting)
        now = xk.rn.clock.now
        new_liid = unique("W")
        with pytest.raises(grpc.RpcError) as info:
            xk.admin().PutWarrant(
                kms_pb2.Warrant(liid=new_liid, target_identity=ALICE, valid_from=_stamp(now),
                                valid_until=_stamp(now + 60), df2_identities=[DF2]),
                timeout=DEADLINE,
            )  # fmt: skip
        assert error_reason(info.value) == "AUDIT_UNAVAILABLE"
        assert watcher.next().reason == "AUDIT_UNAVAILABLE"  # the refused change's own alarm
        assert new_liid not in {w.liid for w in xk.node.store.list_warrants()}
        assert xk.node.audit.seq == acknowledged  # nothing acknowledged while the disk is full
        # room again: the very next release is served, the node says so once
        disk.free()
        answer = xk.get_keys(call.transfer_init, ALICE, INITIATOR, liid)
        assert [s.session_key for s in answer.sessions] == [k.tek for k in call.alice_keys]
        assert watcher.next().reason == "AUDIT_RESTORED"
        verified = xk.admin().VerifyAudit(kms_pb2.VerifyAuditRequest(), timeout=DEADLINE)
        assert verified.intact
    finally:
        watcher.close()
