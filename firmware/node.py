"""The running node: the composition that `kmsnode serve` starts (and tests start in-process).

Rules:
- This module (with cli.py) is the composition root: the only place that wires api, hsm and store.
- Health follows the HSM: NOT_SERVING on every listener while the vault is unavailable.
- Stop: listeners stop accepting, in-flight RPCs get `grace` seconds, then state is closed.
- `clock` is injectable so tests can move time (ticket expiry, key destruction) through the
  real server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware.api import server as api_server
from firmware.api.li import AdminServicer, Guard, XkServicer
from firmware.api.metrics import InstrumentedVault, Metrics, MetricsInterceptor
from firmware.api.proto.kms.v1 import kms_pb2_grpc
from firmware.api.ticket import TicketServicer
from firmware.audit.alarms import AlarmBus
from firmware.audit.log import AuditLog
from firmware.config import Config
from firmware.core.admin import Admin
from firmware.core.errors import KmsError
from firmware.core.freshness import ReplayCache
from firmware.core.tickets import TicketCore, TicketSettings
from firmware.core.xk import KeyRelease

log = logging.getLogger("kmsnode.node")


def _start_hotplug(match: dict[str, str], vault: Any) -> Any:
    """udev watcher for the HSM device (config [hsm.device]: SUBSYSTEM, DEVTYPE and properties
    such as ID_VENDOR_ID / ID_MODEL_ID). Its events reach the vault, whose availability listener
    raises the alarms (so one event is one alarm)."""
    from hsm.hotplug import HotplugWatcher, UdevMatch

    props = dict(match)
    subsystem = props.pop("SUBSYSTEM", "usb")
    device_type = props.pop("DEVTYPE", None)
    watcher = HotplugWatcher(UdevMatch(subsystem, props, device_type), vault)
    watcher.start()
    return watcher


def _read(path: Path) -> bytes:
    return path.read_bytes()


@dataclass
class Node:
    cfg: Config
    vault: Any
    store: Any
    admin: Admin
    tickets: TicketCore
    ue: api_server.Listener
    li: api_server.Listener
    clock: Callable[[], float]
    metrics: Metrics
    alarms: AlarmBus
    audit: AuditLog
    metrics_server: Any = None
    hotplug: Any = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _hsm_lost_at: float | None = None

    @property
    def ue_port(self) -> int:
        return self.ue.port

    @property
    def li_port(self) -> int:
        return self.li.port

    @classmethod
    def start(
        cls,
        cfg: Config,
        vault: Any = None,
        store: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> Node:
        from firmware import cli  # composition helpers (open_vault, open_store)

        raw_vault = vault if vault is not None else cli.open_vault(cfg)
        store = store if store is not None else cli.open_store(cfg)
        metrics = Metrics()
        vault = InstrumentedVault(raw_vault, metrics)
        alarms = AlarmBus(clock, lambda reason: metrics.alarms.labels(reason).inc())
        cfg.audit_log.parent.mkdir(parents=True, exist_ok=True)
        audit = AuditLog(
            cfg.audit_log, vault.audit_hmac, metrics.audit_records.inc, head_store=store
        )
        admin = Admin(vault, store, clock, cfg.policy.max_ticket_lifetime, cfg.policy.clock_skew)
        admin.record_existing()
        replay = ReplayCache(cfg.policy.clock_skew, clock(), cfg.policy.replay_cache_capacity)
        tickets = TicketCore(
            vault,
            store,
            replay,
            TicketSettings(
                kms_identity=cfg.kms_identity,
                clock_skew=cfg.policy.clock_skew,
                ticket_lifetime=cfg.policy.ticket_lifetime,
                max_ticket_lifetime=cfg.policy.max_ticket_lifetime,
                key_forking=cfg.policy.key_forking,
            ),
            clock,
        )
        ue_creds = api_server.server_credentials(
            _read(cfg.ue_listener.cert),
            _read(cfg.ue_listener.key),
            _read(cfg.ue_listener.client_ca) if cfg.ue_listener.client_ca else None,
            require_client_auth=False,
        )
        ue = api_server.make_listener(
            "ue",
            cfg.ue_listener.address,
            ue_creds,
            [
                (
                    kms_pb2_grpc.add_TicketServiceServicer_to_server,
                    TicketServicer(tickets),
                    api_server.service_name("TicketService"),
                )
            ],
            cfg.workers,
            interceptors=[MetricsInterceptor(metrics)],
        )
        assert cfg.li_listener.client_ca is not None
        li_creds = api_server.server_credentials(
            _read(cfg.li_listener.cert),
            _read(cfg.li_listener.key),
            _read(cfg.li_listener.client_ca),
            require_client_auth=True,
        )
        guard = Guard(cfg.roles, alarms, audit, clock)
        release = KeyRelease(
            vault,
            store,
            audit,
            alarms,
            cfg.kms_identity,
            clock,
        )
        li = api_server.make_listener(
            "li",
            cfg.li_listener.address,
            li_creds,
            [
                (
                    kms_pb2_grpc.add_XkServiceServicer_to_server,
                    XkServicer(release, guard),
                    api_server.service_name("XkService"),
                ),
                (
                    kms_pb2_grpc.add_AdminServiceServicer_to_server,
                    AdminServicer(admin, guard, alarms, cfg.audit_log, vault.audit_hmac),
                    api_server.service_name("AdminService"),
                ),
            ],
            cfg.workers + 8,  # WatchAlarms streams hold a worker each
            interceptors=[api_server.TlsPolicyInterceptor(), MetricsInterceptor(metrics)],
        )
        node = cls(cfg, vault, store, admin, tickets, ue, li, clock, metrics, alarms, audit)
        raw_vault.add_listener(node._on_hsm)
        ue.server.start()
        li.server.start()
        serving = bool(vault.available())
        metrics.hsm_available.set(1 if serving else 0)
        ue.set_serving(serving)
        li.set_serving(serving)
        if cfg.metrics_address:
            node.metrics_server = metrics.serve(cfg.metrics_address)
        if cfg.hsm.device_match:
            node.hotplug = _start_hotplug(cfg.hsm.device_match, raw_vault)
        threading.Thread(target=node._sweeper, name="key-sweeper", daemon=True).start()
        return node

    def _on_hsm(self, available: bool, reason: str) -> None:
        """HSM removal/return: health, metric, alarm now; audit records once the HSM (which
        keys the audit log) is back, so both events are in the log."""
        log.warning("HSM %s: %s", "available" if available else "UNAVAILABLE", reason)
        self.ue.set_serving(available)
        self.li.set_serving(available)
        self.metrics.hsm_available.set(1 if available else 0)
        now = self.clock()
        self.alarms.raise_alarm(
            "HSM_RESTORED" if available else "HSM_REMOVED", "hsm", "", "", reason
        )
        if not available:
            self._hsm_lost_at = now
            return
        lost, self._hsm_lost_at = self._hsm_lost_at, None

        def record() -> None:
            try:
                if lost is not None:
                    self.audit.append(lost, "HSM_REMOVED", {})
                self.audit.append(now, "HSM_RESTORED", {"reason": reason})
            except KmsError:
                log.error("HSM events could not be written to the audit log")

        threading.Thread(target=record, name="hsm-audit", daemon=True).start()

    def _sweeper(self) -> None:
        """Destroy retired ticket key versions once their tickets have expired (hourly)."""
        while not self._stop.wait(3600.0):
            self.sweep()

    def sweep(self) -> list[int]:
        try:
            return self.admin.sweep()
        except Exception:  # the sweeper must never die; the next round retries
            log.exception("key sweep failed")
            return []

    def stop(self, grace: float) -> None:
        self._stop.set()
        self.ue.set_serving(False)
        self.li.set_serving(False)
        ue_done = self.ue.server.stop(grace)
        li_done = self.li.server.stop(grace)
        ue_done.wait()
        li_done.wait()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        if self.hotplug is not None:
            self.hotplug.stop()
        self.audit.close()
        self.store.close()
        self.vault.close()
