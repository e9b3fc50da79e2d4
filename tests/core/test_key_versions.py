"""Ticket key versions shared by a cluster, at the core (fakes): the store decides which version
protects new tickets; a staged version protects nothing until activated; a version the cluster
uses but this node's HSM lacks is the node's fault (UNAVAILABLE and an alarm), never a refusal
of the UE's ticket."""

from __future__ import annotations

import pytest

from firmware.core.errors import InvalidRequest, KeyVersionUnavailable
from firmware.core.ports import KeyName, KeyRecord, KeyState
from firmware.mikey.codec import Ticket
from firmware.mikey.constants import DataType
from firmware.mikey.message import decode
from tests.calls import BOB
from tests.core.fakes import OPERATOR, RecordingAlarms
from tests.core.world import NOW, World

TPK = KeyName.TICKET_PROTECTION


def _version_of(transfer_init: bytes) -> int:
    from firmware.core.ours import version_from_thdr
    from firmware.mikey.ticket import peek_ticket

    msg = decode(transfer_init)
    _, data = peek_ticket(msg.ticket_bytes())
    assert msg.find(Ticket) is not None
    return version_from_thdr(data.thdr.data)


@pytest.fixture
def world() -> World:
    w = World(alarms=RecordingAlarms())
    w.admin.record_existing()
    w.admin.key_listeners.append(w.core.forget_keys)
    return w


def test_a_staged_version_protects_nothing_until_it_is_activated(world: World) -> None:
    staged = world.admin.rotate(OPERATOR, TPK, staged=True)
    assert staged.state is KeyState.PENDING
    assert _version_of(world.offer(forking=False).transfer_init) == 1
    states = {v.version: v.state for v in world.admin.key_versions(TPK)}
    assert states == {1: KeyState.ACTIVE, 2: KeyState.PENDING}
    world.admin.activate(OPERATOR, TPK, staged.version)
    assert _version_of(world.offer(forking=False).transfer_init) == 2
    states = {v.version: v.state for v in world.admin.key_versions(TPK)}
    assert states == {1: KeyState.DECRYPT_ONLY, 2: KeyState.ACTIVE}


def test_a_rotation_that_is_not_staged_activates_at_once(world: World) -> None:
    world.admin.rotate(OPERATOR, TPK)
    assert _version_of(world.offer(forking=False).transfer_init) == 2


def test_only_a_staged_version_in_this_hsm_can_be_activated(world: World) -> None:
    with pytest.raises(InvalidRequest, match="not a staged"):
        world.admin.activate(OPERATOR, TPK, 1)
    world.store.record_key(KeyRecord(TPK, 7, NOW, None, None, None))  # staged elsewhere
    with pytest.raises(InvalidRequest, match="not in this node's HSM"):
        world.admin.activate(OPERATOR, TPK, 7)


def test_issuing_with_a_version_this_hsm_lacks_is_unavailable_and_alarmed(world: World) -> None:
    """Another node activated v2 before this node's HSM got it."""
    world.store.record_key(KeyRecord(TPK, 2, NOW, None, None, NOW))
    world.store.record_key(KeyRecord(TPK, 1, NOW, NOW, None, NOW))
    world.core.forget_keys()
    for _ in range(3):  # one alarm a minute, not one per request
        with pytest.raises(KeyVersionUnavailable):
            world.offer(forking=False)
    assert world.core.alarms.reasons() == ["KEY_VERSION_UNAVAILABLE"]  # type: ignore[union-attr]


def test_resolving_a_ticket_of_a_version_this_hsm_lacks_is_unavailable(world: World) -> None:
    offer = world.offer(forking=False)
    # the cluster knows v1 (recorded, not destroyed) but this HSM loses it
    world.vault._keys[TPK].pop(1)
    world.vault._keys[TPK][9] = bytes(32)
    with pytest.raises(KeyVersionUnavailable):
        world.answer(offer, BOB)
    assert world.core.alarms.reasons() == ["KEY_VERSION_UNAVAILABLE"]  # type: ignore[union-attr]


def test_a_ticket_of_a_version_nobody_knows_is_refused_as_not_ours(world: World) -> None:
    offer = world.offer(forking=False)
    world.vault._keys[TPK].pop(1)
    world.vault._keys[TPK][9] = bytes(32)
    world.store.keys.pop((TPK, 1))
    from firmware.mikey.exchange import Responder
    from tests.calls import BOB_PSK, KMS, t_at

    bob = Responder(BOB.encode(), BOB_PSK, KMS)
    bob.receive_transfer_init(offer.transfer_init)
    answer = decode(world.core.exchange(bob.resolve_init(csb_id=1, t=t_at(NOW), rand_r=bytes(32))))
    assert answer.header.data_type == DataType.ERROR
