"""Bearer tokens for the HTTP transport.

- The default token: generated on first start into `<state_dir>/http-token` (mode 0600), every
  scope. It is never printed or logged; `kernsight token` says where it is.
- A tokens file (optional, YAML or JSON) grants tokens with scopes:

      tokens:
        - name: grafana-agent          # the client id (rate limits, subscription ownership)
          sha256: 9f86d08...           # hex SHA-256 of the token (or `token: <plaintext>`)
          scopes: [telemetry:read]

- Optional OAuth resource-server mode: JWT access tokens checked against a configured issuer,
  audience and JWKS (`JWTVerifier`).

Comparison is constant-time (hmac.compare_digest over SHA-256 digests, every entry checked).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import yaml
from mcp.server.auth.provider import AccessToken

from .app import SCOPES

TOKEN_FILE = "http-token"


def token_path(state_dir: Path) -> Path:
    return Path(state_dir) / TOKEN_FILE


def ensure_token(state_dir: Path) -> tuple[Path, bool]:
    """The default token's path, and whether it was created now. Created 0600, atomically."""
    path = token_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(
                f"{path} is readable by group/others (mode {mode:o}); run: chmod 600 {path}"
            ) from None
        return path, False
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path, True


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class Grant:
    client_id: str
    digest: bytes
    scopes: tuple[str, ...]


class StaticTokens:
    """A TokenVerifier (mcp.server.auth.provider) over fixed tokens."""

    def __init__(self, grants: list[Grant]) -> None:
        self.grants = grants

    @classmethod
    def load(cls, state_dir: Path, tokens_file: Path | None = None) -> StaticTokens:
        path, _ = ensure_token(state_dir)
        grants = [Grant("default", _digest(path.read_text().strip()), SCOPES)]
        if tokens_file is not None:
            grants += parse_tokens_file(tokens_file)
        return cls(grants)

    async def verify_token(self, token: str) -> AccessToken | None:
        d = _digest(token)
        found = None
        for g in self.grants:  # no early exit: the time does not depend on which one matched
            if hmac.compare_digest(d, g.digest) and found is None:
                found = g
        if found is None:
            return None
        return AccessToken(token="<redacted>", client_id=found.client_id,
                           scopes=list(found.scopes))  # fmt: skip


def parse_tokens_file(path: Path) -> list[Grant]:
    doc = yaml.safe_load(Path(path).read_text()) or {}
    out = []
    for i, e in enumerate(doc.get("tokens", [])):
        where = f"{path}: tokens[{i}]"
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise ValueError(f"{where}: needs a name")
        scopes = tuple(e.get("scopes") or ())
        if bad := [s for s in scopes if s not in SCOPES]:
            raise ValueError(f"{where}: unknown scopes {bad}; known: {', '.join(SCOPES)}")
        if isinstance(e.get("sha256"), str):
            digest = bytes.fromhex(e["sha256"])
        elif isinstance(e.get("token"), str) and len(e["token"]) >= 16:
            digest = _digest(e["token"])
        else:
            raise ValueError(f"{where}: needs sha256 (hex) or token (16 characters or more)")
        out.append(Grant(e["name"], digest, scopes))
    return out


class JWTVerifier:
    """OAuth 2.1 resource server: JWT access tokens signed by the issuer's JWKS keys, for this
    audience. Scopes come from the `scope` (space-separated) or `scp` claim."""

    def __init__(self, issuer: str, audience: str, jwks_url: str) -> None:
        import jwt

        self.issuer, self.audience = issuer, audience
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=600)

    def _verify(self, token: str) -> AccessToken | None:
        import jwt

        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token, key.key, algorithms=["RS256", "ES256", "PS256", "EdDSA"],
                audience=self.audience, issuer=self.issuer,
                options={"require": ["exp", "iss", "aud"]},
            )  # fmt: skip
        except jwt.PyJWTError:
            return None
        scopes = claims.get("scope", "").split() or list(claims.get("scp", []))
        return AccessToken(
            token="<redacted>", client_id=str(claims.get("client_id") or claims.get("azp")
                                              or claims.get("sub")),
            scopes=[s for s in scopes if s in SCOPES], expires_at=claims.get("exp"),
            resource=self.audience, subject=claims.get("sub"), claims={"iss": claims["iss"]},
        )  # fmt: skip

    async def verify_token(self, token: str) -> AccessToken | None:
        return await anyio.to_thread.run_sync(self._verify, token)  # JWKS fetch blocks
