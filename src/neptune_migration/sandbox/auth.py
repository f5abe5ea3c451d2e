"""API tokens and the OAuth dance both clients perform.

neptune-query decodes the access token as a JWT without checking its signature and only needs ``exp``,
``azp`` and ``iss``; the 1.x client always refreshes once through ``{iss}/protocol/openid-connect/token``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

from neptune_migration.sandbox.web import HttpError, Reply, Request

_SECRET = b"neptune-migration-sandbox"
TOKEN_LIFETIME = 24 * 3600  # long enough that neptune-query never refreshes during a test


def make_api_token(base_url: str, api_key: str) -> str:
    # both address fields: neptune-query reads api_url, the 1.x client requires api_address
    payload = {"api_address": base_url, "api_url": base_url, "api_key": api_key}
    return base64.b64encode(json.dumps(payload).encode()).decode()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(issuer: str, username: str) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    now = int(time.time())
    claims = {"exp": now + TOKEN_LIFETIME, "iat": now, "azp": "neptune-cli", "iss": issuer, "sub": username}
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = hmac.new(_SECRET, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64url(signature)}"


class Auth:
    def __init__(self, base_url: str, api_token: str, username: str = "sandbox-user") -> None:
        self.issuer = f"{base_url}/auth/realms/neptune"
        self.api_token = api_token
        self.username = username

    def exchange(self, req: Request) -> Reply:
        if req.headers.get("x-neptune-api-token", "").strip() != self.api_token:
            return Reply.error(401, "API token rejected")
        return Reply.json(
            {
                "accessToken": make_jwt(self.issuer, self.username),
                "refreshToken": make_jwt(self.issuer, self.username),
                "username": self.username,
            }
        )

    def refresh(self, req: Request) -> Reply:
        access = make_jwt(self.issuer, self.username)
        return Reply.json(
            {
                "access_token": access,
                "refresh_token": make_jwt(self.issuer, self.username),
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME,
                "refresh_expires_in": TOKEN_LIFETIME,
                "scope": "",
            }
        )

    def check_bearer(self, req: Request) -> None:
        value = req.headers.get("authorization", "")
        if not value.lower().startswith("bearer "):
            raise HttpError(401, "missing bearer token")
        parts = value.split(" ", 1)[1].strip().split(".")
        if len(parts) != 3:
            raise HttpError(401, "malformed bearer token")
        expected = hmac.new(_SECRET, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(_b64url(expected), parts[2]):
            raise HttpError(401, "bearer token not issued by this sandbox")
