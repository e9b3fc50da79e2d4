"""`kmsnode` commands for the LI side: warrants, alarms, audit verification and the DF2 tool.

Rules:
- warrant/alarms/df2 talk to the node's LI listener over mutual TLS with the admin or DF2
  credentials named in the config's [clients] (or --ca/--cert/--key); the endpoint is the one
  the running node recorded in <data_dir>/listeners.json, else the configured LI address.
- `audit verify` checks the audit with the HSM audit key: with the embedded store, the log on
  this machine; with PostgreSQL ([store] url), every node's chain in the database (every node's
  HSM holds the same audit key versions). It prints each chain's result and acknowledged gaps,
  names the first bad record of each chain that is not intact, and exits 0 only when every
  chain is intact.
- `audit accept-gap --reason TEXT [--chain ID]` runs only while the chain's node is stopped (the
  chain's writer lock must be free: an flock on the log file, or the chain's advisory lock in
  PostgreSQL; for this node's own chains the runtime file must not name a live process either)
  and writes the signed AUDIT_GAP record that lets that node start again
  (firmware/audit/recovery.py). With PostgreSQL, `--chain` names the chain (default: this
  node's id); the embedded log is one file and takes no `--chain`.
- `df2 get-keys` takes TRANSFER_INIT / TRANSFER_RESP from the SDP a=key-mgmt:mikey lines and
  prints TEK, salt and SPI per crypto session; a refusal prints its reason and exits 1. With
  `--hi2-out FILE` / `--hi2-to HOST:PORT` it also writes / delivers the keys as one HI2 IRI
  record (TS 33.108, BER; mutual TLS 1.3 with the DF2's certificate to the LEMF).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

from firmware import config as config_mod
from firmware.core.errors import ConfigError, KmsError


def _endpoint(cfg: config_mod.Config, given: str | None) -> str:
    if given:
        return given
    try:
        return str(json.loads(cfg.runtime_file.read_text())["li"])
    except (OSError, ValueError, KeyError):
        return cfg.li_listener.address


def _channel(cfg: config_mod.Config, args: argparse.Namespace, who: str) -> Any:
    import grpc

    ca = Path(args.ca) if args.ca else cfg.clients.ca or cfg.li_listener.client_ca
    cert = Path(args.cert) if args.cert else getattr(cfg.clients, f"{who}_cert")
    key = Path(args.key) if args.key else getattr(cfg.clients, f"{who}_key")
    if ca is None or cert is None or key is None:
        raise ConfigError(f"[clients] needs ca, {who}_cert and {who}_key (or --ca/--cert/--key)")
    creds = grpc.ssl_channel_credentials(ca.read_bytes(), key.read_bytes(), cert.read_bytes())
    host_port = _endpoint(cfg, args.endpoint)
    host, _, port = host_port.rpartition(":")
    target = f"localhost:{port}" if host in ("127.0.0.1", "localhost", "") else host_port
    return grpc.secure_channel(target, creds)


def _reason(err: Any) -> str:
    from grpc_status import rpc_status

    status = rpc_status.from_call(err)
    if status is not None:
        from google.rpc import error_details_pb2

        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return f"{info.reason}: {status.message}"
    return f"{err.code().name}: {err.details()}"


def _rpc(fn: Any) -> Any:
    import grpc

    try:
        return fn()
    except grpc.RpcError as err:
        print(f"kmsnode: refused: {_reason(err)}", file=sys.stderr)
        raise SystemExit(1) from None


def _parse_time(text: str) -> float:
    if text == "now":
        return time.time()
    if text.startswith("+") and text[-1] in "smhd":
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[text[-1]]
        return time.time() + float(text[1:-1]) * unit
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _iso(ts: Any) -> str:
    return ts.ToDatetime(tzinfo=datetime.UTC).isoformat() if ts.seconds or ts.nanos else "-"


def cmd_warrant(args: argparse.Namespace) -> int:
    from google.protobuf import timestamp_pb2

    from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc

    cfg = config_mod.load(args.config)
    with _channel(cfg, args, "admin") as channel:
        stub = kms_pb2_grpc.AdminServiceStub(channel)
        if args.action == "add":
            start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
            start.FromNanoseconds(int(_parse_time(args.valid_from) * 1e9))
            end.FromNanoseconds(int(_parse_time(args.valid_until) * 1e9))
            w = _rpc(
                lambda: stub.PutWarrant(
                    kms_pb2.Warrant(
                        liid=args.liid,
                        target_identity=args.target,
                        valid_from=start,
                        valid_until=end,
                        df2_identities=args.df2,
                    ),
                    timeout=30,
                )
            )
            print(f"warrant {w.liid} for {w.target_identity} stored")
        elif args.action == "remove":
            _rpc(
                lambda: stub.DeleteWarrant(kms_pb2.DeleteWarrantRequest(liid=args.liid), timeout=30)
            )
            print(f"warrant {args.liid} removed")
        else:
            listing = _rpc(lambda: stub.ListWarrants(kms_pb2.ListWarrantsRequest(), timeout=30))
            for w in listing.warrants:
                print(
                    f"{w.liid}\t{w.target_identity}\t{_iso(w.valid_from)} .. "
                    f"{_iso(w.valid_until)}\tdf2={','.join(w.df2_identities)}"
                )
    return 0


def cmd_alarms(args: argparse.Namespace) -> int:
    from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc

    cfg = config_mod.load(args.config)
    who = "admin" if cfg.clients.admin_cert or args.cert else "df2"
    with _channel(cfg, args, who) as channel:
        stream = kms_pb2_grpc.AdminServiceStub(channel).WatchAlarms(
            kms_pb2.WatchAlarmsRequest(), timeout=args.timeout
        )

        def watch() -> int:
            stream.initial_metadata()
            print("watching alarms", flush=True)
            for seen, alarm in enumerate(stream, start=1):
                print(
                    f"ALARM {_iso(alarm.time)} {alarm.reason} caller={alarm.caller} "
                    f"liid={alarm.liid or '-'} correlation={alarm.correlation_id or '-'} "
                    f"{alarm.detail}",
                    flush=True,
                )
                if args.count and seen >= args.count:
                    stream.cancel()
                    break
            return 0

        return int(_rpc(watch))


def keys_via_node(cfg: config_mod.Config, keys: argparse.Namespace) -> int:
    """`kmsnode keys list|rotate|activate` against a running node, with the admin credentials."""
    from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc

    args = argparse.Namespace(endpoint=None, ca=None, cert=None, key=None)
    with _channel(cfg, args, "admin") as channel:
        stub = kms_pb2_grpc.AdminServiceStub(channel)
        if keys.action in ("rotate", "activate"):
            if keys.action == "rotate":
                request = kms_pb2.RotateTicketKeyRequest(staged=keys.staged)
                v = _rpc(lambda: stub.RotateTicketKey(request, timeout=30))
            else:
                activation = kms_pb2.ActivateTicketKeyRequest(version=keys.version)
                v = _rpc(lambda: stub.ActivateTicketKey(activation, timeout=30))
            print(f"{v.name}/v{v.version} {kms_pb2.KeyVersion.State.Name(v.state)}")
            return 0
        listing = _rpc(lambda: stub.ListKeyVersions(kms_pb2.ListKeyVersionsRequest(), timeout=30))
        for v in listing.versions:
            state = kms_pb2.KeyVersion.State.Name(v.state)
            print(f"{v.name}/v{v.version}\t{state}\tcreated={_iso(v.created)}")
    return 0


def user_via_node(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """`kmsnode user add|remove` against a running node (AdminService, admin credentials)."""
    from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
    from firmware.cli import _read_psk

    tls = argparse.Namespace(endpoint=None, ca=None, cert=None, key=None)
    with _channel(cfg, tls, "admin") as channel:
        stub = kms_pb2_grpc.AdminServiceStub(channel)
        if args.action == "add":
            answer = _rpc(
                lambda: stub.PutUser(
                    kms_pb2.PutUserRequest(
                        identity=args.identity,
                        aliases=args.alias or [],
                        psk=_read_psk(args.psk_file),
                        psk_id=(args.psk_id or "").encode(),
                    ),
                    timeout=30,
                )
            )
            print(f"user {args.identity} stored")
            if answer.psk:
                print(f"generated PSK (shown once): {answer.psk.hex()}")
        else:
            _rpc(
                lambda: stub.DeleteUser(
                    kms_pb2.DeleteUserRequest(identity=args.identity), timeout=30
                )
            )
            print(f"user {args.identity} removed")
    return 0


def _gap_text(gap: Any) -> str:
    missing = (
        f"records {gap.first}..{gap.last} ({gap.missing} missing)"
        if gap.missing
        else "no record known to be missing (a head that did not verify)"
    )
    when = datetime.datetime.fromtimestamp(gap.time, datetime.UTC).isoformat()
    return f"{missing}, accepted {when} by record {gap.record}: {gap.reason}"


def _own_chain(cfg: config_mod.Config, chain: str) -> bool:
    """The chain is this config's node's, or one of its worker processes' (<id>-w<i>)."""
    worker = chain.removeprefix(f"{cfg.node_id}-w")
    return chain == cfg.node_id or (worker != chain and worker.isdigit())


