"""A real node with [ue_http_listener] on (port 0), and an independent HTTPS client: the standard
library's http.client over ssl (keep-alive: one connection per `UeHttps`)."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hsm.softhsm import SoftHsmToken
from hsm.vault import VaultSettings
from tests.api.conftest import RunningNode, start_node

UE_HTTP = """
[ue_http_listener]
enabled = true
host = "127.0.0.1"
port = 0
{extra}
"""

MIKEY = "application/mikey"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class UeHttps:
    """One keep-alive HTTPS connection to the node's MIKEY-over-HTTPS listener."""

    rn: RunningNode
    client: str | None = None  # a client certificate stem of the dev PKI (pki/<stem>.pem)
    path: str = "/mikey"
    _conn: http.client.HTTPSConnection | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        assert self.rn.node.ue_http is not None
        return self.rn.node.ue_http.port

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.rn.pki / "ca.pem"))
        if self.client is not None:
            ctx.load_cert_chain(
                self.rn.pki / f"{self.client}.pem", self.rn.pki / f"{self.client}.key"
            )
        return ctx

    @property
    def conn(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(
                "localhost", self.port, context=self.context(), timeout=30
            )
        return self._conn

    def post(
        self,
        body: bytes,
        content_type: str | None = MIKEY,
        method: str = "POST",
        path: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if content_type is not None:
            sent["Content-Type"] = content_type
        self.conn.request(method, path or self.path, body=body, headers=sent)
        response = self.conn.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)

    def exchange(self, data: bytes) -> bytes:
        """A MIKEY exchange that must be answered 200 application/mikey."""
        answer = self.post(data)
        assert answer.status == 200, answer
        assert answer.headers["content-type"] == MIKEY
        return answer.body

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def start_http_node(
    tmp_path: Path,
    token: SoftHsmToken,
    settings: VaultSettings,
    extra: str = "",
    **kw: object,
) -> RunningNode:
    return start_node(
        tmp_path,
        token,
        settings,
        extra_config=UE_HTTP.format(extra=extra),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def http_node(
    tmp_path_factory: pytest.TempPathFactory,
    softhsm_token: SoftHsmToken,
    vault_settings: VaultSettings,
    _vault_keys: None,
) -> Iterator[RunningNode]:
    rn = start_http_node(
        tmp_path_factory.mktemp("http"),
        softhsm_token,
        vault_settings,
        extra="max_body_bytes = 4096\nrequest_timeout = 2.0",
    )
    try:
        yield rn
    finally:
        rn.node.stop(1.0)


@pytest.fixture
def https(http_node: RunningNode) -> Iterator[UeHttps]:
    client = UeHttps(http_node)
    try:
        yield client
    finally:
        client.close()
