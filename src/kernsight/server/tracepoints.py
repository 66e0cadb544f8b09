"""MCP tools over the kernel's tracepoints: list_tracepoints and describe_tracepoint.

Every tracepoint is a table tp.<category>.<name>; these tools say which exist and what their
columns mean. The runtime does the work (the server knows nothing of tracefs or BPF).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from .app import KernsightMCP


class TracepointEntry(BaseModel):
    name: str = Field(description="category:name")
    category: str
    table: str = Field(description="the SQL table: tp.<category>.<name>")
    capturing: bool = Field(description="captured right now (a query or subscription uses it)")


class TracepointsOut(BaseModel):
    total: int = Field(description="tracepoints matching the filter")
    cursor: int
    next_cursor: int | None = Field(description="pass as cursor for the next page; null: done")
    tracepoints: list[TracepointEntry]


class TracepointField(BaseModel):
    name: str
    column: str = Field(description="its column in the table (tp_ prefix when it would clash)")
    c_type: str
    offset: int
    size: int
    signed: bool
    kind: str = Field(description="int, pointer, chars, array, string, dyn_array or raw")
    element_size: int | None = None
    count: int | None = None
    note: str | None = None


class TracepointOut(BaseModel):
    name: str
    table: str
    id: int
    description: str = Field(description="the kernel's print format with fields named")
    print_fmt: str
    fixed_size: int
    fields: list[TracepointField]
    columns: list[str]
    example: str


def tracepoint_tools(app: KernsightMCP) -> tuple[Any, Any]:
    from .app import result

    async def call(fn):
        import anyio.to_thread

        try:
            return await anyio.to_thread.run_sync(fn)
        except (KeyError, ValueError) as e:
            raise ToolError(str(e.args[0] if isinstance(e, KeyError) and e.args else e)) from None
        except Exception as e:  # tracefs missing, permissions: said, not hidden
            raise ToolError(f"{type(e).__name__}: {e}") from None

    async def list_tracepoints(
        ctx: Context,
        filter: Annotated[
            str | None,
            Field(max_length=128, description="substring of category:name, or a glob (* ?)"),
        ] = None,
        cursor: Annotated[int, Field(ge=0, description="next_cursor of the previous page")] = 0,
    ) -> Annotated[CallToolResult, TracepointsOut]:
        app.admit(ctx)
        d = await call(lambda: app.runtime.list_tracepoints(filter, cursor))
        lines = [f"{d['total']} tracepoints" + (f" matching {filter!r}" if filter else "")
                 + f"; rows {cursor}..{cursor + len(d['tracepoints'])}"
                 + (f", next_cursor={d['next_cursor']}" if d["next_cursor"] is not None else ""),
                 "name,table,capturing"]  # fmt: skip
        lines += [f"{t['name']},{t['table']},{t['capturing']}" for t in d["tracepoints"]]
        return result("\n".join(lines), TracepointsOut(**d).model_dump())

    async def describe_tracepoint(
        ctx: Context,
        name: Annotated[
            str, Field(max_length=128, description="category:name or tp.<category>.<name>")
        ],
    ) -> Annotated[CallToolResult, TracepointOut]:
        app.admit(ctx)
        d = await call(lambda: app.runtime.describe_tracepoint(name))
        lines = [f"{d['name']} (table {d['table']}): {d['description']}",
                 "column,c_type,offset,size,signed,kind,note"]  # fmt: skip
        lines += [f"{f['column']},{f['c_type']},{f['offset']},{f['size']},{f['signed']},"
                  f"{f['kind']},{f.get('note', '')}" for f in d["fields"]]  # fmt: skip
        lines += ["every row also has: ts, pid, tid, uid, comm, cgroup_id, record_size, "
                  "truncated, batch", f"example: {d['example']}"]  # fmt: skip
        return result("\n".join(lines), TracepointOut(**d).model_dump())

    return list_tracepoints, describe_tracepoint