def _accept_gap(cfg: config_mod.Config, reason: str, chain: str | None) -> int:
    """Run while the chain's node is stopped: the chain's writer lock (held by a running node's
    AuditLog) refuses otherwise, and so does this node's runtime file naming a live process."""
    from firmware.audit.recovery import accept
    from firmware.cli import _node_running
    from firmware.node import open_store, open_vault
    from firmware.store.postgres import PostgresStore

    if chain is not None and cfg.store.url is None:
        raise ConfigError("--chain needs [store] url: the embedded audit log is one file")
    chain = chain if chain is not None else cfg.node_id
    if _own_chain(cfg, chain) and _node_running(cfg):
        raise KmsError(f"the node is running ({cfg.runtime_file}): stop it before accepting a gap")
    store = open_store(cfg)
    try:
        medium: Any
        if isinstance(store, PostgresStore):
            from firmware.audit.pgmedium import PostgresMedium

            medium = PostgresMedium(store.dedicated, chain)
        else:
            from firmware.audit.filemedium import FileMedium

            medium = FileMedium(cfg.audit_log, store)
        vault = open_vault(cfg, monitor=False)
        try:
            gap = accept(medium, vault.audit_hmac, reason, time.time())
        finally:
            vault.close()
    finally:
        store.close()
    print(f"gap accepted{f' in audit chain {chain}' if medium.chain else ''}: {_gap_text(gap)}")
    print("the node raises a TAMPER alarm at its next start")
    return 0


