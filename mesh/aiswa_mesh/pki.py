"""Create the local certificate authority and the gateway's TLS server certificate.

Clients of the gateway trust ``gateway-ca.pem``. The files are reused while
they are valid, so that clients keep working across restarts, and replaced
when they are missing, damaged, about to expire or no longer match each other.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("aiswa.pki")

CA_CERT_FILE = "gateway-ca.pem"
CA_KEY_FILE = "gateway-ca-key.pem"
SERVER_CERT_FILE = "gateway.pem"
SERVER_KEY_FILE = "gateway-key.pem"

CA_LIFETIME = datetime.timedelta(days=3650)
SERVER_LIFETIME = datetime.timedelta(days=90)
# A certificate is replaced once less than this remains of its validity, so a
# platform that runs for weeks never serves an expired certificate.
CA_RENEW_BEFORE = datetime.timedelta(days=90)
SERVER_RENEW_BEFORE = datetime.timedelta(days=30)
# Backdating notBefore tolerates clients whose clocks run slightly behind.
BACKDATE = datetime.timedelta(minutes=5)

SERVER_DNS_NAMES = ("localhost",)
SERVER_IP_ADDRESSES = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


@dataclass(frozen=True, slots=True)
class GatewayTls:
    """Paths of the gateway's PEM files: the CA certificate, the server certificate and its key."""

    ca_cert: Path
    cert: Path
    key: Path


def ensure_gateway_tls(folder: Path) -> GatewayTls:
    """Create or reuse the gateway CA and server certificate under ``folder``.

    Private keys are written with mode 0600. A new CA also replaces the server
    certificate, and clients must then trust the new ``gateway-ca.pem``.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    tls = GatewayTls(
        ca_cert=folder / CA_CERT_FILE,
        cert=folder / SERVER_CERT_FILE,
        key=folder / SERVER_KEY_FILE,
    )
    ca_key_path = folder / CA_KEY_FILE
    # The lock keeps two launchers from writing a CA and a server certificate
    # that belong to different keys.
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        now = _now()
        ca = _load_valid_ca(tls.ca_cert, ca_key_path, now)
        renewed_ca = ca is None
        if ca is None:
            log.info("creating a new gateway CA in %s, so clients must trust the new %s",
                     folder, CA_CERT_FILE)
            ca = _create_ca(now)
            _write_key(ca_key_path, ca[1])
            _write_cert(tls.ca_cert, ca[0])
        ca_cert, ca_key = ca
        if renewed_ca or not _server_cert_is_valid(tls.cert, tls.key, ca_cert, now):
            log.info("issuing a new gateway server certificate in %s", folder)
            cert, key = _issue_server_cert(ca_cert, ca_key, now)
            _write_key(tls.key, key)
            _write_cert(tls.cert, cert)
    return tls


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _load_valid_ca(
    cert_path: Path, key_path: Path, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    loaded = _load_pair(cert_path, key_path)
    if loaded is None:
        return None
    cert, key = loaded
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        log.warning("%s is not a CA certificate (no basicConstraints); replacing it", cert_path)
        return None
    if not constraints.ca:
        log.warning("%s is not a CA certificate; replacing it", cert_path)
        return None
    if not _is_current(cert, now, CA_RENEW_BEFORE):
        log.info("%s expires on %s or is not yet valid; replacing it",
                 cert_path, cert.not_valid_after_utc.date())
        return None
    return cert, key


def _server_cert_is_valid(
    cert_path: Path, key_path: Path, ca_cert: x509.Certificate, now: datetime.datetime
) -> bool:
    loaded = _load_pair(cert_path, key_path)
    if loaded is None:
        return False
    cert, _ = loaded
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        log.info("%s was not issued by the current gateway CA; replacing it", cert_path)
        return False
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        log.info("%s has no subjectAltName; replacing it", cert_path)
        return False
    dns_names = set(names.get_values_for_type(x509.DNSName))
    ip_addresses = set(names.get_values_for_type(x509.IPAddress))
    if dns_names != set(SERVER_DNS_NAMES) or ip_addresses != set(SERVER_IP_ADDRESSES):
        log.info("%s names %s, not the expected gateway names; replacing it",
                 cert_path, sorted(map(str, dns_names | ip_addresses)))
        return False
    if not _is_current(cert, now, SERVER_RENEW_BEFORE):
        log.info("%s expires on %s or is not yet valid; replacing it",
                 cert_path, cert.not_valid_after_utc.date())
        return False
    return True


def _load_pair(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """Load a certificate and its key, or return None when either is missing or damaged."""
    if not cert_path.exists() or not key_path.exists():
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as exc:
        log.warning("cannot read %s or %s (%s); replacing them", cert_path, key_path, exc)
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        log.warning("%s does not contain the key of %s; replacing both", key_path, cert_path)
        return None
    return cert, key


def _is_current(
    cert: x509.Certificate, now: datetime.datetime, renew_before: datetime.timedelta
) -> bool:
    return cert.not_valid_before_utc <= now and now + renew_before < cert.not_valid_after_utc


def _create_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AI-SWA local"),
        x509.NameAttribute(NameOID.COMMON_NAME, "AI-SWA local gateway CA"),
    ])
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        # path_length=0: this CA signs only end-entity certificates.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue_server_cert(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = key.public_key()
    ca_key_id = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in SERVER_DNS_NAMES]
    names += [x509.IPAddress(address) for address in SERVER_IP_ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AI-SWA local"),
            x509.NameAttribute(NameOID.COMMON_NAME, "AI-SWA gateway"),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + SERVER_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _serial_number() -> int:
    # RFC 5280 allows at most 20 octets and requires a positive number, so 159 bits.
    return secrets.randbits(159) | 1


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    _write_atomically(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a temporary file created with ``mode``, then rename it over ``path``."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    # os.open applies the umask, so set the mode again explicitly.
    os.chmod(temporary, mode)
    os.replace(temporary, path)
