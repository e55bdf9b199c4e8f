"""Users service: API key format and hashing, token signing and the JWKS."""

from __future__ import annotations

import base64
import json
import stat

import jwt
import pytest

from aiswa_runtime._auth import Claims, decode_claims
from aiswa_runtime import ServiceError
from aiswa_users._tokens import (
    AUDIENCE,
    ISSUER,
    SigningKey,
    new_api_key,
    split_api_key,
    verify_secret,
)


def test_api_key_round_trip():
    key_id, api_key, secret_hash = new_api_key()
    parsed = split_api_key(api_key)
    assert parsed is not None
    assert parsed[0] == key_id
    assert secret_hash.startswith("$argon2id$")
    assert parsed[1] not in secret_hash
    assert verify_secret(secret_hash, parsed[1])
    assert not verify_secret(secret_hash, parsed[1] + "x")


@pytest.mark.parametrize("value", ["", "aiswa", "aiswa_abc", "other_abc_def", "aiswa__secret"])
def test_malformed_api_key_rejected(value):
    assert split_api_key(value) is None


def test_garbage_hash_does_not_verify():
    assert not verify_secret("not-a-hash", "secret")


def test_signing_key_created_private_and_reused(tmp_path):
    path = tmp_path / "key.pem"
    first = SigningKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = SigningKey.load_or_create(path)
    assert first.key_id == second.key_id


def test_token_verifies_with_jwks(tmp_path):
    key = SigningKey.load_or_create(tmp_path / "key.pem")
    token = key.issue(subject="u1", email="a@b.c", role="maintainer", ttl_seconds=60)
    jwks = key.jwks()
    assert jwks["keys"][0]["kid"] == key.key_id
    assert "d" not in jwks["keys"][0], "the JWKS must not contain the private key"
    public = jwt.PyJWK(jwks["keys"][0]).key
    claims = jwt.decode(token, public, algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER)
    assert claims["sub"] == "u1"
    assert claims["role"] == "maintainer"
    assert claims["exp"] - claims["iat"] == 60
    assert jwt.get_unverified_header(token)["kid"] == key.key_id


def test_token_from_other_key_fails_verification(tmp_path):
    ours = SigningKey.load_or_create(tmp_path / "a.pem")
    theirs = SigningKey.load_or_create(tmp_path / "b.pem")
    token = theirs.issue(subject="u1", email="", role="admin", ttl_seconds=60)
    public = jwt.PyJWK(ours.jwks()["keys"][0]).key
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, public, algorithms=["ES256"], audience=AUDIENCE)


def test_claims_round_trip():
    claims = Claims(subject="u1", email="a@b.c", role="viewer")
    assert decode_claims(claims.encode()) == claims
    assert not claims.has_role("maintainer")
    assert Claims("u2", "", "admin").has_role("maintainer")


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ("!!!", "not base64url JSON"),
        (base64.urlsafe_b64encode(b"[1]").decode(), "not a JSON object"),
        (base64.urlsafe_b64encode(json.dumps({"role": "admin"}).encode()).decode(), "no subject"),
        (base64.urlsafe_b64encode(json.dumps({"sub": "u", "role": "root"}).encode()).decode(),
         "'root'"),
    ],
)
def test_bad_claims_header_rejected(payload, fragment):
    with pytest.raises(ServiceError) as failure:
        decode_claims(payload)
    assert failure.value.code.name == "UNAUTHENTICATED"
    assert fragment in failure.value.message
