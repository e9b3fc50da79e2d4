"""A small in-test KMS built only from firmware.mikey's KMS building blocks (software TPK behind an
HMAC port, as the HSM's is).  It names every key it issues with an SPI unique to the ticket
(RFC 6043 6.2.1), draws its RANDs as long as the keys they protect (12.1), and issues MPK and TGK
of ``key_len`` bytes under the requested policy's algorithms."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

from firmware.mikey.codec import KeyData, TicketPolicy, Timestamp, TpFlags
from firmware.mikey.constants import DataType, IdRole, KeyDataType, TsType
from firmware.mikey.crypto import mpk_split
from firmware.mikey.kms import build_request_resp, build_resolve_resp, verify_initial_psk
from firmware.mikey.message import decode
from firmware.mikey.prf import PrfFunc, hmac_digest, prf_with_hmac
from firmware.mikey.ticket import open_ticket, seal_ticket


def ntp_t(n: int) -> Timestamp:
    return Timestamp(TsType.NTP_UTC, (0xE0000000 + n).to_bytes(4, "big") + bytes(4))


@dataclass
class KmsDouble:
    identity: bytes
    psks: dict[bytes, bytes]  # user identity -> PSK
    tpk: bytes = bytes(range(0x10, 0x20))
    prf: PrfFunc = PrfFunc.MIKEY_1  # the tickets' Ticket Policy PRF (the TPK port's hash)
    key_len: int = 16  # MPK and TGK
    counter: int = 0
    resolved: list[tuple[bytes, bytes]] = field(default_factory=list)
    spis: list[tuple[bytes, bytes]] = field(default_factory=list)  # (MPK SPI, TGK SPI) per ticket

    def _rand(self, n: int = 16) -> bytes:
        out = b""
        while len(out) < n:
            self.counter += 1
            out += hmac.digest(b"kms-double", self.counter.to_bytes(4, "big"), "sha256")
        return out[:n]

    def _tpk_port(self, wants: Sequence[tuple[bytes, int]]) -> list[bytes]:
        """The TPK as the node's HSM gives it: a PRF port (one call per derived key set)."""
        mac = lambda d: hmac_digest(self.prf, self.tpk, d)  # noqa: E731
        return [prf_with_hmac(self.prf, mac, label, n) for label, n in wants]

    def handle_request(self, data: bytes, granted: TicketPolicy) -> bytes:
        req = decode(data)
        assert req.header.data_type == DataType.REQUEST_INIT_PSK
        idri = req.idr(IdRole.IDRi)
        assert idri is not None
        psk = self.psks[idri.data]
        verify_initial_psk(req, psk, kms_identity=self.identity)
        mpk = self._rand(self.key_len)
        tgk = KeyData(KeyDataType.TGK, self._rand(self.key_len))
        rand = self._rand(max(16, self.key_len))
        mpk_spi, tgk_spi = self._rand(4), self._rand(4)
        self.spis.append((mpk_spi, tgk_spi))
        ticket = seal_ticket(
            granted,
            tpk=self._tpk_port,
            thdr_data=b"\x00\x01",
            t=ntp_t(1),
            rand=rand,
            mpk=mpk,
            session_keys=[tgk],
            mpk_spi=mpk_spi,
            key_spis=[tgk_spi],
        )
        mpki, mpkr = mpk_split(granted.prf_func, mpk, rand)
        return build_request_resp(
            req,
            psk,
            t=ntp_t(2),
            ticket=ticket,
            mpki=mpki,
            mpkr=mpkr if granted.flags & TpFlags.I else None,
            session_keys=[tgk],
            mpki_spi=mpk_spi,
            mpkr_spi=mpk_spi,
            key_spis=[tgk_spi],
            kms_identity=self.identity,
        )

    def handle_resolve(self, data: bytes) -> bytes:
        req = decode(data)
        idrr = req.idr(IdRole.IDRr)
        assert idrr is not None
        psk = self.psks[idrr.data]
        verify_initial_psk(req, psk, kms_identity=self.identity)
        opened = open_ticket(req.ticket_bytes(), self._tpk_port)
        assert idrr.data in opened.idr_r
        rand_kms = self._rand(max(16, self.key_len))
        self.resolved.append((idrr.data, rand_kms))
        return build_resolve_resp(
            req,
            psk,
            t=ntp_t(3),
            opened=opened,
            responder_identity=idrr.data,
            rand_kms=rand_kms,
            kms_identity=self.identity,
        )
