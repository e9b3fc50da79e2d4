"""A real node with [x1_listener] on (port 0, mutual TLS 1.3, the dev PKI's x1 certificate as the
ADMF), the Xk fixtures beside it, and an independent X1 client: http.client over ssl, answers
parsed with the standard library's ElementTree (not our lxml codec)."""

from __future__ import annotations

import datetime
import http.client
import ssl
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import pytest
from cryptography import x509

from firmware.devpki import issue
from hsm.softhsm import SoftHsmToken
from hsm.vault import VaultSettings
from tests.xk.conftest import AlarmWatcher, Xk, start_xk_node

DATA = Path(__file__).parent / "data"
NS = "http://uri.etsi.org/03221/X1/2017/10"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
ADMF = "admf.li.example.net"
NE = "kmsnode-test"

X1_CONFIG = f"""
[x1_listener]
enabled = true
host = "127.0.0.1"
port = 0
ne_identifier = "{NE}"
admf_identifiers = ["{ADMF}", "admf-2.li.example.net"]
max_depth = 16
max_messages = 4
"""
ROLES = (
    'df2 = ["dns:df2.li.example.net", "dns:df2-b.li.example.net"]\n'
    'admin = ["dns:admin.li.example.net"]\n'
    'x1 = ["dns:admf.li.example.net", "dns:admf-2.li.example.net"]'
)


def timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def x1_time(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def request(name: str, **values: str) -> bytes:
    """Fixture `name`.xml with its placeholders filled (header defaults: our ADMF and NE)."""
    defaults = {"admf": ADMF, "ne": NE, "ts": timestamp(), "tid": str(uuid.uuid4())}
    text = Template((DATA / f"{name}.xml").read_text()).substitute({**defaults, **values})
    return text.encode()


@dataclass
class X1Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def root(self) -> ET.Element:
        return ET.fromstring(self.body)

    def messages(self) -> list[ET.Element]:
        return self.root.findall(f"{{{NS}}}x1ResponseMessage")

    def kinds(self) -> list[str]:
        return [m.get(f"{{{XSI}}}type", "").split(":")[-1] for m in self.messages()]

    def codes(self) -> list[int | None]:
        found: list[int | None] = []
        for m in self.messages():
            code = m.find(f"{{{NS}}}errorInformation/{{{NS}}}errorCode")
            found.append(int(code.text or "") if code is not None else None)
        return found

    def find(self, path: str) -> ET.Element | None:
        """`path` of x1 local names below the first response message."""
        element: ET.Element | None = self.messages()[0]
        for name in path.split("/"):
            assert element is not None
            element = element.find(f"{{{NS}}}{name}")
        return element


@dataclass
class X1Client:
    xk: Xk
    client: str | None = "x1"
    _conn: http.client.HTTPSConnection | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        assert self.xk.node.x1 is not None
        return self.xk.node.x1.port

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.xk.rn.pki / "ca.pem"))
        if self.client is not None:
            pki = self.xk.rn.pki
            ctx.load_cert_chain(pki / f"{self.client}.pem", pki / f"{self.client}.key")
        return ctx

    def post(self, body: bytes, method: str = "POST", path: str = "/X1/NE") -> X1Answer:
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(
                "localhost", self.port, context=self.context(), timeout=30
            )
        self._conn.request(method, path, body=body, headers={"Content-Type": "application/xml"})
        response = self._conn.getresponse()
        data = response.read()
        return X1Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)

    def send(self, name: str, **values: str) -> X1Answer:
        answer = self.post(request(name, **values))
        assert answer.status == 200, answer
        return answer

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class X1World:
    xk: Xk
    admf: X1Client

    def destination(self, address: str = "dns:df2.li.example.net") -> str:
        did = new_id()
        answer = self.admf.send("create_destination", did=did, friendly="DF2", address=address)
        assert answer.kinds() == ["CreateDestinationResponse"], answer.body
        return did

    def activate(self, target: str, did: str, **kw: Any) -> tuple[str, str]:
        """An active task for `target` delivering to `did`; returns (xid, liid)."""
        xid = kw.pop("xid", new_id())
        liid = kw.pop("liid", f"X1-{xid[:8]}")
        now = self.xk.rn.clock.now
        values = {
            "xid": xid,
            "did": did,
            "target": target,
            "target_kind": "sipUri" if target.startswith("sip") else "telUri",
            "liid": liid,
            "start": x1_time(now - 60),
            "end": x1_time(now + 86400),
            **kw,
        }
        answer = self.admf.send("activate_task", **values)
        assert answer.kinds() == ["ActivateTaskResponse"], answer.body
        return xid, liid


@pytest.fixture(scope="module")
def x1world(
    tmp_path_factory: pytest.TempPathFactory,
    softhsm_token: SoftHsmToken,
    vault_settings: VaultSettings,
    _vault_keys: None,
) -> Iterator[X1World]:
    rn = start_xk_node(
        tmp_path_factory.mktemp("x1"),
        softhsm_token,
        vault_settings,
        extra_config=X1_CONFIG,
        roles=ROLES,
    )
    issue(rn.pki, "df2-b", [x509.DNSName("df2-b.li.example.net")])
    issue(rn.pki, "admf-2", [x509.DNSName("admf-2.li.example.net")], uid="admf-2.li.example.net")
    xk = Xk(rn)
    admf = X1Client(xk)
    try:
        yield X1World(xk, admf)
    finally:
        admf.close()
        xk.close()
        rn.node.stop(1.0)


@pytest.fixture
def watcher(x1world: X1World) -> Iterator[AlarmWatcher]:
    w = AlarmWatcher(x1world.xk.channel("li", "admin"))
    try:
        yield w
    finally:
        w.close()
