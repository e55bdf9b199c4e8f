from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from ._errors import permission_denied, unauthenticated

# Envoy's jwt_authn filter writes the verified token payload, base64url encoded,
# into this header and removes any copy that the client sent.
JWT_PAYLOAD_HEADER = "x-jwt-payload"

ROLES = ("viewer", "maintainer", "admin")


@dataclass(frozen=True, slots=True)
class Claims:
    """The end user's verified token claims."""

    subject: str
    email: str
    role: str

    def has_role(self, minimum: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(minimum)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def encode(self) -> str:
        """Encode as the gateway does, to forward the user to another service."""
        payload = {"sub": self.subject, "email": self.email, "role": self.role}
        return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def decode_claims(value: str) -> Claims:
    padded = value + "=" * (-len(value) % 4)
    try:
        payload = json.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError) as exc:
        raise unauthenticated(f"the {JWT_PAYLOAD_HEADER} header is not base64url JSON") from exc
    if not isinstance(payload, dict):
        raise unauthenticated(f"the {JWT_PAYLOAD_HEADER} header is not a JSON object")
    subject, role = payload.get("sub"), payload.get("role")
    if not isinstance(subject, str) or not subject:
        raise unauthenticated("the token has no subject (sub) claim")
    if role not in ROLES:
        raise unauthenticated(f"the token's role claim {role!r} is not one of {ROLES}")
    return Claims(subject=subject, email=str(payload.get("email", "")), role=role)


def claims_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Claims | None:
    # NOTE: without the mesh, any local process that reaches a service's
    # loopback port could send this header; the mTLS sidecars and per-call
    # authorization of the mesh layout close that gap.
    for key, value in metadata or ():
        if key == JWT_PAYLOAD_HEADER:
            text = value.decode() if isinstance(value, bytes) else value
            return decode_claims(text)
    return None


def require_user(context: grpc.aio.ServicerContext, minimum_role: str = "viewer") -> Claims:
    """Return the calling user's claims, or raise when absent or below ``minimum_role``."""
    claims = claims_from_metadata(context.invocation_metadata())
    if claims is None:
        raise unauthenticated("this call needs a user token; log in with `aiswa login`")
    if not claims.has_role(minimum_role):
        raise permission_denied(
            f"role {claims.role!r} may not call this method; it needs {minimum_role!r} "
            "or higher"
        )
    return claims


def optional_user(context: grpc.aio.ServicerContext) -> Claims | None:
    return claims_from_metadata(context.invocation_metadata())