def _print_report(report: Any) -> int:
    """Each chain's result and gaps, then the summary; 0 only when every chain is intact."""
    for c in report.chains:
        where = f"audit chain {c.chain}" if c.chain else "audit log"
        for gap in c.gaps:
            print(f"{where}: acknowledged gap: {_gap_text(gap)}")
        if c.intact:
            print(f"{where} intact: {c.records} records")
        else:
            print(f"{where} NOT intact: first bad record {c.first_bad} of {c.records} ({c.detail})")
    if len(report.chains) != 1 or report.chains[0].chain:
        bad = sum(not c.intact for c in report.chains)
        print(
            f"{len(report.chains)} audit chain(s), {report.records} records: "
            + (f"{bad} NOT intact" if bad else "every chain intact")
        )
    return 0 if report.intact else 1


def cmd_audit(args: argparse.Namespace) -> int:
    from firmware.audit.verify import AuditReport, ChainResult, verify
    from firmware.node import open_store, open_vault
    from firmware.store.postgres import PostgresStore

    cfg = config_mod.load(args.config)
    if args.action == "accept-gap":
        return _accept_gap(cfg, args.reason, args.chain)
    store = open_store(cfg)
    try:
        vault = open_vault(cfg, monitor=False)
        try:
            if isinstance(store, PostgresStore):
                from firmware.audit.pgmedium import verify_database

                report = verify_database(store.connection, vault.audit_hmac)
            else:
                kept = store.audit_head()  # read before the log: a running node only adds records
                result = verify(cfg.audit_log, vault.audit_hmac, kept=kept)
                report = AuditReport((ChainResult.of("", result),))
        finally:
            vault.close()
    finally:
        store.close()
    return _print_report(report)


def cmd_df2(args: argparse.Namespace) -> int:
    from firmware.api.proto.kms.v1 import kms_pb2, kms_pb2_grpc
    from firmware.mikey.sdp import find_key_mgmt

    cfg = config_mod.load(args.config)
    offer = find_key_mgmt(Path(args.sdp_offer).read_text())
    if not offer:
        raise ConfigError("the SDP offer has no a=key-mgmt:mikey line")
    answer = find_key_mgmt(Path(args.sdp_answer).read_text()) if args.sdp_answer else []
    role = {"initiator": kms_pb2.TARGET_ROLE_INITIATOR, "responder": kms_pb2.TARGET_ROLE_RESPONDER}
    request = kms_pb2.GetKeysRequest(
        target_identity=args.target,
        target_role=role[args.role],
        transfer_init=offer[0],
        transfer_resp=answer[0] if answer else b"",
        liid=args.liid,
        correlation_id=args.correlation_id,
    )
    with _channel(cfg, args, "df2") as channel:
        keys = _rpc(lambda: kms_pb2_grpc.XkServiceStub(channel).GetKeys(request, timeout=30))
    print(f"CSB ID 0x{keys.csb_id:08x}, valid until {_iso(keys.valid_until)}")
    for s in keys.sessions:
        print(
            f"  CS {s.cs_id}: TEK {s.session_key.hex()} salt {s.salt.hex()}"
            f"{' SPI ' + s.spi.hex() if s.spi else ''}"
        )
    if args.hi2_out or args.hi2_to:
        _hi2(cfg, args, keys)
    return 0


