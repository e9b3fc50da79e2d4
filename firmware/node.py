"""The running node: the one composition root. `Node.build` makes every part from the config
(vault, store, audit, alarms, core, listeners); `start` opens the listeners; `kmsnode serve`,
the CLI's offline commands and the tests all build through here.

Rules:
- This module is the only place that wires api, hsm and store together; nothing imports it
  back (cli.py calls it).
- Health follows the HSM: NOT_SERVING on every listener while the vault is unavailable.
- Node alarms (no request caused them, so every DF2 watcher sees them): HSM_REMOVED /
  HSM_RESTORED, AUDIT_UNAVAILABLE / AUDIT_RESTORED (a failed or short audit write, then the
  first write that succeeds again: the node stays up and refuses releases meanwhile), TAMPER at
  start for each audit gap an operator accepted since the last start, CONFIG_RELOAD_FAILED.
- Building takes ownership of the vault and store it is given: if any part fails, what was
  opened is closed again (no logged-in session is left behind).
- The HTTPS listeners (firmware/api/https.py) are built here too when enabled: [ue_http_listener]
  (MIKEY over HTTPS on the same TicketCore) and [x1_listener] (ETSI X1 tasks as warrants, every
  refusal through the same Refusals); they start and stop with the gRPC listeners.
- SIGHUP (`reload_roles`) re-reads [roles] (members, revoked serials and fingerprints, the CRL)
  from the config file; a config that does not load keeps the old roles and raises an alarm.
- Stop: listeners stop accepting, in-flight RPCs get `grace` seconds, then state is closed.
- `clock` is injectable so tests can move time (ticket expiry, key destruction) through the
  real server.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware import config as config_mod
from firmware.api import server as api_server
from firmware.api.http_ue import UeHttpBinding
from firmware.api.https import Handler, HttpsServer, tls_context
from firmware.api.li import AdminServicer, Gate, XkServicer
from firmware.api.metrics import InstrumentedVault, Metrics
from firmware.api.proto.kms.v1 import kms_pb2_grpc
from firmware.api.roles import RoleResolver
from firmware.api.ticket import TicketServicer
from firmware.audit.alarms import AlarmBus
from firmware.audit.filemedium import FileMedium
from firmware.audit.log import AuditLog
from firmware.audit.medium import Medium
from firmware.config import Config, UeHttpConfig, X1Config
from firmware.core.admin import Admin
from firmware.core.errors import KmsError
from firmware.core.freshness import ReplayCache
from firmware.core.ports import ReplayGuard, Store
from firmware.core.refusals import Refusals
from firmware.core.tasks import Tasks
from firmware.core.tickets import TicketCore, TicketSettings
from firmware.core.xk import KeyRelease, XkSettings
from firmware.store.sqlite import SqliteStore
from firmware.x1.service import X1Service
from hsm.vault import Pkcs11Vault, VaultSettings

log = logging.getLogger("kmsnode.node")


def vault_settings(cfg: Config) -> VaultSettings:
    """What the config says of the HSM, as the vault takes it (the PIN by its source, never
    its value)."""
    from hsm.pin import PinSource

    pin = (
        PinSource.file(cfg.hsm.pin_file)
        if cfg.hsm.pin_file is not None
        else PinSource.credential(cfg.hsm.pin_credential or "")
    )
    return VaultSettings(
        token_uri=cfg.hsm.token_uri,
        module_path=str(cfg.hsm.module),
        pin_source=pin,
        probe_interval=cfg.hsm.probe_interval,
        session_copies=cfg.hsm.session_copies,
        psk_objects=cfg.hsm.psk_objects,
    )


def open_vault(cfg: Config, monitor: bool = True) -> Pkcs11Vault:
    """The PKCS#11 vault named by the config (SOFTHSM2_CONF exported first when configured)."""
    if cfg.hsm.softhsm2_conf is not None:
        os.environ["SOFTHSM2_CONF"] = str(cfg.hsm.softhsm2_conf)
    return Pkcs11Vault.open(vault_settings(cfg), monitor=monitor)


