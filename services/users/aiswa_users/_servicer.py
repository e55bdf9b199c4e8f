from __future__ import annotations

import json
import logging
from typing import Any

import grpc
from google.api import httpbody_pb2
from psycopg.errors import UniqueViolation
from psycopg_pool import AsyncConnectionPool

from aiswa.users.v1 import users_pb2, users_pb2_grpc
from aiswa_runtime import (
    invalid_argument,
    not_found,
    permission_denied,
    require_user,
    unauthenticated,
)

from ._tokens import SigningKey, new_api_key, split_api_key, verify_secret

log = logging.getLogger(__name__)

_ROLE_TO_PROTO = {
    "viewer": users_pb2.ROLE_VIEWER,
    "maintainer": users_pb2.ROLE_MAINTAINER,
    "admin": users_pb2.ROLE_ADMIN,
}
_PROTO_TO_ROLE = {value: key for key, value in _ROLE_TO_PROTO.items()}


def _user_message(row: dict[str, Any]) -> users_pb2.User:
    user = users_pb2.User(
        user_id=str(row["user_id"]), email=row["email"], role=_ROLE_TO_PROTO[row["role"]]
    )
    user.created_at.FromDatetime(row["created_at"])
    return user


def _check_uuid(value: str, field: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise invalid_argument(f"{field} {value!r} is not a UUID") from None


class UsersServicer(users_pb2_grpc.UsersServiceServicer):
    def __init__(self, pool: AsyncConnectionPool, key: SigningKey, token_ttl_seconds: int) -> None:
        self._pool = pool
        self._key = key
        self._token_ttl = token_ttl_seconds

    async def CreateToken(self, request: users_pb2.CreateTokenRequest, context: grpc.aio.ServicerContext) -> users_pb2.CreateTokenResponse:
        if not request.api_key:
            raise invalid_argument(
                'api_key is missing; send {"api_key": "aiswa_..."} with the API key that was '
                "printed when it was created"
            )
        parts = split_api_key(request.api_key)
        if parts is None:
            raise unauthenticated(
                "the API key is malformed: expected aiswa_<key id>_<secret> as printed "
                "when the key was created"
            )
        key_id, secret = parts
        async with self._pool.connection() as conn:
            row = await (await conn.execute(
                "SELECT k.secret_hash, k.revoked_at, u.user_id, u.email, u.role "
                "FROM api_keys k JOIN users u USING (user_id) WHERE k.key_id = %s",
                (key_id,),
            )).fetchone()
            if row is None or row["revoked_at"] is not None or not verify_secret(row["secret_hash"], secret):
                log.warning("API key rejected", extra={"key_id": key_id})
                raise unauthenticated(
                    f"API key {key_id} is invalid or revoked; ask an admin for a new key"
                )
            await conn.execute("UPDATE api_keys SET last_used_at = now() WHERE key_id = %s", (key_id,))
        token = self._key.issue(
            subject=str(row["user_id"]), email=row["email"], role=row["role"],
            ttl_seconds=self._token_ttl,
        )
        return users_pb2.CreateTokenResponse(
            access_token=token, token_type="Bearer", expires_in=self._token_ttl
        )

    async def GetJwks(self, request: users_pb2.GetJwksRequest, context: grpc.aio.ServicerContext) -> httpbody_pb2.HttpBody:
        return httpbody_pb2.HttpBody(
            content_type="application/json", data=json.dumps(self._key.jwks()).encode()
        )

    async def _fetch_user(self, user_id: str) -> dict[str, Any]:
        async with self._pool.connection() as conn:
            row = await (await conn.execute(
                "SELECT user_id, email, role, created_at FROM users WHERE user_id = %s",
                (user_id,),
            )).fetchone()
        if row is None:
            raise not_found(f"user {user_id} not found")
        return row

    async def GetCurrentUser(self, request: users_pb2.GetCurrentUserRequest, context: grpc.aio.ServicerContext) -> users_pb2.User:
        claims = require_user(context)
        return _user_message(await self._fetch_user(claims.subject))

    async def CreateUser(self, request: users_pb2.CreateUserRequest, context: grpc.aio.ServicerContext) -> users_pb2.User:
        require_user(context, "admin")
        email = request.email.strip().lower()
        if "@" not in email or len(email) > 320:
            raise invalid_argument(f"email {request.email!r} is not an email address")
        role = _PROTO_TO_ROLE.get(request.role)
        if role is None:
            raise invalid_argument(
                "role is missing or unknown; use ROLE_VIEWER, ROLE_MAINTAINER or ROLE_ADMIN"
            )
        async with self._pool.connection() as conn:
            try:
                row = await (await conn.execute(
                    "INSERT INTO users (email, role) VALUES (%s, %s) "
                    "RETURNING user_id, email, role, created_at",
                    (email, role),
                )).fetchone()
            except UniqueViolation:
                raise invalid_argument(f"a user with email {email!r} already exists") from None
        log.info("user created", extra={"user_id": str(row["user_id"]), "role": role})
        return _user_message(row)

    async def GetUser(self, request: users_pb2.GetUserRequest, context: grpc.aio.ServicerContext) -> users_pb2.User:
        claims = require_user(context)
        user_id = _check_uuid(request.user_id, "user_id")
        if user_id != claims.subject and not claims.is_admin:
            raise permission_denied("only admins may read other users")
        return _user_message(await self._fetch_user(user_id))

    async def ListUsers(self, request: users_pb2.ListUsersRequest, context: grpc.aio.ServicerContext) -> users_pb2.ListUsersResponse:
        require_user(context, "admin")
        async with self._pool.connection() as conn:
            rows = await (await conn.execute(
                "SELECT user_id, email, role, created_at FROM users ORDER BY created_at"
            )).fetchall()
        return users_pb2.ListUsersResponse(users=[_user_message(row) for row in rows])

    async def CreateApiKey(self, request: users_pb2.CreateApiKeyRequest, context: grpc.aio.ServicerContext) -> users_pb2.CreateApiKeyResponse:
        claims = require_user(context)
        user_id = _check_uuid(request.user_id, "user_id")
        if user_id != claims.subject and not claims.is_admin:
            raise permission_denied("only admins may create API keys for other users")
        await self._fetch_user(user_id)
        key_id, api_key, secret_hash = new_api_key()
        async with self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO api_keys (key_id, user_id, name, secret_hash) VALUES (%s, %s, %s, %s)",
                (key_id, user_id, request.name[:200], secret_hash),
            )
        log.info("API key created", extra={"user_id": user_id, "key_id": key_id})
        return users_pb2.CreateApiKeyResponse(key_id=key_id, api_key=api_key)

    async def RevokeApiKey(self, request: users_pb2.RevokeApiKeyRequest, context: grpc.aio.ServicerContext) -> users_pb2.RevokeApiKeyResponse:
        claims = require_user(context)
        user_id = _check_uuid(request.user_id, "user_id")
        if user_id != claims.subject and not claims.is_admin:
            raise permission_denied("only admins may revoke other users' API keys")
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE api_keys SET revoked_at = now() "
                "WHERE key_id = %s AND user_id = %s AND revoked_at IS NULL",
                (request.key_id, user_id),
            )
        if cursor.rowcount == 0:
            raise not_found(f"active API key {request.key_id!r} of user {user_id} not found")
        log.info("API key revoked", extra={"user_id": user_id, "key_id": request.key_id})
        return users_pb2.RevokeApiKeyResponse()
