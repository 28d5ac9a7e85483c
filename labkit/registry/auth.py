"""Token authentication as in the seed (001): the registry answers 401 with a Bearer
challenge naming a token service and the scope needed; the client gets a token there (with
its user name and password, or anonymously) and repeats the request with it.
:class:`TokenAuth` is the registry's side, :class:`BearerAuth` the client's.

Tokens here are HMAC-signed JSON (a JWT in spirit): who, which repository, which actions,
until when. Users come from an htpasswd file of bcrypt hashes, the one format distribution's
htpasswd auth reads (``htpasswd -B -c users alice`` writes one). Access is per repository, as
a class needs it: everybody (signed in) pulls; a user pushes and deletes only below their own
name (``alice/...``) unless ``grants`` gives them more (``{"teacher": ["*"]}``).
"""
from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import time
from pathlib import Path

import bcrypt
import httpx
from werkzeug.wrappers import Response

from ..errors import LabError
from .errors import Problem

TTL = 300
BCRYPT_ROUNDS = 10           # htpasswd -B uses 5; distribution accepts any cost


class TokenAuth:
    """The registry's token service and its check of each request's token."""

    def __init__(self, users_file: str | Path | None = None, users: dict | None = None,
                 anonymous_pull: bool = False, service: str = "labkit", grants: dict | None = None):
        self.users = dict(users or {})                 # name -> bcrypt hash of the password
        if users_file:
            for n, line in enumerate(Path(users_file).read_text().splitlines(), 1):
                if line.strip() and not line.startswith("#"):
                    name, _, hashed = line.strip().partition(":")
                    if not hashed.startswith(("$2y$", "$2b$", "$2a$")):
                        raise AuthError(f"{users_file} line {n}: the password of {name!r} is not a bcrypt hash",
                                        f"write the file with `htpasswd -B {users_file} {name}` (or "
                                        "TokenAuth.hash_password)")
                    self.users[name] = hashed
        self.grants = {u: list(p) for u, p in (grants or {}).items()}   # user -> repository patterns
        self.anonymous_pull = anonymous_pull
        self.service = service
        self.secret = secrets.token_bytes(32)
        self._checked: dict[tuple[str, bytes], str] = {}     # bcrypt is slow on purpose: remember a match

    @staticmethod
    def hash_password(password: str) -> str:
        """A bcrypt hash as ``htpasswd -B`` writes it (``$2y$``)."""
        h = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()
        return "$2y$" + h[4:]

    def check_password(self, name: str, password: str) -> bool:
        hashed = self.users.get(name)
        if hashed is None:
            return False
        key = (name, hashlib.sha256(password.encode()).digest())
        if self._checked.get(key) == hashed:
            return True
        try:
            ok = bcrypt.checkpw(password.encode(), ("$2b$" + hashed[4:]).encode())
        except ValueError:               # a damaged hash in the users file matches nothing
            return False
        if ok:
            self._checked[key] = hashed
        return ok

    def allowed(self, user: str | None, repo: str, actions: list[str]) -> list[str]:
        """The actions of ``actions`` that ``user`` (None: anonymous) may take on ``repo``:
        pull for everyone signed in (and anonymous if configured); push and delete below the
        user's own name or a granted pattern; ``*`` stands for all three."""
        wanted = {"pull", "push", "delete"} if "*" in actions else set(actions)
        mine = user is not None and (repo.startswith(user + "/") or
                                     any(fnmatch.fnmatchcase(repo, pat) for pat in self.grants.get(user, [])))
        ok = {"pull"} if (user or self.anonymous_pull) else set()
        if mine:
            ok |= {"push", "delete"}
        return sorted(wanted & ok)

    # --- the token service ---
    def token_response(self, request) -> Response:
        user = None
        if request.authorization and request.authorization.type == "basic":
            name, pw = request.authorization.username or "", request.authorization.password or ""
            if not self.check_password(name, pw):
                return Response(json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "wrong user or password"}]}),
                                401, content_type="application/json")
            user = name
        access = []
        for scope in request.args.getlist("scope"):
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": repo, "actions": self.allowed(user, repo, actions.split(","))})
        token = self._sign({"sub": user or "anonymous", "access": access, "exp": time.time() + TTL})
        return Response(json.dumps({"token": token, "access_token": token, "expires_in": TTL}), 200,
                        content_type="application/json")

    def _sign(self, claims: dict) -> str:
        body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode()
        sig = hmac.new(self.secret, body.encode(), "sha256").hexdigest()
        return f"{body}.{sig}"

    def _verify(self, token: str) -> dict | None:
        """The token's claims if we signed it and it has not expired; None for anything else
        (garbage, non-ASCII, expired)."""
        if not token.isascii():
            return None
        body, _, sig = token.partition(".")
        if not hmac.compare_digest(hmac.new(self.secret, body.encode(), "sha256").hexdigest(), sig):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(body))
        except (ValueError, binascii.Error):
            return None
        return claims if claims["exp"] > time.time() else None

    # --- the registry side ---
    def require(self, request, repo: str | None) -> None:
        """Raise a 401 Problem with the challenge unless the request carries a token that allows
        this action on ``repo`` (UNAUTHORIZED without a token, DENIED with one that falls short)."""
        action = "pull" if request.method in ("GET", "HEAD") else "push"
        if request.method == "DELETE":
            action = "delete"
        auth = request.headers.get("Authorization", "")
        claims = self._verify(auth[7:]) if auth.lower().startswith("bearer ") else None
        if claims and (not repo or any(a["name"] == repo and action in a["actions"] for a in claims["access"])):
            return
        realm = f"{request.host_url.rstrip('/')}/token"
        wants = {"pull": "pull", "push": "pull,push", "delete": "delete"}[action]
        challenge = f'Bearer realm="{realm}",service="{self.service}"' + (
            f',scope="repository:{repo}:{wants}"' if repo else "")
        if not claims:
            raise Problem("UNAUTHORIZED", "authentication required", 401, {"WWW-Authenticate": challenge})
        # 401 again, not 403: the client may hold a pull token and now ask for push (distribution)
        why = ("anonymous users only pull: sign in" if claims["sub"] == "anonymous" else
               f"a user pushes and deletes only below their own name, {claims['sub']}/...")
        raise Problem("DENIED", f"{claims['sub']} may not {action} {repo} ({why})", 401,
                      {"WWW-Authenticate": challenge})


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
