// An independent MCP client: the official TypeScript SDK, over Streamable HTTP with a bearer
// token. Lists tools, runs a query over real kernel data, subscribes to execs carrying a tag,
// prints READY, then polls until the exec the Python test makes shows up. One JSON line out.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token, tag] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "kernsight-ts-test", version: "1.0.0" });
await client.connect(transport);

const out = { protocol: transport.protocolVersion ?? null };
out.tools = (await client.listTools()).tools.map((t) => t.name).sort();

const q = await client.callTool({
  name: "query",
  arguments: { sql: "SELECT count(*) AS n FROM process", limit: 10 },
});
out.query_error = q.isError ?? false;
out.query = q.structuredContent;

const sub = await client.callTool({
  name: "subscribe",
  arguments: { sql: `SELECT pid, argv FROM process WHERE event = 'exec' AND argv LIKE '%${tag}%'` },
});
const id = sub.structuredContent.subscription_id;
console.log("READY");

out.rows = [];
let cursor;
const deadline = Date.now() + 15000;
while (out.rows.length === 0 && Date.now() < deadline) {
  const args = { subscription_id: id, wait_ms: 2000 };
  if (cursor !== undefined) args.cursor = cursor;
  const p = await client.callTool({ name: "poll", arguments: args });
  const s = p.structuredContent;
  cursor = s.next_cursor;
  out.rows.push(...s.rows);
  out.poll_columns = s.columns;
}
await client.close();
console.log(JSON.stringify(out));
