"""Every MCP tool call into the audit log, and a receipt into every tool result.

`AuditExtension` is an SDK extension whose `tools/call` interceptor wraps every tool (today's and
any registered later, by anyone): the request is logged before the tool runs (a call whose
request cannot be logged is refused), the result is digested and logged, and the result gets a
`receipt` (structured content, or `_meta` when there is none, plus one text block starting with
"audit receipt:"). The receipt holds the response entry, a signed checkpoint that contains it
and the inclusion proof, so `kernsight audit verify-receipt` can check a saved result offline.

trust/ knows nothing of MCP; this module is the only place the two meet.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import stat
import struct
from typing import TYPE_CHECKING, Annotated, Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, ToolBinding
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolRequestParams, CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from ..trust.canon import canonical, sha256_hex
from ..trust.log import AuditError, AuditLog
from ..trust.verify import RECEIPT_MARK, result_digest

if TYPE_CHECKING:
    from .app import KernsightMCP

AUDIT = "audit:read"
MAX_ARG_STRING = 4096  # logged arguments are cut here; their digest covers them whole
MAX_ARG_ITEMS = 64
META_KEY = "dev.kernsight/receipt"


def bounded(v: Any, depth: int = 0) -> tuple[Any, bool]:
    """(v cut to bounded size, whether anything was cut)."""
    if isinstance(v, str):
        return (v[:MAX_ARG_STRING], True) if len(v) > MAX_ARG_STRING else (v, False)
    if depth > 8 and isinstance(v, dict | list):
        return "...", True
    if isinstance(v, dict):
        items = list(v.items())
        out, cut = {}, len(items) > MAX_ARG_ITEMS
        for k, x in items[:MAX_ARG_ITEMS]:
            out[str(k)[:256]], c = bounded(x, depth + 1)
            cut |= c
        return out, cut
    if isinstance(v, list):
        parts = [bounded(x, depth + 1) for x in v[:MAX_ARG_ITEMS]]
        return [p for p, _ in parts], len(v) > MAX_ARG_ITEMS or any(c for _, c in parts)
    return v, False


def stdio_peer() -> dict[str, Any]:
    """Who is on the other end of stdin: SO_PEERCRED for a socket, else the parent process
    (a client that launched us over pipes)."""
    try:
        if stat.S_ISSOCK(os.fstat(0).st_mode):
            with socket.socket(fileno=os.dup(0)) as s:
                cred = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _ = struct.unpack("3i", cred)
            return {"peer_pid": pid, "peer_uid": uid, "peer_via": "SO_PEERCRED"}
    except OSError:
        pass
    ppid = os.getppid()
    uid = None
    try:
        for line in open(f"/proc/{ppid}/status"):
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
    except OSError:
        pass
    return {"peer_pid": ppid, "peer_uid": uid, "peer_via": "parent process"}


def principal(ctx: ServerRequestContext, transport: str, peer: dict[str, Any]) -> dict[str, Any]:
    tok = get_access_token()
    req = ctx.request
    if tok is None and req is not None:
        user = getattr(req, "scope", {}).get("user")
        tok = getattr(user, "access_token", None)
    p: dict[str, Any] = {"transport": transport}
    if tok is not None:
        p.update(client=tok.client_id, subject=tok.subject, scopes=sorted(tok.scopes),
                 token_sha256=hashlib.sha256(tok.token.encode()).hexdigest()[:16])  # fmt: skip
    else:
        p.update(client="local", scopes="all")
    client = getattr(req, "client", None) if req is not None else None
    if client is not None:
        p["peer"] = f"{client.host}:{client.port}"
    else:
        p.update(peer)
    return p


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


class CheckpointOut(BaseModel):
    checkpoint: str = Field(description="C2SP signed note: origin, tree size, base64 root")
    origin: str
    tree_size: int
    root: str = Field(description="base64 SHA-256 Merkle root (RFC 9162)")
    verifier_key: str = Field(description="name+keyid+base64 Ed25519 key that signs checkpoints")


class ProofOut(BaseModel):
    index: int
    tree_size: int
    root: str
    entry: str = Field(description="the record (RFC 8785 JSON); leaf = SHA-256(0x00 || entry)")
    inclusion_proof: list[str] = Field(description="RFC 9162 audit path, base64 hashes")
    checkpoint: str | None = Field(description="signed checkpoint of tree_size, when this server "
                                   "signed one of that size last")  # fmt: skip
    old_size: int | None
    consistency_proof: list[str] | None = Field(description="RFC 9162 proof old_size -> tree_size")


class AuditExtension(Extension):
    identifier = "dev.kernsight/audit"

    def __init__(self, app: KernsightMCP, log: AuditLog) -> None:
        self.app, self.log = app, log
        self._peer: dict[str, Any] | None = None

    def settings(self) -> dict[str, Any]:
        return {"receipts": True, "origin": self.log.origin,
                "verifier_key": str(self.log.signer.verifier)}  # fmt: skip

    def _peer_info(self) -> dict[str, Any]:
        if self._peer is None:
            t = self.app.transport
            self._peer = stdio_peer() if t == "stdio" else {"peer_pid": os.getpid(),
                                                            "peer_uid": os.getuid()}  # fmt: skip
        return self._peer

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any],
        call_next: CallNext,
    ) -> HandlerResult:  # fmt: skip
        args = params.arguments or {}
        logged, cut = bounded(args)
        try:
            req = self.log.record("request", {
                "principal": principal(ctx, self.app.transport, self._peer_info()),
                "method": "tools/call", "tool": params.name[:128],
                "request_id": None if ctx.request_id is None else str(ctx.request_id)[:128],
                "args": logged, "args_truncated": cut, "args_sha256": sha256_hex(canonical(args)),
            })  # fmt: skip
        except (AuditError, TypeError, ValueError) as e:
            return CallToolResult(content=[TextContent(type="text", text=(
                f"refused: the audit log could not record this call, so it was not run ({e})"))],
                is_error=True)  # fmt: skip
        result = await call_next(ctx)
        if not isinstance(result, CallToolResult):
            return result  # an input-required round trip: the final call is logged on its own
        try:
            return self._receipt(req, params.name, result)
        except (AuditError, TypeError, ValueError) as e:
            return CallToolResult(content=[TextContent(type="text", text=(
                f"withheld: the audit log could not record this result ({e})"))],
                is_error=True)  # fmt: skip

    def _receipt(self, req: int, tool: str, result: CallToolResult) -> CallToolResult:
        doc = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        digest = result_digest(doc)
        sc = result.structured_content if isinstance(result.structured_content, dict) else None
        rows = sc.get("rows") if sc else None
        meta = sc.get("meta") if sc else None
        batches = meta.get("batches") if isinstance(meta, dict) else None
        idx = self.log.record("response", {
            "request": req, "tool": tool[:128], "result_sha256": digest,
            "is_error": bool(result.is_error),
            "rows": len(rows) if isinstance(rows, list) else None,
            "batches": batches if isinstance(batches, list) else None,
        })  # fmt: skip
        note, size = self.log.covering(idx)
        receipt = {
            "log": self.log.origin, "index": idx, "request_index": req, "result_sha256": digest,
            "entry": self.log.entry(idx).decode(), "checkpoint": note, "tree_size": size,
            "inclusion_proof": _b64(self.log.inclusion_proof(idx, size)),
        }  # fmt: skip
        text = (f"{RECEIPT_MARK} response entry {idx} of log {self.log.origin}, result sha256 "
                f"{digest}, in signed checkpoint size {size} (check: kernsight audit "
                "verify-receipt FILE)")  # fmt: skip
        update: dict[str, Any] = {"content": [*result.content, TextContent(type="text", text=text)]}
        if sc is not None:
            update["structured_content"] = {**sc, "receipt": receipt}
        else:
            update["meta"] = {**(result.meta or {}), META_KEY: receipt}
        return result.model_copy(update=update)

    # -- the audit tools -----------------------------------------------------------------------
    def tools(self) -> list[ToolBinding]:
        ro = ToolAnnotations(read_only_hint=True, open_world_hint=False, destructive_hint=False,
                             idempotent_hint=False)  # fmt: skip
        log, app = self.log, self.app

        def audit_checkpoint(ctx: Context) -> Annotated[CallToolResult, CheckpointOut]:
            app.admit(ctx, AUDIT)
            note, size = log.checkpoint()
            out = CheckpointOut(checkpoint=note, origin=log.origin, tree_size=size,
                                root=_b64([log.root(size)])[0],
                                verifier_key=str(log.signer.verifier))  # fmt: skip
            return CallToolResult(content=[TextContent(type="text", text=note)],
                                  structured_content=out.model_dump())  # fmt: skip

        def audit_proof(
            ctx: Context,
            index: Annotated[int, Field(ge=0, description="entry index (a receipt's index)")],
            tree_size: Annotated[int | None, Field(ge=1, description=(
                "tree size to prove inclusion in (default: a signed checkpoint covering index)"
            ))] = None,
            old_size: Annotated[int | None, Field(ge=1, description=(
                "also prove that tree_size extends this older size (consistency)"))] = None,
        ) -> Annotated[CallToolResult, ProofOut]:  # fmt: skip
            app.admit(ctx, AUDIT)
            if index >= log.size:
                raise ToolError(f"no entry {index}: the log has {log.size} entries")
            note = None
            if tree_size is None:
                note, tree_size = log.covering(index)
            elif not index < tree_size <= log.size:
                raise ToolError(f"tree_size must be in ({index}, {log.size}]")
            elif log.latest_size == tree_size:
                note = log.latest
            cons = None
            if old_size is not None:
                if old_size > tree_size:
                    raise ToolError(f"old_size {old_size} > tree_size {tree_size}")
                cons = _b64(log.consistency_proof(old_size, tree_size))
            out = ProofOut(
                index=index, tree_size=tree_size, root=_b64([log.root(tree_size)])[0],
                entry=log.entry(index).decode(), checkpoint=note,
                inclusion_proof=_b64(log.inclusion_proof(index, tree_size)),
                old_size=old_size, consistency_proof=cons,
            )  # fmt: skip
            text = f"entry {index} in tree size {tree_size}: {len(out.inclusion_proof)} hashes" + (
                f"; consistency {old_size} -> {tree_size}" if cons is not None else ""
            )
            return CallToolResult(content=[TextContent(type="text", text=text)],
                                  structured_content=out.model_dump())  # fmt: skip

        return [
            ToolBinding(audit_checkpoint, kwargs={"annotations": ro, "description": (
                "Sign and return the audit log's current checkpoint (C2SP signed note: origin, "
                "tree size, Merkle root). Keep it: `kernsight audit verify --pinned FILE` then "
                "proves the log was not rolled back or rewritten behind it.")}),
            ToolBinding(audit_proof, kwargs={"annotations": ro, "description": (
                "Inclusion proof of audit entry `index` (e.g. a result's receipt.index) in a "
                "tree size, and optionally a consistency proof from an older size.")}),
        ]  # fmt: skip