def _hi2(cfg: config_mod.Config, args: argparse.Namespace, keys: Any) -> None:
    """The released keys as one HI2 IRI record (firmware/hi2/record.py), to a file and/or to
    the LEMF over mutual TLS 1.3 (firmware/hi2/deliver.py)."""
    import os

    from firmware.hi2 import deliver, record

    delivery = record.KeyDelivery(
        liid=args.liid,
        target=args.target,
        target_is_initiator=args.role == "initiator",
        correlation_id=args.correlation_id,
        sessions=[record.SessionKey(s.cs_id, s.session_key, s.salt) for s in keys.sessions],
        time=time.time(),
    )
    try:
        data = record.encode(delivery)
    except ValueError as exc:
        raise KmsError(f"no HI2 record: {exc}") from None
    if args.hi2_out:
        fd = os.open(args.hi2_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        print(f"HI2 IRI record ({len(data)} bytes BER) written to {args.hi2_out}")
    if args.hi2_to:
        ca = Path(args.hi2_ca) if args.hi2_ca else cfg.clients.ca
        cert = Path(args.cert) if args.cert else cfg.clients.df2_cert
        key = Path(args.key) if args.key else cfg.clients.df2_key
        if ca is None or cert is None or key is None:
            raise ConfigError(
                "--hi2-to needs the LEMF's CA (--hi2-ca or [clients] ca) and df2_cert"
            )
        try:
            sent = deliver.deliver(args.hi2_to, [data], deliver.client_context(ca, cert, key))
        except (OSError, ValueError) as exc:
            raise KmsError(f"HI2 delivery to {args.hi2_to} failed: {exc}") from None
        print(f"HI2 IRI record ({sent} bytes BER) delivered to {args.hi2_to} over mutual TLS 1.3")


def add_commands(sub: Any, cfg: argparse.ArgumentParser) -> None:
    tls = argparse.ArgumentParser(add_help=False, parents=[cfg])
    tls.add_argument("--endpoint", help="LI listener HOST:PORT (default: the running node's)")
    tls.add_argument("--ca")
    tls.add_argument("--cert")
    tls.add_argument("--key")

    p = sub.add_parser("warrant", help="lawful-interception warrants (AdminService)")
    w = p.add_subparsers(dest="action", required=True)
    a = w.add_parser("add", parents=[tls])
    a.add_argument("--liid", required=True)
    a.add_argument("--target", required=True)
    a.add_argument("--df2", action="append", required=True, help="DF2 certificate identity")
    a.add_argument("--valid-from", default="now", help="ISO time, 'now' or +N[smhd]")
    a.add_argument("--valid-until", default="+30d")
    r = w.add_parser("remove", parents=[tls])
    r.add_argument("--liid", required=True)
    w.add_parser("list", parents=[tls])
    p.set_defaults(func=cmd_warrant)

    p = sub.add_parser("alarms", help="alarms")
    al = p.add_subparsers(dest="action", required=True)
    watch = al.add_parser("watch", parents=[tls])
    watch.add_argument("--count", type=int, default=0, help="exit after N alarms")
    watch.add_argument("--timeout", type=float, default=None)
    p.set_defaults(func=cmd_alarms)

    p = sub.add_parser("audit", help="the audit log")
    au = p.add_subparsers(dest="action", required=True)
    au.add_parser("verify", parents=[cfg])
    gap = au.add_parser(
        "accept-gap",
        parents=[cfg],
        help="after investigating, acknowledge what stops the start (node stopped)",
    )
    gap.add_argument("--reason", required=True, help="why the gap is accepted (recorded)")
    gap.add_argument(
        "--chain", help="with [store] url: the node id whose chain (default: this node's)"
    )
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("df2", help="DF2/MF tool: fetch session keys over Xk")
    d = p.add_subparsers(dest="action", required=True)
    g = d.add_parser("get-keys", parents=[tls])
    g.add_argument("--target", required=True)
    g.add_argument("--role", choices=["initiator", "responder"], required=True)
    g.add_argument("--liid", required=True)
    g.add_argument("--sdp-offer", required=True)
    g.add_argument("--sdp-answer")
    g.add_argument("--correlation-id", default="")
    g.add_argument("--hi2-out", metavar="FILE", help="write the keys as an HI2 IRI record (BER)")
    g.add_argument(
        "--hi2-to", metavar="HOST:PORT", help="deliver the HI2 IRI record to the LEMF (TLS 1.3)"
    )
    g.add_argument("--hi2-ca", help="CA of the LEMF's certificate (default: [clients] ca)")
    p.set_defaults(func=cmd_df2)
