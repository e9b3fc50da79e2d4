"""[policy] require_clock_sync through the real server: while the kernel does not call the clock
synchronised within the skew, health is NOT_SERVING, every RPC but health is refused UNAVAILABLE
with the reason, and a CLOCK_UNSYNCHRONISED alarm is raised; once synchronised, it serves."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from firmware import clocksync
from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
from hsm.softhsm import SoftHsmToken
from hsm.vault import VaultSettings
from tests.api.conftest import RunningNode, start_node
from tests.xk.conftest import AlarmWatcher

pytestmark = pytest.mark.softhsm


class KernelClock:
    def __init__(self) -> None:
        self.state = clocksync.ClockState(True, 0.01)

    def __call__(self) -> clocksync.ClockState:
        return self.state


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> KernelClock:
    fake = KernelClock()
    monkeypatch.setattr(clocksync, "clock_state", fake)
    return fake


@pytest.fixture
def node(
    tmp_path_factory: pytest.TempPathFactory,
    softhsm_token: SoftHsmToken,
    vault_settings: VaultSettings,
    _vault_keys: None,
    kernel: KernelClock,
) -> Iterator[RunningNode]:
    rn = start_node(
        tmp_path_factory.mktemp("clock"),
        softhsm_token,
        vault_settings,
        extra_config="\nrequire_clock_sync = true\n",  # the test config ends in [policy]
    )
    try:
        yield rn
    finally:
        rn.node.stop(1.0)


def test_the_kernels_clock_state_is_readable() -> None:
    state = clocksync.ClockState(True, 0.5)
    assert state.within(60) and not state.within(0.1)
    assert not clocksync.ClockState(False, 0.0).within(60)
    real = clocksync.__dict__["clock_state"]()
    assert real.max_error >= 0


def test_an_unsynchronised_clock_stops_service_until_it_is_synchronised(
    node: RunningNode, kernel: KernelClock
) -> None:
    watcher = AlarmWatcher(node.channel("li", "admin"))
    try:
        kernel.state = clocksync.ClockState(False, 16.0)
        assert not node.node.check_clock()
        alarm = watcher.next()
        assert alarm.reason == "CLOCK_UNSYNCHRONISED" and "not synchronised" in alarm.detail
        with node.channel() as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as info:
                kms_pb2_grpc.TicketServiceStub(ch).Exchange(
                    kms_pb2.MikeyMessage(data=b"x"), timeout=10
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "not synchronised" in (info.value.details() or "")
        kernel.state = clocksync.ClockState(True, 0.2)
        assert node.node.check_clock()
        assert watcher.next().reason == "CLOCK_SYNCHRONISED"
        with node.channel() as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        watcher.close()
