"""A throwaway certificate authority for tests and benchmarks of the sidecars.

It issues workload certificates that follow the mesh identity contract (URI and
DNS SANs, see aiswa_mesh.envoy_sidecar.identity_uri) without OpenBao, so that
sidecars can run between test apps on free loopback ports. The platform itself
gets its certificates from OpenBao (aiswa_mesh.openbao).
"""

from __future__ import annotations

import datetime
import random
import socket
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .envoy_sidecar import identity_dns, identity_uri

# Certificates start this long ago, so that a clock step does not make them "not yet valid".
BACKDATE = datetime.timedelta(minutes=5)


# free_port draws from here: below the kernel's ephemeral range (32768 and up by default), so
# that no outgoing connection takes a port between free_port() and its owner's bind, and clear
# of every port in mesh/topology.yaml.
FREE_PORT_RANGE = (20000, 29999)
# Every port that free_port handed out in this process. A test often requests several ports
# before it binds any, so free_port never returns one of these again.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago and that no caller got before."""
    low, high = FREE_PORT_RANGE
    # The search starts at a random port, so two test runs side by side rarely try the same ports.
    start = random.randint(low, high)
    for offset in range(high - low + 1):
        port = low + (start - low + offset) % (high - low + 1)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 between {low} and {high}")


@dataclass(frozen=True)
class Credentials:
    """A PEM certificate chain and its key."""

    cert_pem: bytes
    key_pem: bytes
    serial: int


class CertificateAuthority:
    """A self-signed CA that issues workload certificates per the mesh identity contract."""

    def __init__(self, common_name: str) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, service: str, namespace: str, lifetime: datetime.timedelta = datetime.timedelta(hours=1)
    ) -> Credentials:
        now = datetime.datetime.now(datetime.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.COMMON_NAME, identity_dns(service, namespace)),
            ]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.SubjectAlternativeName([
                x509.UniformResourceIdentifier(identity_uri(service, namespace)),
                x509.DNSName(identity_dns(service, namespace)),
            ]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([
                ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH,
            ]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Credentials(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            serial=cert.serial_number,
        )
