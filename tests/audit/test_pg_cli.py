"""`kmsnode audit verify` and `kmsnode audit accept-gap --chain` on a cluster's PostgreSQL store
(the suite's server, the SoftHSM audit key): verify prints every chain and exits 0 only when
all are intact, naming the node and first bad record of a tampered one; accept-gap works per
chain, defaults to this node's, refuses for a chain of this node while it runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from firmware import cli
from firmware.audit.log import AuditLog
from firmware.devpki import make_dev_pki
from hsm.softhsm import SoftHsmToken
from hsm.vault import Pkcs11Vault, VaultSettings
from tests.api.conftest import CONFIG, ROLES
from tests.audit.conftest import ChainDb

pytestmark = pytest.mark.softhsm


def _config(tmp_path: Path, token: SoftHsmToken, node_id: str, url: str | None) -> Path:
    """Node `node_id`'s config on the suite's token, in a data folder of its own."""
    pki = tmp_path / "pki"
    if not pki.exists():
        make_dev_pki(pki)
    text = CONFIG.format(
        label=token.label,
        pin_file=token.pin_file,
        forking="true",
        roles=ROLES,
        listener_extra="",
        workers=2,
    )
    text = text.replace('data_dir = "data"', f'data_dir = "{node_id}"\nnode_id = "{node_id}"')
    if url is not None:
        text += f'\n[store]\nurl = "{url}"\n'
    path = tmp_path / f"{node_id}.toml"
    path.write_text(text)
    (tmp_path / node_id).mkdir(exist_ok=True)
    return path


def _kmsnode(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def chains(chain_db: ChainDb, vault_settings: VaultSettings, _vault_keys: None) -> ChainDb:
    """Chains a, b and c of 7 records each (NODE_STARTED + 6), their writers closed."""
    with Pkcs11Vault.open(vault_settings, monitor=False) as vault:
        for chain in ("a", "b", "c"):
            log = AuditLog(chain_db.medium(chain), vault.audit_hmac)
            for i in range(6):
                log.append(1000.0 + i, "KEY_RELEASE", {"i": i})
            log.close()
    return chain_db


def test_audit_verify_prints_every_chain_and_names_the_tampered_one(
    chains: ChainDb, softhsm_token: SoftHsmToken, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(_config(tmp_path, softhsm_token, "a", chains.url))
    code, out, err = _kmsnode(capsys, "audit", "verify", "--config", config)
    assert code == 0, out + err
    for chain in ("a", "b", "c"):
        assert f"audit chain {chain} intact: 7 records" in out
    assert "3 audit chain(s), 21 records: every chain intact" in out

    chains.sql(
        "UPDATE audit_records SET record = set_byte(record, 9, get_byte(record, 9) # 4)"
        " WHERE chain = 'b' AND seq = 3"
    )
    code, out, err = _kmsnode(capsys, "audit", "verify", "--config", config)
    assert code == 1
    assert "audit chain a intact: 7 records" in out and "audit chain c intact: 7 records" in out
    assert "audit chain b NOT intact: first bad record 3 of 7 (record 3 was changed" in out
    assert "21 records: 1 NOT intact" in out


def test_accept_gap_acknowledges_one_chain_and_that_node_starts_again(
    chains: ChainDb,
    softhsm_token: SoftHsmToken,
    vault_settings: VaultSettings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    chains.sql("DELETE FROM audit_records WHERE chain = 'b' AND seq > 5")
    chains.sql("DELETE FROM audit_records WHERE chain = 'c' AND seq > 6")
    on_a = str(_config(tmp_path, softhsm_token, "a", chains.url))
    on_c = str(_config(tmp_path, softhsm_token, "c", chains.url))
    code, out, err = _kmsnode(
        capsys, "audit", "accept-gap", "--config", on_a, "--chain", "b", "--reason", "disk swap"
    )
    assert code == 0, err
    assert "gap accepted in audit chain b: records 6..7 (2 missing)" in out
    code, out, err = _kmsnode(
        capsys, "audit", "accept-gap", "--config", on_c, "--reason", "restored"
    )  # this node's own chain by default
    assert code == 0, err
    assert "gap accepted in audit chain c: records 7..7 (1 missing)" in out

    with Pkcs11Vault.open(vault_settings, monitor=False) as vault:
        for chain in ("b", "c"):
            log = AuditLog(chains.medium(chain), vault.audit_hmac)
            assert len(log.start_findings.accepted_gaps) == 1
            log.close()
    code, out, err = _kmsnode(capsys, "audit", "verify", "--config", on_a)
    assert code == 0, out + err
    assert "audit chain b: acknowledged gap: records 6..7 (2 missing)" in out
    assert "audit chain c: acknowledged gap: records 7..7 (1 missing)" in out


def test_accept_gap_refuses_a_chain_of_this_node_while_it_runs_not_another_nodes(
    chains: ChainDb, softhsm_token: SoftHsmToken, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chains.sql("DELETE FROM audit_records WHERE chain = 'c' AND seq > 6")
    on_a = _config(tmp_path, softhsm_token, "a", chains.url)
    runtime = tmp_path / "a" / "listeners.json"
    runtime.write_text(json.dumps({"pid": os.getpid(), "ue": "x:1", "li": "x:2"}))
    for chain in ("a", "a-w1"):
        code, out, err = _kmsnode(
            capsys, "audit", "accept-gap", "--config", str(on_a), "--chain", chain, "--reason", "r"
        )
        assert code == 1 and "the node is running" in err, err
    code, out, err = _kmsnode(
        capsys, "audit", "accept-gap", "--config", str(on_a), "--chain", "c", "--reason", "r"
    )
    assert code == 0, err  # node c is not this one: its chain's writer lock is the guard
    assert "gap accepted in audit chain c" in out


def test_accept_gap_refuses_a_chain_while_another_node_writes_it(
    chains: ChainDb,
    softhsm_token: SoftHsmToken,
    vault_settings: VaultSettings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    on_a = str(_config(tmp_path, softhsm_token, "a", chains.url))
    with Pkcs11Vault.open(vault_settings, monitor=False) as vault:
        writer = AuditLog(chains.medium("b"), vault.audit_hmac)
        try:
            code, _, err = _kmsnode(
                capsys, "audit", "accept-gap", "--config", on_a, "--chain", "b", "--reason", "r"
            )
        finally:
            writer.close()
    assert code == 1 and "the audit chain b is in use by another process" in err


def test_accept_gap_refuses_a_chain_without_a_shared_store(
    softhsm_token: SoftHsmToken, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(_config(tmp_path, softhsm_token, "a", None))
    code, _, err = _kmsnode(
        capsys, "audit", "accept-gap", "--config", config, "--chain", "a", "--reason", "r"
    )
    assert code == 2 and "--chain needs [store] url" in err  # a configuration error
    assert not (tmp_path / "a" / "audit.log").exists()
