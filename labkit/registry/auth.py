"""Token authentication as in the seed (001): the registry answers 401 with a Bearer
challenge naming a token service and the scope needed; the client gets a token there (with
its user name and password, or anonymously) and repeats the request with it.
:class:`TokenAuth` is the registry's side, :class:`BearerAuth` the client's.

Tokens here are HMAC-signed JSON (a JWT in spirit): who, which repository, which actions,
until when. Users come from a file of ``name:sha256(password)`` lines.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from pathlib import Path

import httpx
from werkzeug.wrappers import Response

from ..errors import LabError
from .errors import Problem

TTL = 300


class TokenAuth:
    def __init__(self, users_file: str | Path | None = None, users: dict | None = None,
                 anonymous_pull: bool = False, service: str = "labkit"):
        self.users = dict(users or {})                 # name -> sha256 hex of the password
        if users_file:
            for line in Path(users_file).read_text().splitlines():
                if ":" in line and not line.startswith("#"):
                    name, hashed = line.strip().split(":", 1)
                    self.users[name] = hashed
        self.anonymous_pull = anonymous_pull
        self.service = service
        self.secret = secrets.token_bytes(32)

    @staticmethod
    def hash_password(password: str) -> str:
        return hashlib.sha256(password.encode()).hexdigest()

    # --- the token service ---
    def token_response(self, request) -> Response:
        user = None
        if request.authorization and request.authorization.type == "basic":
            name, pw = request.authorization.username, request.authorization.password or ""
            if self.users.get(name) != self.hash_password(pw):
                return Response(json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "wrong user or password"}]}),
                                401, content_type="application/json")
            user = name
        access = []
        for scope in request.args.getlist("scope"):
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            allowed = [a for a in actions.split(",") if user or (a == "pull" and self.anonymous_pull)]
            access.append({"type": kind, "name": repo, "actions": allowed})
        token = self._sign({"sub": user or "anonymous", "access": access, "exp": time.time() + TTL})
        return Response(json.dumps({"token": token, "access_token": token, "expires_in": TTL}), 200,
                        content_type="application/json")

    def _sign(self, claims: dict) -> str:
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode()
        sig = hmac.new(self.secret, body.encode(), "sha256").hexdigest()
        return f"{body}.{sig}"

    def _verify(self, token: str) -> dict | None:
        body, _, sig = token.partition(".")
        if not hmac.compare_digest(hmac.new(self.secret, body.encode(), "sha256").hexdigest(), sig):
            return None
        claims = json.loads(base64.urlsafe_b64decode(body))
        return claims if claims["exp"] > time.time() else None

    # --- the registry side ---
    def require(self, request, repo: str | None) -> None:
        """Raise a 401 Problem with the challenge unless the request carries a fitting token."""
        action = "pull" if request.method in ("GET", "HEAD") else "push"
        if request.method == "DELETE":
            action = "delete"
        auth = request.headers.get("Authorization", "")
        claims = self._verify(auth[7:]) if auth.lower().startswith("bearer ") else None
        if claims and (not repo or any(a["name"] == repo and (action in a["actions"] or "*" in a["actions"] or
                                                               (action == "delete" and "push" in a["actions"]))
                                       for a in claims["access"])):
            return
        realm = f"{request.host_url.rstrip('/')}/token"
        challenge = f'Bearer realm="{realm}",service="{self.service}"' + (
            f',scope="repository:{repo}:{"pull" if action == "pull" else "pull,push"}"' if repo else "")
        code = "DENIED" if claims else "UNAUTHORIZED"
        raise Problem(code, "authentication required" if not claims else f"the token does not allow {action} on {repo}",
                      401, {"WWW-Authenticate": challenge})


# --- the client side ------------------------------------------------------------------------
class AuthError(LabError):
    """The token service refused, or a token ran out where the request cannot be repeated."""


class BearerAuth(httpx.Auth):
    """The client's half of the token dance, as an httpx.Auth flow (distribution's token.md).

    Send the request with the token we hold (if any). On ``401`` with a ``Bearer`` challenge,
    GET the challenge's ``realm`` with its ``service`` and ``scope`` (and HTTP basic auth when
    a user is given), keep the token, and send the request again. Callers never see a token.
    """

    def __init__(self, user: str | None = None, password: str | None = None):
        self.basic = httpx.BasicAuth(user, password or "") if user else None
        self.token: str | None = None

    def auth_flow(self, request: httpx.Request):
        if self.token:
            request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status_code != 401 or not challenge.lower().startswith("bearer "):
            return
        if not isinstance(request.stream, httpx.ByteStream):
            raise AuthError(f"the registry wants a new token in the middle of {request.method} {request.url.path} "
                            "(it expired)", "push again: the blobs already uploaded are skipped")
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", "")
        ask = httpx.Request("GET", realm, params=params)
        if self.basic:
            ask = next(self.basic.auth_flow(ask))
        answer = yield ask
        answer.read()
        if answer.status_code != 200:
            raise AuthError(f"the token service refused ({answer.status_code}): {answer.text[:200]}",
                            "check the user name and password (labkit push/pull --user)")
        body = answer.json()
        self.token = body.get("token") or body.get("access_token")
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request
