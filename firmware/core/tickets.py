"""Ticket Request and Ticket Resolve at the KMS (RFC 6043 mode 1; TS 33.328 identity checks).

Order of checks for REQUEST_INIT_PSK / RESOLVE_INIT_PSK (spec mikey-ticket.md 4.4, 4.5):
  decode -> timestamp window -> find the user (IDRpsk, else IDRi|IDRr) -> verify V (its key
  derived from the PSK in the HSM) over the received bytes + appended identities -> replay cache
  -> identity, ticket and policy checks -> answer.

Rules:
- Until V verifies, the caller learns only "not authenticated" (UNAUTHENTICATED with ERR 0, or
  ERR 1 for a stale or replayed T) or "malformed" (INVALID_ARGUMENT): no MIKEY answer, no state.
  A stale or replayed message is not answered with a MAC'd Error message because RFC 3830 5.1.2
  lets a receiver drop what fails authentication, and answering replays feeds an oracle.
- Once V verifies, every refusal is a MIKEY Error message (data type 6) keyed with the request's
  auth_key (RFC 6043 5.4): ERR 7 for an identity that is not the user's (TS 33.328 6.2.3.5) or
  not allowed by the ticket, ERR 14 for a ticket that is not ours, tampered, expired or of a
  destroyed key version, ERR 15 for a policy we cannot grant.
- The user's PSK never enters the process: every key derived from it (K1 to verify V, K2 for the
  answer) is a PRF the vault runs in the HSM (`psk_prf`), as every key derived from the TPK is.
- Tickets are MIKEY base tickets (type 1) whose THDR data names the TPK version (`KMS1` || u32);
  every ticket-key HMAC is computed in the HSM. MPK, TGK and RANDs come from the HSM's RNG.
- Algorithms follow the PRF (RFC 6043 12.1: never mix 256-bit with weaker algorithms): with
  PRF-HMAC-SHA-256 keys are 256 bits, KEMACs AES-CM-256 and V HMAC-SHA-256-256; with MIKEY-1
  keys are 128 bits, AES-CM-128 and HMAC-SHA-1-160.
- The granted policy: D=1 (the KMS made it), E=1 (resolve mandatory: only the KMS holds the TPK),
  I (key forking) as requested or forced on when configured (K=1 then), F/G/H/J/L/M as
  requested and then made consistent, N=O=1; validity from now for the requested or default
  lifetime, never beyond the configured maximum; IDRkms and IDRi of the granted ticket are ours
  and the authenticated initiator's; IDRr (one or more) as requested.
- Identity bound by the transport (TS 33.328 6.2.3.5 with a TLS layer that authenticated the UE:
  a client certificate now, GBA per TS 33.222 later): when the caller passes `tls_identities`,
  IDRi (REQUEST_INIT) or IDRr (RESOLVE_INIT) must also be one of them (canonical), else ERR 7;
  an empty set (the TLS layer authenticated nobody) refuses every request that way.
- A resolution (ticket id, responder, RANDRkms) is stored as the last step, only for a resolve
  that is answered; a failed request stores nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from firmware.core.admin import active_version
from firmware.core.errors import (
    KeyVersionNotFound,
    KeyVersionUnavailable,
    MalformedMessage,
    NotAuthenticated,
)
from firmware.core.freshness import StaleTimestamp, ntp64_to_unix, unix_to_ntp64
from firmware.core.identity import IdentityError, canonical
from firmware.core.ours import (
    NotOurs,
    allowed_responders,
    missing_version,
    open_ours,
    thdr_for,
    ticket_id,
    ts_unix,
    within_validity,
)
from firmware.core.ports import (
    AlarmSink,
    KeyName,
    KeyVault,
    ReplayGuard,
    Resolution,
    Store,
    User,
)
from firmware.mikey.codec import (
    KeyData,
    Payload,
    RoleIdentity,
    RoleTimestamp,
    Ticket,
    TicketPolicy,
    Timestamp,
    TpFlags,
)
from firmware.mikey.constants import (
    DataType,
    EncrAlg,
    ErrNo,
    IdRole,
    IdType,
    KeyDataType,
    MacAlg,
    TsRole,
    TsType,
)
from firmware.mikey.crypto import PrfPort, mpk_split
from firmware.mikey.errors import MikeyError
from firmware.mikey.kms import (
    build_error,
    build_request_resp,
    build_resolve_resp,
    check_rand_strength,
    verify_initial_psk,
    verify_initiator_data,
)
from firmware.mikey.message import UE_LIMITS, Message, decode
from firmware.mikey.prf import PrfFunc
from firmware.mikey.rules import check_message
from firmware.mikey.ticket import seal_ticket, ticket_raw

RAND_LEN = 32
SPI_LEN = 4
KEY_CACHE_SECONDS = 5.0


@dataclass(frozen=True)
class TicketSettings:
    kms_identity: str  # canonical; the IDRkms value
    clock_skew: float = 60.0
    ticket_lifetime: float = 3600.0
    max_ticket_lifetime: float = 86400.0
    key_forking: bool = True  # force key forking on when a request leaves it off


class Refusal(Exception):
    """An authenticated request that cannot be served: answered with a MIKEY Error message."""

    def __init__(self, err: ErrNo, why: str) -> None:
        super().__init__(why)
        self.err = err


@dataclass(frozen=True)
class _Authenticated:
    user: User
    psk: PrfPort  # the user's PSK, in the HSM (HDR PRF)
    auth_key: bytes
    peer: str  # canonical identity the message claims (IDRi / IDRr), or the user's identity
    peer_data: bytes  # ID Data as sent (or the user's identity), used in K7 labels
    mac_alg: MacAlg


def algorithms(prf: PrfFunc) -> tuple[int, EncrAlg, MacAlg]:
    """(key length, KEMAC encryption, V MAC) that match the strength of `prf`."""
    if prf is PrfFunc.PRF_HMAC_SHA_256:
        return 32, EncrAlg.AES_CM_256, MacAlg.HMAC_SHA_256_256
    return 16, EncrAlg.AES_CM_128, MacAlg.HMAC_SHA_1_160


class TicketCore:
    """The KMS's answers to REQUEST_INIT_PSK and RESOLVE_INIT_PSK."""

    def __init__(
        self,
        vault: KeyVault,
        store: Store,
        replay: ReplayGuard,
        settings: TicketSettings,
        clock: Callable[[], float],
        alarms: AlarmSink | None = None,
    ) -> None:
        self.vault, self.store, self.replay = vault, store, replay
        self.settings, self.clock = settings, clock
        self.kms_id = settings.kms_identity.encode()
        self._decoy: User | None = None
        self._decoy_lock = threading.Lock()
        self.alarms = alarms
        self._active: tuple[float, int] | None = None
        self._missing_alarmed = -1e9

    # --- entry ------------------------------------------------------------------------------

    def exchange(self, data: bytes, tls_identities: frozenset[str] | None = None) -> bytes:
        """The KMS's answer to one message. The one boundary of the MIKEY rules: whatever the
        codec or the message rules refuse before the sender is authenticated is MalformedMessage
        carrying the ERR to report; after, a MIKEY Error message. `tls_identities` are the
        canonical identities the transport authenticated (None: the transport binds none)."""
        try:
            return self._exchange(data, tls_identities)
        except MikeyError as exc:  # never past the status table as INTERNAL
            raise MalformedMessage(f"malformed MIKEY message: {exc}", int(exc.err)) from None

    def _exchange(self, data: bytes, tls_identities: frozenset[str] | None) -> bytes:
        msg = decode(data, limits=UE_LIMITS)  # bounded before anything is authenticated
        if msg.header.data_type == DataType.REQUEST_INIT_PSK:
            handler, role = self._request, IdRole.IDRi
        elif msg.header.data_type == DataType.RESOLVE_INIT_PSK:
            handler, role = self._resolve, IdRole.IDRr
        else:
            raise MalformedMessage(
                f"data type {msg.header.data_type} is not served here", int(ErrNo.INVALID_DT)
            )
        check_message(msg)  # required payloads, header rules (#CS 0, Empty map), algorithm classes
        now = self.clock()
        auth = self._authenticate(msg, role, now)
        try:
            try:
                if tls_identities is not None and auth.peer not in tls_identities:
                    raise Refusal(ErrNo.INVALID_ID, "the identity is not one the TLS layer proved")
                check_rand_strength(msg, auth.user.wrapped_psk.key_length)
                return handler(msg, auth, now)
            except MikeyError as exc:  # authenticated: answered with a MIKEY Error message
                raise Refusal(_err(exc), str(exc)) from None
        except Refusal as refusal:
            return build_error(
                msg.header,
                [refusal.err],
                t=self._timestamp(now),
                auth_key=auth.auth_key,
                mac_alg=auth.mac_alg,
            )

    # --- authentication ---------------------------------------------------------------------

    def _check_time(self, msg: Message, now: float) -> tuple[float, int | None]:
        t = msg.timestamp
        if t.ts_type is TsType.COUNTER:
            return now, int.from_bytes(t.value, "big")
        value = int.from_bytes(t.as_64(), "big")
        stamp = ntp64_to_unix(value)
        try:
            self.replay.check_time(stamp, now)
        except StaleTimestamp as exc:
            raise NotAuthenticated(str(exc), int(ErrNo.INVALID_TS)) from None
        return stamp, None

    def _find_user(self, msg: Message, role: IdRole) -> tuple[User, RoleIdentity | None]:
        psk_idr = msg.idr(IdRole.IDRpsk)
        peer_idr = msg.idr(role)
        user = None
        if psk_idr is not None:
            user = self.store.user_by_psk_id(psk_idr.data)
        elif peer_idr is not None:
            # no identity in it: checked against the decoy like any unknown one
            with contextlib.suppress(UnicodeDecodeError, IdentityError):
                user = self.store.user_by_identity(canonical(peer_idr.data.decode("utf-8")))
        return user if user is not None else self._decoy_user(), peer_idr

    def _issuing_version(self) -> int:
        """The TPK version that protects new tickets (the store's active one, shared by every
        node); remembered for `KEY_CACHE_SECONDS`, and forgotten at once when this node changes
        key versions (`forget_keys`), so a rotation elsewhere is seen within that time."""
        now = time.monotonic()
        cached = self._active
        if cached is not None and cached[0] > now:
            return cached[1]
        records = self.store.key_records(KeyName.TICKET_PROTECTION)
        version = active_version(records, self.vault, KeyName.TICKET_PROTECTION)
        self._active = (now + KEY_CACHE_SECONDS, version)
        return version

    def forget_keys(self) -> None:
        self._active = None

    def _alarm_missing_version(self, detail: str) -> None:
        """One KEY_VERSION_UNAVAILABLE node alarm a minute, not one per request."""
        now = time.monotonic()
        if self.alarms is not None and now - self._missing_alarmed > 60.0:
            self._missing_alarmed = now
            self.alarms.raise_alarm("KEY_VERSION_UNAVAILABLE", detail=detail)

    def _decoy_user(self) -> User:
        """A user nobody is, with a random PSK wrapped by the KEK. An unknown caller is checked
        against it, so it costs the same HSM PRF work as a known user with a wrong key: the
        answer time does not tell who is provisioned (hsm/psks.py: the decoy's PSK is held in
        the token like a recently active user's)."""
        with self._decoy_lock:
            if self._decoy is None:
                psk = self.vault.wrap_psk(self.vault.random_bytes(32))
                self._decoy = User("sip:decoy.invalid", (), b"", psk)
            return self._decoy

    def _authenticate(self, msg: Message, role: IdRole, now: float) -> _Authenticated:
        stamp, counter = self._check_time(msg, now)
        user, peer_idr = self._find_user(msg, role)
        psk = self._psk(user, msg.header.prf_func)
        peer_data = peer_idr.data if peer_idr is not None else user.identity.encode()
        try:
            auth_key = verify_initial_psk(
                msg, psk, peer_identity=user.identity.encode(), kms_identity=self.kms_id
            )
        except (MikeyError, KeyVersionNotFound):
            raise NotAuthenticated("not authenticated", int(ErrNo.AUTH_FAILURE)) from None
        if user is self._decoy:  # second line: the decoy never authenticates anybody
            raise NotAuthenticated("not authenticated", int(ErrNo.AUTH_FAILURE))
        v = msg.payloads[-1]
        mac = bytes(getattr(v, "mac", b""))
        try:
            if counter is not None:
                if not self.store.advance_counter(user.identity, counter):
                    raise StaleTimestamp("COUNTER did not increase")
            else:
                self.replay.admit(mac, stamp, now)
        except StaleTimestamp as exc:
            raise NotAuthenticated(str(exc), int(ErrNo.INVALID_TS)) from None
        try:
            peer = canonical(peer_data.decode("utf-8")) if peer_idr is not None else user.identity
        except (UnicodeDecodeError, IdentityError):
            peer = ""
        mac_alg = getattr(v, "mac_alg", MacAlg.HMAC_SHA_1_160)
        return _Authenticated(user, psk, auth_key, peer, peer_data, mac_alg)

    # --- shared -----------------------------------------------------------------------------

    @staticmethod
    def _timestamp(now: float) -> Timestamp:
        return Timestamp(TsType.NTP_UTC, _ntp(now))

    def _check_kms(self, msg: Message) -> None:
        idr = msg.idr(IdRole.IDRkms)
        if idr is None:
            return
        try:
            ours = canonical(idr.data.decode("utf-8")) == self.settings.kms_identity
        except (UnicodeDecodeError, IdentityError):
            ours = False
        if not ours:
            raise Refusal(ErrNo.INVALID_ID, "IDRkms names another KMS")

    def _check_own_identity(self, auth: _Authenticated) -> None:
        """TS 33.328 6.2.3.5: IDRi / IDRr must be a public identity of the authenticated user."""
        if auth.peer not in auth.user.identities:
            raise Refusal(ErrNo.INVALID_ID, "identity is not one of the user's")

    def _psk(self, user: User, prf: PrfFunc) -> PrfPort:
        """`user`'s PSK as a PRF port: one HSM call per derived key set."""
        wrapped = user.wrapped_psk
        return lambda wants: self.vault.psk_prf(wrapped, prf, wants)

    def _tpk(self, version: int, prf: PrfFunc) -> PrfPort:
        """The TPK of `version` as a PRF port: one HSM call per derived key set."""
        return lambda wants: self.vault.ticket_prf(version, prf, wants)

    # --- Ticket Request ---------------------------------------------------------------------

    def _grant(self, requested: TicketPolicy, initiator: str, now: float) -> TicketPolicy:
        s = self.settings
        flags = requested.flags
        keep = TpFlags.F | TpFlags.G | TpFlags.H | TpFlags.I | TpFlags.J | TpFlags.L | TpFlags.M
        granted = (flags & keep) | TpFlags.D | TpFlags.E | TpFlags.N | TpFlags.O
        if s.key_forking:
            granted |= TpFlags.I
        if granted & TpFlags.I:
            granted |= TpFlags.F  # I with a TGK requires F
        if not granted & TpFlags.G:
            granted |= TpFlags.H
        if granted & TpFlags.M:
            granted |= TpFlags.F
        if granted & TpFlags.G:
            granted |= TpFlags.F
        responders = requested.idr(IdRole.IDRr)
        if not responders:
            raise Refusal(ErrNo.INVALID_TPPAR, "the requested policy names no responder (IDRr)")
        start, end = self._validity(requested, now)
        payloads: tuple[Payload, ...] = (
            RoleIdentity(IdRole.IDRkms, IdType.URI, self.kms_id),
            RoleIdentity(IdRole.IDRi, IdType.URI, initiator.encode()),
            RoleTimestamp(TsRole.TRs, TsType.NTP_UTC, _ntp(start)),
            RoleTimestamp(TsRole.TRe, TsType.NTP_UTC, _ntp(end)),
            *requested.idr(IdRole.IDRapp),
            *responders,
        )
        policy = TicketPolicy(
            requested.ticket_type,
            requested.subtype,
            requested.version,
            requested.prf_func,
            granted,
            payloads,
        )
        # K (RFC 6043 6.10): the granted policy differs from the requested one in any field -
        # flags, a TRs/TRe the KMS added or moved, identities it added, a KEMAC template it
        # replaced (it always grants one TGK and never echoes a template).
        if _without_k(policy) != _without_k(requested):
            policy = dataclasses.replace(policy, flags=policy.flags | TpFlags.K)
        return policy

    def _validity(self, requested: TicketPolicy, now: float) -> tuple[float, float]:
        """[TRs, TRe] granted: never wider than the request asked for (a later TRs, an earlier
        TRe are kept), never longer than the configured maximum, the default lifetime when the
        request sets no end; COUNTER bounds carry no time and are replaced."""
        s = self.settings
        start, end = now, now + s.ticket_lifetime
        trs, tre = requested.tr(TsRole.TRs), requested.tr(TsRole.TRe)
        if trs is not None and (at := ts_unix(trs)) is not None:
            start = min(max(at, now), now + s.max_ticket_lifetime)
            end = start + s.ticket_lifetime
        if tre is not None and (until := ts_unix(tre)) is not None:
            end = until
        end = max(start, min(end, now + s.max_ticket_lifetime))
        return start, end

    def _request(self, msg: Message, auth: _Authenticated, now: float) -> bytes:
        self._check_kms(msg)
        self._check_own_identity(auth)
        requested = msg.find(TicketPolicy)
        if requested is None:
            raise Refusal(ErrNo.INVALID_TPPAR, "no Ticket Policy")
        if (requested.ticket_type, requested.subtype, requested.version) != (1, 1, 1):
            raise Refusal(ErrNo.INVALID_TICKET, "only the MIKEY base ticket is issued")
        policy = self._grant(requested, auth.peer, now)
        key_len, encr, mac = algorithms(policy.prf_func)
        version = self._issuing_version()
        randomness = self.vault.random_bytes(2 * key_len + RAND_LEN + 3 * SPI_LEN)
        mpk, tgk, rand = (
            randomness[:key_len],
            randomness[key_len : 2 * key_len],
            randomness[2 * key_len : 2 * key_len + RAND_LEN],
        )
        # RFC 6043 6.2.1: "An SPI (or MKI) MUST be specified for each key": KMS-chosen, random,
        # so unique per ticket (MPK, and MPKi/MPKr/TGK of the REQUEST_RESP)
        spis = randomness[2 * key_len + RAND_LEN :]
        mpk_spi, mpkr_spi, tgk_spi = (spis[i * SPI_LEN : (i + 1) * SPI_LEN] for i in range(3))
        session_keys = [KeyData(KeyDataType.TGK, tgk)]
        try:
            ticket = seal_ticket(
                policy,
                tpk=self._tpk(version, policy.prf_func),
                thdr_data=thdr_for(version),
                t=self._timestamp(now),
                rand=rand,
                mpk=mpk,
                session_keys=session_keys,
                mpk_spi=mpk_spi,
                key_spis=[tgk_spi],
                encr_alg=encr,
                mac_alg=mac,
            )
        except KeyVersionNotFound:
            error = missing_version(self.store, KeyName.TICKET_PROTECTION, version)
            self._alarm_missing_version(str(error))
            raise error from None
        mpki, mpkr = mpk_split(policy.prf_func, mpk, rand)
        _, msg_encr, _ = algorithms(msg.header.prf_func)
        return build_request_resp(
            msg,
            auth.psk,
            t=self._timestamp(now),
            ticket=ticket,
            mpki=mpki,
            mpkr=mpkr if policy.flags & TpFlags.I else None,
            session_keys=session_keys,
            mpki_spi=mpk_spi,
            mpkr_spi=mpkr_spi,
            key_spis=[tgk_spi],
            kms_identity=self.kms_id,
            encr_alg=msg_encr,
        )

    # --- Ticket Resolve ---------------------------------------------------------------------

    def _resolve(self, msg: Message, auth: _Authenticated, now: float) -> bytes:
        self._check_kms(msg)
        self._check_own_identity(auth)
        if msg.find(Ticket) is None:
            raise Refusal(ErrNo.INVALID_TICKET, "no TICKET")
        try:
            opened = open_ours(msg, self.vault, self.kms_id, self.store)
        except NotOurs as exc:
            raise Refusal(ErrNo.INVALID_TICKET, str(exc)) from None
        except KeyVersionUnavailable as exc:
            self._alarm_missing_version(str(exc))
            raise
        if not within_validity(opened, now):
            raise Refusal(ErrNo.INVALID_TICKET, "the ticket is outside its validity")
        if auth.peer not in allowed_responders(opened):
            raise Refusal(ErrNo.INVALID_ID, "the responder is not allowed by the ticket")
        rand_kms = None
        if opened.flags & TpFlags.I:
            try:
                verify_initiator_data(msg, opened.mpkr)
            except MikeyError:
                raise Refusal(ErrNo.INVALID_TICKET, "Initiator Data does not verify") from None
            rand_kms = self.vault.random_bytes(max(len(opened.mpkr), RAND_LEN))
        _, msg_encr, _ = algorithms(msg.header.prf_func)
        answer = build_resolve_resp(
            msg,
            auth.psk,
            t=self._timestamp(now),
            opened=opened,
            responder_identity=auth.peer_data,
            rand_kms=rand_kms,
            kms_identity=self.kms_id,
            encr_alg=msg_encr,
        )
        ticket = msg.find(Ticket)
        assert ticket is not None
        self.store.add_resolution(
            Resolution(
                ticket_id(ticket.ticket_data), auth.peer, rand_kms or b"", now, auth.peer_data
            )
        )
        return answer


def _without_k(policy: TicketPolicy) -> TicketPolicy:
    return dataclasses.replace(policy, flags=policy.flags & ~TpFlags.K)


def _err(exc: MikeyError) -> ErrNo:
    try:
        return ErrNo(int(exc.err))
    except ValueError:
        return ErrNo.UNSPECIFIED


def _ntp(unix: float) -> bytes:
    return unix_to_ntp64(unix).to_bytes(8, "big")


__all__ = ["TicketCore", "TicketSettings", "ticket_raw"]
