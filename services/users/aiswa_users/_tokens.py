from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "aiswa-users"
AUDIENCE = "aiswa-api"
KEY_PREFIX = "aiswa"

_hasher = PasswordHasher()


@dataclass(frozen=True)
class SigningKey:
    """The ES256 key that signs access tokens, and its key id."""

    private_key: ec.EllipticCurvePrivateKey
    key_id: str

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        if path.exists():
            private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(private_key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{path} does not contain an EC private key; delete it "
                                 "to have a new one generated")
        else:
            private_key = ec.generate_private_key(ec.SECP256R1())
            pem = private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as stream:
                stream.write(pem)
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
        # RFC 7638 thumbprint input: the required members in lexicographic order.
        thumbprint_input = json.dumps(
            {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":")
        )
        import hashlib
        import base64

        digest = hashlib.sha256(thumbprint_input.encode()).digest()
        key_id = base64.urlsafe_b64encode(digest).decode().rstrip("=")
        return cls(private_key, key_id)

    def jwks(self) -> dict:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.key_id, "use": "sig", "alg": "ES256"})
        return {"keys": [jwk]}

    def issue(self, *, subject: str, email: str, role: str, ttl_seconds: int) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "email": email,
            "role": role,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
        }
        return jwt.encode(claims, self.private_key, algorithm="ES256",
                          headers={"kid": self.key_id})


def new_api_key() -> tuple[str, str, str]:
    """Return (key id, full key, argon2 hash of the secret part)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secret}", _hasher.hash(secret)


def split_api_key(api_key: str) -> tuple[str, str] | None:
    parts = api_key.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def verify_secret(secret_hash: str, secret: str) -> bool:
    try:
        return _hasher.verify(secret_hash, secret)
    except (VerificationError, InvalidHashError):
        return False
