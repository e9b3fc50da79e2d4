from __future__ import annotations

from pathlib import Path

import pytest

from firmware.core.errors import ConfigError
from firmware.store.password import read_password


def test_reads_a_file_stripping_one_trailing_newline_only(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    for raw, expected in [
        (b"pw\n", "pw"),
        (b"pw\r\n", "pw"),
        (b" pw \n\n", " pw \n"),
        (b"pw", "pw"),
    ]:
        f.write_bytes(raw)
        assert read_password(file=f) == expected


def test_reads_a_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "store-pw").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_password(credential="store-pw") == "s3cret"
    for bad in ("", "../store-pw", ".."):
        with pytest.raises(ConfigError, match="invalid"):
            read_password(credential=bad)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        read_password(credential="store-pw")


def test_refuses_unclear_or_unusable_sources_without_showing_the_content(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    with pytest.raises(ConfigError, match="exactly one"):
        read_password()
    with pytest.raises(ConfigError, match="exactly one"):
        read_password(file=f, credential="x")
    with pytest.raises(ConfigError, match="cannot read"):
        read_password(file=f)
    f.write_bytes(b"\n")
    with pytest.raises(ConfigError, match="empty"):
        read_password(file=f)
    f.write_bytes(b"\xffsecret-bytes")
    with pytest.raises(ConfigError, match="not UTF-8") as caught:
        read_password(file=f)
    assert "secret" not in str(caught.value).replace(str(f), "")