def open_store(cfg: Config) -> Store:
    """PostgreSQL ([store] url, shared by a cluster; this node's audit head is its chain's)
    or the embedded SQLite file."""
    if cfg.store.url is not None:
        from firmware.store.password import read_password
        from firmware.store.postgres import PostgresStore

        password = None
        if cfg.store.password_file or cfg.store.password_credential:
            password = read_password(cfg.store.password_file, cfg.store.password_credential)
        return PostgresStore(cfg.store.url, password, audit_chain=cfg.node_id)
    cfg.state_db.parent.mkdir(parents=True, exist_ok=True)
    return SqliteStore(cfg.state_db)


def _replay_guard(cfg: Config, store: Store, now: float) -> ReplayGuard:
    """The replay cache: shared in PostgreSQL by a cluster, else in this process's memory."""
    from firmware.store.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        from firmware.store.replay import PostgresReplayCache

        return PostgresReplayCache(
            store, cfg.policy.clock_skew, now, cfg.policy.replay_cache_capacity
        )
    return ReplayCache(cfg.policy.clock_skew, now, cfg.policy.replay_cache_capacity)


def _alarm_relay(store: Store, alarms: AlarmBus, metrics: Metrics) -> Any:
    """With a shared store, alarms reach every node's watchers (LISTEN/NOTIFY)."""
    from firmware.store.postgres import PostgresStore

    if not isinstance(store, PostgresStore):
        return None
    from firmware.store.alarm_relay import AlarmRelay

    relay = AlarmRelay(
        store.dedicated, alarms.node, alarms.deliver, dropped=metrics.alarms_dropped.inc
    )
    alarms.publish = relay.publish
    return relay


def audit_medium(cfg: Config, store: Store) -> Medium:
    """This node's audit chain: in the shared database when the store is PostgreSQL (chain id =
    node id; records committed with the chain's heads, one transaction per batch), else the
    log file with its head in the store."""
    from firmware.store.postgres import PostgresStore

    if isinstance(store, PostgresStore):
        from firmware.audit.pgmedium import PostgresMedium

        return PostgresMedium(store.dedicated, cfg.node_id)
    return FileMedium(cfg.audit_log, store)


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _start_hotplug(match: dict[str, str], vault: Pkcs11Vault) -> Any:
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


_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _https_server(
    cfg: Config,
    name: str,
    s: UeHttpConfig | X1Config,
    handler: Handler,
    *,
    require_client_certificate: bool,
    minimum: ssl.TLSVersion,
) -> HttpsServer:
    """An HTTPS listener with the gRPC listeners' TLS 1.2 suites, bound now (not started)."""
    context = tls_context(
        s.cert,
        s.key,
        s.client_ca,
        require_client_certificate=require_client_certificate,
        minimum=minimum,
        tls12_ciphers=api_server.AEAD_TLS12_SUITES,
    )
    return HttpsServer(
        name, s.host, s.port, context, s.path, handler, s.limits, cfg.workers,
        reuse_port=cfg.processes > 1,
    )  # fmt: skip


def _ue_http_server(
    cfg: Config, tickets: TicketCore, metrics: Metrics, roles: RoleResolver
) -> HttpsServer | None:
    """[ue_http_listener]: MIKEY over HTTPS with the UE listener's TLS policy (client
    certificates optional)."""
    s = cfg.ue_http
    if not s.enabled:
        return None
    binding = UeHttpBinding(tickets, s, metrics, roles)
    minimum = _TLS_VERSIONS[s.tls_min_version]
    return _https_server(
        cfg, "ue-http", s, binding, require_client_certificate=False, minimum=minimum
    )


def _x1_server(
    cfg: Config,
    store: Store,
    audit: AuditLog,
    refusals: Refusals,
    metrics: Metrics,
    roles: RoleResolver,
    clock: Callable[[], float],
) -> HttpsServer | None:
    """[x1_listener]: ETSI TS 103 221-1 X1 over mutual TLS 1.3 (clients of the LI CA)."""
    s = cfg.x1
    if not s.enabled:
        return None
    tasks = Tasks(store, audit, clock, s.deactivate_all)
    service = X1Service(tasks, refusals, roles, s, metrics, clock)
    return _https_server(
        cfg, "x1", s, service, require_client_certificate=True, minimum=ssl.TLSVersion.TLSv1_3
    )


