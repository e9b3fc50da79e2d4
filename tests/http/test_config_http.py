"""[ue_http_listener] and [x1_listener] settings: off unless enabled, defaults from the gRPC
listeners, every open HTTP detail a setting, unknown keys refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware.config import load
from firmware.core.errors import ConfigError
from tests.core.test_config import GOOD


def _load(tmp_path: Path, extra: str = ""):  # type: ignore[no-untyped-def]
    path = tmp_path / "kmsnode.toml"
    path.write_text(GOOD + extra)
    return load(path)


def test_both_http_listeners_are_off_in_a_production_config_without_them(tmp_path: Path) -> None:
    cfg = _load(tmp_path)
    assert not cfg.ue_http.enabled and not cfg.x1.enabled


def test_the_https_listeners_default_to_the_grpc_listeners_tls_files(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "\n[ue_http_listener]\nenabled = true\n[x1_listener]\nenabled = true\n")
    assert cfg.ue_http.enabled and cfg.ue_http.cert == cfg.ue_listener.cert
    assert cfg.ue_http.path == "/mikey" and cfg.ue_http.content_type == "application/mikey"
    assert cfg.x1.client_ca == cfg.li_listener.client_ca and cfg.x1.path == "/X1/NE"


def test_every_open_http_detail_is_a_setting(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        """
[ue_http_listener]
enabled = true
port = 8443
path = "/kms"
content_type = "application/vnd.example.mikey"
body_encoding = "base64"
error_header = "X-Err"
reason_header = "X-Reason"
tls_min_version = "1.3"
max_body_bytes = 1024
[x1_listener]
path = "/x1"
ne_identifier = "NE-1"
admf_identifiers = ["ADMF-1"]
admf_binding = "none"
version = "v1.6.1"
request_content_types = ["application/xml", "text/xml"]
deactivate_all = false
max_depth = 20
""",
    )
    u, x = cfg.ue_http, cfg.x1
    assert (u.port, u.path, u.body_encoding, u.error_header, u.tls_min_version) == (
        8443,
        "/kms",
        "base64",
        "X-Err",
        "1.3",
    )
    assert u.limits.max_body_bytes == 1024 and u.reason_header == "X-Reason"
    assert (x.ne_identifier, x.admf_identifiers, x.admf_binding, x.version) == (
        "NE-1",
        ("ADMF-1",),
        "none",
        "v1.6.1",
    )
    assert x.request_content_types == ("application/xml", "text/xml") and not x.deactivate_all


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("\n[ue_http_listener]\nbogus = 1\n", "bogus"),
        ('\n[ue_http_listener]\nbody_encoding = "hex"\n', "body_encoding"),
        ('\n[ue_http_listener]\npath = "mikey"\n', "path"),
        ('\n[ue_http_listener]\ntls_identity = "gba"\n', "tls_identity"),
        ("\n[x1_listener]\nmax_depth = 0\n", "max_depth"),
        ('\n[x1_listener]\nversion = "1.11"\n', "version"),
        ('\n[x1_listener]\nadmf_binding = "cn"\n', "admf_binding"),
        ('\n[roles]\nx1 = ["admf.li.example.net"]\n', "SAN type"),
    ],
)
def test_refuses_bad_http_listener_settings(tmp_path: Path, extra: str, message: str) -> None:
    text = GOOD + extra
    if "[roles]\nx1" in extra:
        text = GOOD.replace("[roles]\n", '[roles]\nx1 = ["admf.li.example.net"]\n')
    path = tmp_path / "kmsnode.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(path)


def test_x1_is_a_role_of_the_roles_section(tmp_path: Path) -> None:
    path = tmp_path / "kmsnode.toml"
    path.write_text(GOOD.replace("[roles]\n", '[roles]\nx1 = ["dns:admf.li.example.net"]\n'))
    assert load(path).roles.members["x1"] == ("dns:admf.li.example.net",)


def test_worker_processes_need_fixed_ports_for_the_https_listeners_too(tmp_path: Path) -> None:
    shared = (
        GOOD.replace('data_dir = "data"', 'data_dir = "data"\nprocesses = 2')
        .replace("port = 0", "port = 7443", 1)
        .replace("port = 0", "port = 7444", 1)
        + '\n[store]\nurl = "postgresql://kms@127.0.0.1/kms"\n'
    )
    path = tmp_path / "kmsnode.toml"
    path.write_text(shared + "\n[x1_listener]\nenabled = true\nport = 7446\n")
    assert load(path).processes == 2
    path.write_text(shared + "\n[ue_http_listener]\nenabled = true\nport = 0\n")
    with pytest.raises(ConfigError, match="fixed listener ports"):
        load(path)


def test_the_appliance_config_keeps_the_https_listeners_off(tmp_path: Path) -> None:
    # The appliance writes its own config (image/appliance.py, never dev-init's): MIKEY over
    # HTTPS and X1 stay off, and its firewall opens only the gRPC listeners.
    from image.appliance import config_text

    path = tmp_path / "kmsnode.toml"
    path.write_text(config_text("sip:kms.example.net", {"df2": ["dns:df2.example.net"]}, {}))
    config = load(path)
    assert not config.ue_http.enabled and not config.x1.enabled
