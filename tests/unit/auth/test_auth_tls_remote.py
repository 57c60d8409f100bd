"""The listener's certificate, the listen setting, and the client's choice of remote."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from corral.auth import tls
from corral.client import remote as remotes
from corral.errors import InvalidInput
from corral.settings import load_settings, parse_listen


def test_self_signed_certificate_made_once_with_a_private_key(tmp_path: Path) -> None:
    cert, key = tls.ensure_certificate(tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"BEGIN CERTIFICATE" in cert.read_bytes() and b"PRIVATE KEY" in key.read_bytes()
    fp = tls.fingerprint(cert.read_bytes())
    assert len(fp.split(":")) == 32
    assert tls.ensure_certificate(tmp_path) == (cert, key) and tls.fingerprint(cert.read_bytes()) == fp  # kept


def test_own_certificate_needs_both_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="give both"):
        tls.ensure_certificate(tmp_path, cert=tmp_path / "c.pem")
    with pytest.raises(InvalidInput, match="does not exist"):
        tls.ensure_certificate(tmp_path, cert=tmp_path / "c.pem", key=tmp_path / "k.pem")


@pytest.mark.parametrize("value", ["8443", "host:", ":8443", "h:0", "h:70000", "h:x"])
def test_bad_listen_values_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(InvalidInput, match="is not ADDR:PORT"):
        load_settings({"CORRAL_HOME": str(tmp_path), "CORRAL_LISTEN": value})
    with pytest.raises(InvalidInput):
        parse_listen(value)


def test_listen_values() -> None:
    assert parse_listen("0.0.0.0:8443") == ("0.0.0.0", 8443)
    assert parse_listen("[::1]:9000") == ("::1", 9000)


def test_remote_selection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "remote.json"
    monkeypatch.setenv(remotes.CONFIG_ENV, str(cfg))
    monkeypatch.delenv("CORRAL_URL", raising=False)
    monkeypatch.delenv("CORRAL_TOKEN", raising=False)
    assert remotes.selected() is None  # the unix socket
    remotes.save(remotes.Remote(url="https://h:1", token="crl_x", cert_pem="PEM"))
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert remotes.selected() == remotes.Remote(url="https://h:1", token="crl_x", cert_pem="PEM")
    monkeypatch.setenv("CORRAL_URL", "https://h:1/")
    monkeypatch.setenv("CORRAL_TOKEN", "crl_y")
    chosen = remotes.selected()
    assert chosen is not None and chosen.token == "crl_y" and chosen.cert_pem == "PEM"  # the pin of that URL
    monkeypatch.setenv("CORRAL_URL", "http://h:1")
    with pytest.raises(InvalidInput, match="not an https:// URL"):
        remotes.selected()
    monkeypatch.delenv("CORRAL_TOKEN")
    with pytest.raises(InvalidInput, match="set both"):
        remotes.selected()
    assert remotes.forget() and not cfg.exists()