@dataclass
class Node:
    cfg: Config
    raw_vault: Pkcs11Vault
    vault: InstrumentedVault
    store: Store
    metrics: Metrics
    alarms: AlarmBus
    audit: AuditLog
    refusals: Refusals
    admin: Admin
    tickets: TicketCore
    release: KeyRelease
    roles: RoleResolver
    ue: api_server.Listener
    li: api_server.Listener
    clock: Callable[[], float]
    extras: list[Any] = field(default_factory=list)  # closed at stop: replay cache, alarm relay
    metrics_server: Any = None
    hotplug: Any = None
    ue_http: HttpsServer | None = None  # [ue_http_listener] (MIKEY over HTTPS), when enabled
    x1: HttpsServer | None = None  # [x1_listener] (ETSI TS 103 221-1), when enabled
    _stop: threading.Event = field(default_factory=threading.Event)
    _hsm_lost_at: float | None = None
    _down: set[str] = field(default_factory=set)  # "hsm", "store", "clock": NOT_SERVING while any
    availability: api_server.Availability = field(default_factory=api_server.Availability)

    @property
    def ue_port(self) -> int:
        return self.ue.port

    @property
    def li_port(self) -> int:
        return self.li.port

    # --- building ---------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        cfg: Config,
        vault: Pkcs11Vault | None = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Node:
        """Every part from the config; listeners bound, not started."""
        raw_vault = vault if vault is not None else open_vault(cfg)
        opened: list[Any] = [raw_vault]
        try:
            store = store if store is not None else open_store(cfg)
            opened.append(store)
            return cls._assemble(cfg, raw_vault, store, clock, opened)
        except BaseException:
            for part in reversed(opened):
                try:
                    part.close()
                except Exception:  # closing what failed to start must not hide why it failed
                    log.exception("closing %s after a failed start", type(part).__name__)
            raise

    @classmethod
    def _assemble(
        cls,
        cfg: Config,
        raw_vault: Pkcs11Vault,
        store: Store,
        clock: Callable[[], float],
        opened: list[Any],
    ) -> Node:
        metrics = Metrics()
        ivault = InstrumentedVault(raw_vault, metrics)
        alarms = AlarmBus(
            clock,
            lambda reason: metrics.alarms.labels(reason).inc(),
            queue_size=cfg.alarms.queue_size,
            per_identity=cfg.alarms.watchers_per_identity,
            max_watchers=cfg.alarms.max_watchers,
            dropped=metrics.alarms_dropped.inc,
            node=cfg.node_id,
        )
        relay = _alarm_relay(store, alarms, metrics)
        if relay is not None:
            opened.append(relay)
        cfg.audit_log.parent.mkdir(parents=True, exist_ok=True)

        def on_audit(available: bool, reason: str) -> None:
            log.warning("audit log %s: %s", "writable again" if available else "FAILING", reason)
            alarms.raise_alarm(
                "AUDIT_RESTORED" if available else "AUDIT_UNAVAILABLE", detail=reason
            )

        audit = AuditLog(
            audit_medium(cfg, store),
            ivault.audit_hmac,
            metrics.audit_records.inc,
            on_availability=on_audit,
            clock=clock,
        )
        opened.append(audit)
        refusals = Refusals(
            audit,
            alarms,
            clock,
            lambda method, reason: metrics.refusals.labels(method, reason).inc(),
            cfg.refused_records_per_second,
        )
        admin = Admin(
            ivault, store, audit, clock, cfg.policy.max_ticket_lifetime, cfg.policy.clock_skew
        )
        admin.record_existing()
        replay = _replay_guard(cfg, store, clock())
        if hasattr(replay, "close"):
            opened.append(replay)
        tickets = TicketCore(
            ivault,
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
            alarms,
        )
        admin.key_listeners.append(tickets.forget_keys)
        release = KeyRelease(
            ivault, store, audit, XkSettings(cfg.kms_identity, cfg.policy.clock_skew), clock
        )
        assert cfg.li_listener.client_ca is not None  # config.load requires it
        li_ca = _read(cfg.li_listener.client_ca)
        roles = RoleResolver(cfg.roles, li_ca)
        gate = Gate(roles, refusals)
        availability = api_server.Availability()
        ue = api_server.make_listener(
            "ue",
            cfg.ue_listener,
            api_server.server_credentials(
                _read(cfg.ue_listener.cert),
                _read(cfg.ue_listener.key),
                _read(cfg.ue_listener.client_ca) if cfg.ue_listener.client_ca else None,
                require_client_auth=False,
            ),
            [
                (
                    kms_pb2_grpc.add_TicketServiceServicer_to_server,
                    TicketServicer(tickets),
                    api_server.service_name("TicketService"),
                )
            ],
            cfg.workers,
            metrics,
            reuse_port=cfg.processes > 1,
            availability=availability,
        )
        li = api_server.make_listener(
            "li",
            cfg.li_listener,
            api_server.server_credentials(
                _read(cfg.li_listener.cert),
                _read(cfg.li_listener.key),
                li_ca,
                require_client_auth=True,
            ),
            [
                (
                    kms_pb2_grpc.add_XkServiceServicer_to_server,
                    XkServicer(release, gate),
                    api_server.service_name("XkService"),
                ),
                (
                    kms_pb2_grpc.add_AdminServiceServicer_to_server,
                    AdminServicer(admin, gate, alarms, audit.verify_all),
                    api_server.service_name("AdminService"),
                ),
            ],
            cfg.workers,
            metrics,
            require_tls13=True,
            reflection_guard=gate.guard_reflection,
            reuse_port=cfg.processes > 1,
            availability=availability,
        )
        node = cls(
            cfg,
            raw_vault,
            ivault,
            store,
            metrics,
            alarms,
            audit,
            refusals,
            admin,
            tickets,
            release,
            roles,
            ue,
            li,
            clock,
            extras=[part for part in opened if part is replay or part is relay],
            availability=availability,
        )
        node.ue_http = _ue_http_server(cfg, tickets, metrics, roles)
        node.x1 = _x1_server(cfg, store, audit, refusals, metrics, roles, clock)
        return node

    # --- running ----------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        cfg: Config,
        vault: Pkcs11Vault | None = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Node:
        """Build and start."""
        node = cls.build(cfg, vault, store, clock)
        node.run()
        return node

    def run(self) -> None:
        """Start listening and the node's background work."""
        self.raw_vault.add_listener(self._on_hsm)
        self.ue.server.start()
        self.li.server.start()
        if self.ue_http is not None:
            self.ue_http.start()
        if self.x1 is not None:
            self.x1.start()
        serving = bool(self.vault.available())
        self.metrics.hsm_available.set(1 if serving else 0)
        if not serving:
            self._down.add("hsm")
        self._update_health()
        if hasattr(self.store, "ping"):
            threading.Thread(target=self._store_monitor, name="store-probe", daemon=True).start()
        if self.cfg.policy.require_clock_sync:
            self.check_clock()
            threading.Thread(target=self._clock_monitor, name="clock-probe", daemon=True).start()
        if self.cfg.metrics_address:
            self.metrics_server = self.metrics.serve(self.cfg.metrics_address)
        if self.cfg.hsm.device_match:
            self.hotplug = _start_hotplug(self.cfg.hsm.device_match, self.raw_vault)
        for gap in self.audit.start_findings.accepted_gaps:
            detail = (
                f"audit gap accepted by an operator: records {gap.first}..{gap.last}"
                f" ({max(gap.missing, 0)} missing): {gap.reason}"
            )
            log.error("TAMPER: %s", detail)
            self.alarms.raise_alarm("TAMPER", detail=detail, sticky=True)
        threading.Thread(target=self._sweeper, name="key-sweeper", daemon=True).start()

    def reload_roles(self) -> bool:
        """SIGHUP: the [roles] of the config file now; False (old roles kept) when it fails."""
        try:
            self.roles.reload(config_mod.load(self.cfg.path).roles)
        except KmsError as exc:
            log.error("roles not reloaded: %s", exc)
            self.alarms.raise_alarm("CONFIG_RELOAD_FAILED", detail=str(exc))
            return False
        log.info("roles reloaded from %s", self.cfg.path)
        return True

    def _on_hsm(self, available: bool, reason: str) -> None:
        """HSM removal/return: health, metric, alarm now; audit records once the HSM (which
        keys the audit log) is back, so both events are in the log."""
        log.warning("HSM %s: %s", "available" if available else "UNAVAILABLE", reason)
        (self._down.discard if available else self._down.add)("hsm")
        self._update_health()
        self.metrics.hsm_available.set(1 if available else 0)
        now = self.clock()
        self.alarms.raise_alarm("HSM_RESTORED" if available else "HSM_REMOVED", detail=reason)
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

    def _update_health(self) -> None:
        serving = not self._down and not self._stop.is_set()
        self.ue.set_serving(serving)
        self.li.set_serving(serving)

    def _store_monitor(self) -> None:
        """A shared store (PostgreSQL) that stops answering makes the node NOT_SERVING with a
        STORE_UNAVAILABLE alarm; once it answers again: serving, STORE_RESTORED. Requests fail
        UNAVAILABLE on their own meanwhile (StoreUnavailable); nothing needs a restart."""
        interval = self.cfg.hsm.probe_interval
        while not self._stop.wait(interval):
            up = bool(self.store.ping())  # type: ignore[attr-defined]
            if up == ("store" not in self._down):
                continue
            (self._down.discard if up else self._down.add)("store")
            self._update_health()
            log.warning("state store %s", "answering again" if up else "NOT ANSWERING")
            self.alarms.raise_alarm(
                "STORE_RESTORED" if up else "STORE_UNAVAILABLE",
                detail=f"node {self.cfg.node_id}: the state store "
                + ("answers again" if up else "is not answering"),
            )

    def check_clock(self) -> bool:
        """[policy] require_clock_sync: NOT_SERVING (and every RPC but health UNAVAILABLE,
        alarm CLOCK_UNSYNCHRONISED, one log line) while the kernel does not call the clock
        synchronised within the clock skew; serving again once it does."""
        from firmware import clocksync

        state = clocksync.clock_state()
        ok = state.within(self.cfg.policy.clock_skew)
        if ok == ("clock" not in self._down):
            return ok
        (self._down.discard if ok else self._down.add)("clock")
        reason = (
            "the clock is synchronised"
            if ok
            else f"the clock is not synchronised within {self.cfg.policy.clock_skew:g} s"
            f" (kernel: synchronised={state.synchronised}, max error {state.max_error:g} s)"
        )
        self.availability.reason = None if ok else reason
        self._update_health()
        (log.info if ok else log.error)("%s", reason)
        self.alarms.raise_alarm(
            "CLOCK_SYNCHRONISED" if ok else "CLOCK_UNSYNCHRONISED", detail=reason
        )
        return ok

    def _clock_monitor(self) -> None:
        while not self._stop.wait(self.cfg.hsm.probe_interval):
            try:
                self.check_clock()
            except OSError:  # adjtimex refused: say so, keep the last state
                log.exception("clock state unreadable")

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
        self._update_health()
        ue_done = self.ue.server.stop(grace)
        li_done = self.li.server.stop(grace)
        if self.ue_http is not None:
            self.ue_http.stop(grace)
        if self.x1 is not None:
            self.x1.stop(grace)
        ue_done.wait()
        li_done.wait()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        if self.hotplug is not None:
            self.hotplug.stop()
        try:
            self.refusals.flush()
        except KmsError:
            log.error("suppressed refusals could not be summarised in the audit log")
        self.audit.close()
        for extra in reversed(self.extras):
            extra.close()
        self.store.close()
        self.vault.close()
