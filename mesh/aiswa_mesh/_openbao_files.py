"""Files that the local OpenBao bootstrap writes.

The listener's TLS material is a small local CA and a server certificate for
127.0.0.1 and, with pods, the bridge's address. Secret files are readable only by their owner.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address as IPAddress
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("aiswa.openbao")

LISTENER_CA_LIFETIME = datetime.timedelta(days=3650)
LISTENER_CERT_LIFETIME = datetime.timedelta(days=365)
# OpenBao.config() replaces the listener certificate once less than this
# remains. NOTE: a server that runs without a restart through those last 30
# days keeps serving the old certificate until it expires.
LISTENER_RENEW_BEFORE = datetime.timedelta(days=30)
BACKDATE = datetime.timedelta(minutes=5)
LISTENER_DNS_NAMES = ("localhost",)
LISTENER_IP_ADDRESSES = ("127.0.0.1",)


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """Paths of the OpenBao listener's CA certificate, server certificate and key."""

    ca_cert: Path
    cert: Path
    key: Path


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed and set its mode to 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_file_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a temporary file created with ``mode``, then rename it over ``path``.

    Run as root, the file is owned by the owner of its folder.
    """
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            # mkstemp creates the file with mode 0600, so a secret is never
            # readable by others, even before this chmod.
            os.fchmod(stream.fileno(), mode)
            if os.geteuid() == 0:
                # `make up` gives OpenBao's folder to OpenBao's user. Without
                # this, `aiswa mesh render` as root would leave a config that
                # OpenBao cannot read when it next starts.
                folder = os.stat(path.parent)
                os.fchown(stream.fileno(), folder.st_uid, folder.st_gid)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_secret(path: Path, value: str) -> None:
    """Store ``value`` in ``path`` with mode 0600, in a folder with mode 0700."""
    ensure_private_dir(path.parent)
    write_file_atomically(path, (value + "\n").encode(), 0o600)


def read_secret(path: Path) -> str:
    """Return the secret stored in ``path``, without its trailing newline."""
    return path.read_text().strip()


# --- the OpenBao listener's certificate -------------------------------------


def ensure_listener_tls(folder: Path,
                        ip_addresses: Sequence[str] = LISTENER_IP_ADDRESSES) -> ListenerTls:
    """Create or reuse a local CA and the listener's server certificate under ``folder``.

    The server certificate names ``localhost`` and every address of
    ``ip_addresses``; a certificate that names other addresses is replaced.

    The files are reused while they are valid, so that clients that trust
    ``ca.pem`` keep working across restarts. A new CA also replaces the server
    certificate.
    """
    ensure_private_dir(folder)
    tls = ListenerTls(ca_cert=folder / "ca.pem", cert=folder / "server.pem",
                      key=folder / "server-key.pem")
    ca_key_path = folder / "ca-key.pem"
    now = _now()
    ca = _load_pair(tls.ca_cert, ca_key_path)
    if ca is not None and not _is_current(ca[0], now):
        ca = None
    new_ca = ca is None
    if ca is None:
        log.info("creating the OpenBao listener CA in %s", folder)
        ca = _create_ca(now)
        write_file_atomically(ca_key_path, _key_pem(ca[1]), 0o600)
        write_file_atomically(tls.ca_cert, _cert_pem(ca[0]), 0o644)
    addresses = [ipaddress.ip_address(address) for address in ip_addresses]
    if new_ca or not _server_cert_is_valid(tls, ca[0], addresses, now):
        log.info("issuing the OpenBao listener certificate in %s", folder)
        cert, key = _issue_server_cert(*ca, addresses, now)
        write_file_atomically(tls.key, _key_pem(key), 0o600)
        write_file_atomically(tls.cert, _cert_pem(cert), 0o644)
    return tls


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _is_current(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now < cert.not_valid_after_utc - LISTENER_RENEW_BEFORE


def _load_pair(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """Load a certificate and its key, or return None if either is missing, damaged or unpaired."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        log.warning("cannot read %s or %s (%s); replacing them", cert_path, key_path, exc)
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        log.warning("%s does not contain the key of %s; replacing both", key_path, cert_path)
        return None
    return cert, key


def _server_cert_is_valid(tls: ListenerTls, ca_cert: x509.Certificate,
                          addresses: list[IPAddress], now: datetime.datetime) -> bool:
    loaded = _load_pair(tls.cert, tls.key)
    if loaded is None:
        return False
    cert = loaded[0]
    try:
        cert.verify_directly_issued_by(ca_cert)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    expected = {*LISTENER_DNS_NAMES, *map(str, addresses)}
    present = {*names.get_values_for_type(x509.DNSName),
               *map(str, names.get_values_for_type(x509.IPAddress))}
    return present == expected and _is_current(cert, now)


def _create_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AI-SWA local"),
        x509.NameAttribute(NameOID.COMMON_NAME, "AI-SWA local OpenBao listener CA"),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + LISTENER_CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue_server_cert(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, addresses: list[IPAddress],
    now: datetime.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_key_id = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in LISTENER_DNS_NAMES]
    names += [x509.IPAddress(address) for address in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AI-SWA local"),
            x509.NameAttribute(NameOID.COMMON_NAME, "AI-SWA local OpenBao"),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + LISTENER_CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )


def _serial_number() -> int:
    # RFC 5280 allows at most 20 octets and requires a positive number, so 159 bits.
    return secrets.randbits(159) | 1


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
