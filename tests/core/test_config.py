from __future__ import annotations

from pathlib import Path

import pytest

from firmware.config import load
from firmware.core.errors import ConfigError

GOOD = """
[node]
kms_identity = "sip:KMS.ims.example.net"
data_dir = "data"

[hsm]
token_uri = "pkcs11:token=kmsnode"
pin_file = "pin"

[ue_listener]
port = 0
cert = "pki/server.pem"
key = "pki/server.key"

[li_listener]
port = 0
cert = "pki/server.pem"
key = "pki/server.key"
client_ca = "pki/ca.pem"

[roles]
df2 = ["dns:df2.li.example.net"]
admin = ["dns:admin.li.example.net"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kmsnode.toml"
    path.write_text(text)
    return path


def test_loads_defaults_and_resolves_paths_against_the_config(tmp_path: Path) -> None:
    config = load(_write(tmp_path, GOOD))
    assert config.kms_identity == "sip:kms.ims.example.net"
    assert config.data_dir == tmp_path / "data"
    assert config.state_db == tmp_path / "data" / "state.sqlite"
    assert config.hsm.pin_file == tmp_path / "pin"
    assert config.li_listener.client_ca == tmp_path / "pki" / "ca.pem"
    assert config.policy.clock_skew == 60 and config.policy.key_forking
    assert config.roles.members["df2"] == ("dns:df2.li.example.net",)
    assert config.hsm.psk_objects == 1024 and config.workers == 8


def test_reads_whole_number_settings_as_given(tmp_path: Path) -> None:
    text = GOOD.replace('pin_file = "pin"', 'pin_file = "pin"\npsk_objects = 3')
    text = text.replace('data_dir = "data"', 'data_dir = "data"\nworkers = 3')
    text = text.replace("port = 0\ncert", "port = 65535\nmax_streams = 1\ncert", 1)
    config = load(_write(tmp_path, text))
    assert config.hsm.psk_objects == 3 and config.workers == 3
    assert config.ue_listener.port == 65535 and config.ue_listener.max_streams == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('pin_file = "pin"', 'pin = "1234"'), "PIN"),
        (lambda t: t + "\n[extra]\n", "unknown section"),
        (lambda t: t.replace("[hsm]", "[hsm]\nslot = 1"), "slot"),
        (lambda t: t.replace('client_ca = "pki/ca.pem"', ""), "client_ca"),
        (lambda t: t.replace('"sip:KMS.ims.example.net"', '"kms"'), "kms_identity"),
        (lambda t: t.replace("[roles]", "[roles]\nroot = []"), "unknown setting"),
        (lambda t: t + "\n[policy]\nclock_skew = -1\n", "clock_skew"),
        (lambda t: t + "\n[policy]\nclock_skew = true\n", "clock_skew"),
        (lambda t: t + "\n[policy]\nticket_lifetime = 10\nmax_ticket_lifetime = 5\n", "lifetime"),
        (lambda t: t.replace("port = 0\ncert", "port = 70000\ncert", 1), "port"),
        (lambda t: t.replace("[node", "node"), "TOML"),
        # counts are whole numbers: a fraction is refused, not truncated (0.5 streams would be 0)
        (lambda t: t.replace('data_dir = "data"', 'data_dir = "data"\nworkers = 2.5'), "workers"),
        (lambda t: t.replace('data_dir = "data"', 'data_dir = "data"\nworkers = 0'), "at least 1"),
        (lambda t: t.replace("port = 0\ncert", "port = 7443.5\ncert", 1), "port"),
        (lambda t: t.replace("port = 0\ncert", "port = -1\ncert", 1), "port"),
        (lambda t: t.replace("port = 0\ncert", "port = 0\nmax_streams = 0.5\ncert", 1), "streams"),
        (lambda t: t.replace('pin_file = "pin"', 'pin_file = "pin"\npsk_objects = 0'), "psk_"),
        (lambda t: t.replace('pin_file = "pin"', 'pin_file = "pin"\npsk_objects = true'), "psk_"),
    ],
)
def test_refuses_a_bad_config_naming_the_setting(tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load(_write(tmp_path, edit(GOOD)))
    assert "1234" not in str(info.value)


def test_names_a_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "nope.toml")


def test_the_hsm_settings_reach_the_vault_as_configured(tmp_path: Path) -> None:
    from firmware.node import vault_settings
    from hsm.pin import PinKind

    text = GOOD.replace('pin_file = "pin"', 'pin_file = "pin"\npsk_objects = 3\nprobe_interval = 5')
    settings = vault_settings(load(_write(tmp_path, text)))
    assert settings.psk_objects == 3 and settings.probe_interval == 5
    assert settings.token_uri == "pkcs11:token=kmsnode" and settings.session_copies
    assert settings.pin_source.kind is PinKind.FILE
    assert settings.pin_source.where == str(tmp_path / "pin")
