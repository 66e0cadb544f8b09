"""Transports: stdio and Streamable HTTP (with bearer auth, Host/Origin checks)."""

from __future__ import annotations

import ipaddress
import json
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .app import SCOPES, KernsightMCP, Limits
from .auth import StaticTokens, ensure_token, token_path

log = logging.getLogger("kernsight.server")
MCP_PATH = "/mcp"
PRM_PATH = "/.well-known/oauth-protected-resource"


def setup_logging(level: int = logging.INFO) -> None:
    """Logs go to stderr, never stdout (stdout is the MCP wire on stdio)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("mcp").setLevel(logging.WARNING)


def _exit_on_sigterm() -> None:
    """SIGTERM ends the server through the normal path (`finally: runtime.close()`: the store is
    sealed, the audit log gets its stop entry and final checkpoint). uvicorn re-raises the
    signal it caught after its own shutdown; this handler turns that into SystemExit."""

    def stop(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)


def _runtime(state_dir: Path):  # noqa: ANN202
    from ..runtime import Runtime

    _exit_on_sigterm()
    rt = Runtime(state_dir)
    rt.start()
    return rt


# -- stdio -----------------------------------------------------------------------------------


def run_stdio(state_dir: Path, limits: Limits | None = None) -> None:
    setup_logging()
    rt = _runtime(state_dir)
    try:
        log.info("kernsight MCP server on stdio (state dir %s)", state_dir)
        app = KernsightMCP(rt, limits)
        app.transport = "stdio"
        anyio.run(app.server.run_stdio_async)
    finally:
        rt.close()


# -- HTTP ------------------------------------------------------------------------------------


class AnyOf:
    """The first verifier that accepts the token wins (static tokens, then JWT)."""

    def __init__(self, *verifiers: TokenVerifier) -> None:
        self.verifiers = verifiers

    async def verify_token(self, token: str) -> AccessToken | None:
        for v in self.verifiers:
            if (tok := await v.verify_token(token)) is not None:
                return tok
        return None


@dataclass
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    auth: bool = True
    tokens_file: Path | None = None
    public_url: str | None = None  # how clients reach /mcp (default http://host:port/mcp)
    allowed_hosts: list[str] = field(default_factory=list)  # extra Host values (host or host:port)
    allowed_origins: list[str] = field(default_factory=list)
    oauth_issuer: str | None = None
    oauth_audience: str | None = None
    oauth_jwks: str | None = None

    @property
    def url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{MCP_PATH}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequireBearer:
    """401 with `WWW-Authenticate: Bearer ... resource_metadata=...` (RFC 9728, as the MCP
    authorization spec asks) for /mcp requests without a valid token."""

    def __init__(self, app: ASGIApp, metadata_url: str) -> None:
        self.app, self.metadata_url = app, metadata_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(MCP_PATH):
            return await self.app(scope, receive, send)
        if isinstance(scope.get("user"), AuthenticatedUser):
            return await self.app(scope, receive, send)
        has = any(k == b"authorization" for k, _ in scope["headers"])
        err = 'error="invalid_token", ' if has else ""
        desc = "the bearer token is not valid" if has else "a bearer token is required"
        body = json.dumps({"error": "invalid_token" if has else "unauthorized",
                           "error_description": desc}).encode()  # fmt: skip
        www = f'Bearer {err}error_description="{desc}", resource_metadata="{self.metadata_url}"'
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"www-authenticate", www.encode()),
            (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


def check(cfg: HttpConfig) -> None:
    if not cfg.auth and not is_loopback(cfg.host):
        raise ValueError(
            f"refusing to serve {cfg.host} without auth: a non-loopback address needs bearer "
            "tokens (drop --no-auth)"
        )


def http_app(mcp: KernsightMCP, cfg: HttpConfig) -> Starlette:
    """The SDK's Streamable HTTP app (both protocol eras), with our auth in front of it."""
    check(cfg)
    if cfg.host in ("0.0.0.0", "::"):
        hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    elif ":" in cfg.host:
        hosts = [f"[{cfg.host}]:*"]
    else:
        hosts = [f"{cfg.host}:*"] + (["localhost:*"] if is_loopback(cfg.host) else [])
    public = cfg.url.split("//", 1)[-1].split("/", 1)[0]
    hosts += [public] + [h if ":" in h else f"{h}:*" for h in cfg.allowed_hosts]
    origins = [f"http://{h}" for h in hosts] + [f"https://{h}" for h in hosts]
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts,
        allowed_origins=origins + cfg.allowed_origins,
    )  # fmt: skip
    app = mcp.server.streamable_http_app(
        streamable_http_path=MCP_PATH, transport_security=security, host=cfg.host
    )
    if not cfg.auth:
        return app
    origin = cfg.url.split(MCP_PATH)[0] if cfg.url.endswith(MCP_PATH) else cfg.url
    metadata_url = f"{origin}{PRM_PATH}{MCP_PATH}"
    prm: dict[str, Any] = {
        "resource": cfg.url,
        "resource_name": "kernsight",
        "bearer_methods_supported": ["header"],
        "scopes_supported": list(SCOPES),
    }
    if cfg.oauth_issuer:
        prm["authorization_servers"] = [cfg.oauth_issuer]

    async def metadata(_: Request) -> JSONResponse:
        return JSONResponse(prm, headers={"Access-Control-Allow-Origin": "*"})

    # RFC 9728: the path-inserted form, and the bare one some clients try first
    app.router.routes += [Route(PRM_PATH + MCP_PATH, metadata, methods=["GET"]),
                          Route(PRM_PATH, metadata, methods=["GET"])]  # fmt: skip
    verifiers: list[TokenVerifier] = [StaticTokens.load(mcp.runtime.state_dir, cfg.tokens_file)]
    if cfg.oauth_issuer:
        from .auth import JWTVerifier

        if not (cfg.oauth_audience and cfg.oauth_jwks):
            raise ValueError("OAuth mode needs --oauth-issuer, --oauth-audience and --oauth-jwks")
        verifiers.append(JWTVerifier(cfg.oauth_issuer, cfg.oauth_audience, cfg.oauth_jwks))
    # add_middleware: the last added runs first
    app.add_middleware(RequireBearer, metadata_url=metadata_url)
    app.add_middleware(AuthContextMiddleware)
    app.add_middleware(AuthenticationMiddleware, backend=BearerAuthBackend(AnyOf(*verifiers)))
    return app


