"""The TCP listener's certificate: the user's own (CORRAL_TLS_CERT and CORRAL_TLS_KEY), or a self-signed one made
at the first start under the Corral home (``tls/cert.pem``, ``tls/key.pem``: the key mode 0600, written under umask
077 so that it is never readable by others, even for a moment). Clients pin it: `corral login` shows its SHA-256
fingerprint and keeps the certificate."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from corral.errors import InvalidInput

TLS_DIR = "tls"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"


def ensure_certificate(home: Path, cert: Path | None = None, key: Path | None = None,
                       hosts: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """(certificate, key) files to serve TLS with: the given pair, else the home's, made if missing."""
    if cert is not None or key is not None:
        if cert is None or key is None:
            raise InvalidInput("give both CORRAL_TLS_CERT and CORRAL_TLS_KEY, or neither (a self-signed one is made)")
        for p in (cert, key):
            if not p.is_file():
                raise InvalidInput(f"TLS file {p} does not exist")
        return cert, key
    d = home / TLS_DIR
    cert, key = d / CERT_FILE, d / KEY_FILE
    if cert.is_file() and key.is_file():
        return cert, key
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_pem, key_pem = self_signed(hosts)
    old = os.umask(0o077)
    try:
        tmp = key.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        os.replace(tmp, key)
        cert.with_suffix(".tmp").write_bytes(cert_pem)
        os.replace(cert.with_suffix(".tmp"), cert)
    finally:
        os.umask(old)
    os.chmod(key, 0o600)
    return cert, key


def self_signed(hosts: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM): ECDSA P-256, valid ten years, for localhost, 127.0.0.1, ::1, this host's name
    and ``hosts``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for h in ("localhost", socket.gethostname(), "127.0.0.1", "::1", *hosts):
        try:
            gn: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(h))
        except ValueError:
            gn = x509.DNSName(h)
        if gn not in names:
            names.append(gn)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"corrald on {socket.gethostname()}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def fingerprint(pem_or_der: bytes) -> str:
    """SHA-256 of the certificate's DER, as AB:CD:... (what browsers and openssl show)."""
    der = ssl.PEM_cert_to_DER_cert(pem_or_der.decode()) if pem_or_der.lstrip().startswith(b"-----") else pem_or_der
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def fetch_certificate(host: str, port: int, timeout: float = 10.0) -> bytes:
    """The PEM certificate a server presents, unverified (trust on first use: the user confirms its fingerprint)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as raw, ctx.wrap_socket(raw,
                                                                                         server_hostname=host) as s:
        der = s.getpeercert(binary_form=True)
    if not der:
        raise InvalidInput(f"{host}:{port} presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()