def usage(state_dir: Path, url: str) -> str:
    """How to use the token; never the token itself."""
    path = token_path(state_dir)
    state = (
        "mode 0600; read it as root"
        if path.exists()
        else ("not created yet: the first `kernsight serve --http` creates it")
    )
    return (
        f"MCP endpoint: {url}\n"
        f"bearer token: {path} ({state})\n"
        "  clients send the header  Authorization: Bearer <contents of that file>\n"
        f'  e.g. export KERNSIGHT_TOKEN="$(sudo cat {path})", then in the client\'s MCP config:\n'
        f'       "url": "{url}", "headers": {{"Authorization": "Bearer ${{KERNSIGHT_TOKEN}}"}}\n'
        "  (docs/mcp.md: Claude Code, Claude Desktop, Cursor)"
    )


def run_http(
    state_dir: Path, cfg: HttpConfig, limits: Limits | None = None, view: bool | None = None
) -> None:
    """view: the live panel on stderr (default: when stderr is a terminal)."""
    import uvicorn

    setup_logging()
    check(cfg)
    created = cfg.auth and ensure_token(state_dir)[1]
    rt = _runtime(state_dir)
    try:
        mcp = KernsightMCP(rt, limits)
        mcp.transport = "http"
        app = http_app(mcp, cfg)
        if cfg.auth:
            connect = usage(state_dir, cfg.url) + ("\n  (token generated now)" if created else "")
        else:
            connect = f"MCP endpoint: {cfg.url}\nWARNING: auth disabled (--no-auth); loopback only"
        header = "kernsight MCP server on Streamable HTTP (protocol 2025-11-25 and 2026-07-28)"
        panel = None
        if view if view is not None else sys.stderr.isatty():
            from .liveview import LiveView

            panel = LiveView(rt, f"{header}\n{connect}")
            panel.start()
        else:
            print(f"{header}\n{connect}", file=sys.stderr)
        sys.stderr.flush()
        config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning",
                                access_log=False)  # fmt: skip
        try:
            anyio.run(uvicorn.Server(config).serve)
        finally:
            if panel:
                panel.stop()
    finally:
        rt.close()
