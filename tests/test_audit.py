"""The audit log: signed notes (the Go sumdb/note vector), canonical JSON, crash safety, every
tampering case through the real `kernsight audit verify`, and receipts from a real MCP client
against a real `kernsight serve --http` (including a kill -9 under load)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import anyio
import httpx2
import pytest
import rfc8785
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from kernsight.trust.canon import _prep, canonical, check_canonical
from kernsight.trust.log import HEADER, AuditError, AuditLog, frame, read_frames
from kernsight.trust.merkle import leaf_hash
from kernsight.trust.note import (
    Checkpoint,
    NoteError,
    Signer,
    Verifier,
    key_id,
    load_or_create_signer,
    open_note,
)
from kernsight.trust.verify import result_digest, verify_log

KERNSIGHT = str(Path(sys.executable).parent / "kernsight")

# golang.org/x/mod/sumdb/note's documented example (an independent implementation's vector)
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIG = (
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
)


def test_signed_note_matches_go_sumdb_vector() -> None:
    v = Verifier.parse(GO_VKEY)
    s = Signer.parse(GO_SKEY)
    assert key_id("PeterNeumann", s.public).hex() == "c74f20a3"
    assert str(s.verifier) == GO_VKEY and str(s) == GO_SKEY
    note = s.sign(GO_TEXT)
    assert note == f"{GO_TEXT}\n\u2014 PeterNeumann {GO_SIG}\n"  # Ed25519 is deterministic
    assert open_note(note, v) == GO_TEXT
    other = Signer.generate("PeterNeumann")
    with pytest.raises(NoteError) as e:
        open_note(other.sign(GO_TEXT), v)
    assert e.value.kind == "foreign-key"
    with pytest.raises(NoteError) as e:
        open_note(note.replace("problem is", "problem was"), v)
    assert e.value.kind == "bad-signature"
    with pytest.raises(NoteError) as e:
        open_note(GO_TEXT, v)
    assert e.value.kind == "unsigned"
    for bad in [GO_VKEY.replace("c74f20a3", "c74f20a4"), GO_VKEY[:-2], "a+b", "x y+c74f20a3+AA"]:
        with pytest.raises(NoteError):
            Verifier.parse(bad)


def test_canonical_json_is_rfc8785_with_big_integers_as_strings() -> None:
    rnd = random.Random(7)
    floats = [0.1, 1.5, -2.25, 1e-5, 2.5e-7, 1e16, 1.2e20, 3e21, 123456.789, 9999999999999998.0,
              -0.0, 5e-324, 1.7976931348623157e308, 0.0001, 1 / 3]  # fmt: skip
    strings = ["", 'a"b\\c', "\n\t\x01\x1f\x7f", "é漢字", "\U0001f600", "\u2028\u2029"]

    def value(depth: int):  # noqa: ANN202
        r = rnd.random()
        if depth > 2 or r < 0.5:
            return rnd.choice(
                [
                    rnd.randint(-(2**53) + 1, 2**53 - 1),
                    rnd.choice(floats),
                    rnd.choice(strings),
                    None,
                    True,
                    False,
                    rnd.randint(2**53, 2**64),
                ]  # fmt: skip
            )
        if r < 0.75:
            return [value(depth + 1) for _ in range(rnd.randint(0, 4))]
        keys = ["b", "a", "B", "_", "\u00e9", "\U0001f600", "\uff61", "aa"]
        return {rnd.choice(keys): value(depth + 1) for _ in range(rnd.randint(0, 5))}

    for _ in range(2000):
        doc = {"v": value(0)}
        got = canonical(doc)
        assert got == rfc8785.dumps(_prep(doc, False)), doc
        assert check_canonical(got) is not None
    assert canonical({"t": 1764571234567890123, "n": float("nan")}) == (
        b'{"n":null,"t":"1764571234567890123"}'
    )
    assert canonical({"x": 2.0}) == b'{"x":2}'


# -- crash safety and ordering ------------------------------------------------------------------


def make_log(d: Path, n: int = 20, every: int = 5, signer: Signer | None = None) -> Signer:
    signer = signer or load_or_create_signer(d, "kernsight/test")
    log = AuditLog(d, signer, checkpoint_every=every, checkpoint_interval_s=3600)
    log.begin({"version": "test"})
    for i in range(n):
        log.record("event", {"i": i, "text": f"entry {i}"})
    log.close({"reason": "test"})
    return signer


def test_concurrent_appends_get_one_total_order(tmp_path: Path) -> None:
    signer = load_or_create_signer(tmp_path, "kernsight/test")
    assert (tmp_path / "key").stat().st_mode & 0o777 == 0o600
    log = AuditLog(tmp_path, signer, checkpoint_every=100)
    log.begin({})
    got: list[list[int]] = [[] for _ in range(8)]

    def work(t: int) -> None:
        for i in range(300):
            got[t].append(log.record("event", {"thread": t, "i": i}))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    indices = sorted(i for g in got for i in g)
    assert len(set(indices)) == 2400
    assert all(g == sorted(g) for g in got)  # each thread's entries in its own order
    recs = [json.loads(r) for _, r, p in read_frames((tmp_path / "log").read_bytes()) if not p]
    assert [r["index"] for r in recs] == list(range(len(recs)))  # file order == index order
    assert verify_log(tmp_path / "log", signer.verifier).ok
    first = AuditLog(tmp_path, signer)
    with pytest.raises(AuditError, match="another kernsight"):
        AuditLog(tmp_path, signer)  # one writer per log
    first.close()


def test_torn_tail_is_reported_then_recovered(tmp_path: Path) -> None:
    signer = make_log(tmp_path, n=3)
    path = tmp_path / "log"
    n = len([1 for _ in read_frames(path.read_bytes())])
    with open(path, "ab") as f:
        f.write(frame(canonical({"half": "written"}))[:11])  # a write cut short by power loss
    rep = verify_log(path, signer.verifier)
    assert (rep.problem.index, rep.problem.kind) == (n, "torn-tail")
    log = AuditLog(tmp_path, signer)  # the next start cuts it off, keeps it, and says so
    log.close()
    assert verify_log(path, signer.verifier).ok
    recs = [json.loads(r) for _, r, p in read_frames(path.read_bytes()) if not p]
    rec = recs[n]
    assert rec["type"] == "recovered" and rec["data"]["torn_bytes"] == 11
    assert Path(rec["data"]["saved_to"]).read_bytes() == frame(canonical({"half": "written"}))[:11]


# -- tampering: the real CLI -------------------------------------------------------------------


def cli_verify(path: Path, vkey: str, *extra: str) -> tuple[int, dict]:
    r = subprocess.run([KERNSIGHT, "audit", "verify", "--log", str(path), "--key", vkey,
                        "--json", *extra], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def records(path: Path) -> list[bytes]:
    return [r for _, r, p in read_frames(path.read_bytes()) if not p]


def write(path: Path, recs: list[bytes]) -> None:
    path.write_bytes(HEADER + b"".join(frame(r) for r in recs))


def rechain(objs: list[dict]) -> list[bytes]:
    """What an attacker without the key can do: renumber and re-link every record."""
    out, prev = [], "0" * 64
    for i, o in enumerate(objs):
        o = {**o, "index": i, "prev": prev}
        rec = rfc8785.dumps(o)
        out.append(rec)
        prev = leaf_hash(rec).hex()
    return out


@pytest.fixture
def small_log(tmp_path: Path) -> tuple[Path, Signer, str]:
    signer = make_log(tmp_path)
    return tmp_path / "log", signer, str(signer.verifier)


def objs_of(path: Path) -> list[dict]:
    return [json.loads(r) for r in records(path)]


def test_untampered_log_verifies(small_log) -> None:
    path, signer, vkey = small_log
    rc, rep = cli_verify(path, vkey, "--pinned", str(path.parent / "checkpoint"))
    assert rc == 0 and rep["ok"] and rep["checkpoints"] >= 5, rep
    out = subprocess.run(
        [KERNSIGHT, "audit", "key"],
        capture_output=True,
        text=True,
        env={**os.environ, "KERNSIGHT_STATE_DIR": str(path.parent.parent)},
    )
    assert out.returncode == 2  # no audit/ under that state dir: a clear error, no key invented


def test_one_byte_edited(small_log) -> None:
    path, _, vkey = small_log
    recs = records(path)
    k = next(i for i, r in enumerate(recs) if i > 6 and b'"entry ' in r)
    data = path.read_bytes()
    pos = data.index(recs[k]) + recs[k].index(b'"entry ') + 7
    path.write_bytes(data[:pos] + b"9" + data[pos + 1 :])  # naive: the CRC no longer matches
    rep = cli_verify(path, vkey)[1]
    assert (rep["index"], rep["kind"]) == (k, "checksum"), rep
    recs[k] = recs[k].replace(b'"entry ', b'"entrY ')  # careful: CRC recomputed
    write(path, recs)
    rc, rep = cli_verify(path, vkey)
    assert rc == 1 and (rep["index"], rep["kind"]) == (k, "chain-break"), rep


def test_every_bit_flip_is_found_at_its_record(tmp_path: Path) -> None:
    signer = load_or_create_signer(tmp_path, "k/t")
    log = AuditLog(tmp_path, signer)
    log.begin({})  # the smallest valid log: a start entry and its checkpoint
    log.close()
    path = tmp_path / "log"
    orig = path.read_bytes()
    spans = [(pos, pos + 8 + len(r), i) for i, (pos, r, _) in enumerate(read_frames(orig))]
    assert len(spans) == 2
    flipped = tmp_path / "flipped"
    for byte in range(len(orig)):
        want = next((i for a, b, i in spans if a <= byte < b), None)
        for bit in range(8):
            flipped.write_bytes(orig[:byte] + bytes([orig[byte] ^ 1 << bit]) + orig[byte + 1 :])
            rep = verify_log(flipped, signer.verifier)
            assert not rep.ok, (byte, bit)
            assert rep.problem.index == want, (byte, bit, rep.problem)
    for byte in (len(HEADER) + 3, spans[1][0] + 20, len(orig) - 1):  # and the real CLI agrees
        flipped.write_bytes(orig[:byte] + bytes([orig[byte] ^ 4]) + orig[byte + 1 :])
        rc, rep = cli_verify(flipped, str(signer.verifier))
        assert rc == 1 and rep["index"] == next(i for a, b, i in spans if a <= byte < b)


def test_tail_truncated(small_log) -> None:
    path, _, vkey = small_log
    pinned = path.parent / "checkpoint"
    data = path.read_bytes()
    n = len(records(path))
    last = list(read_frames(data))[-1][0]
    path.write_bytes(data[: last + 5])  # cut inside the last frame
    rep = cli_verify(path, vkey)[1]
    assert (rep["index"], rep["kind"]) == (n - 1, "torn-tail"), rep
    cut = list(read_frames(data))[n - 4][0]
    path.write_bytes(data[:cut])  # cut at a frame boundary: only a kept checkpoint shows it
    rc, rep = cli_verify(path, vkey, "--pinned", str(pinned))
    assert rc == 1 and (rep["index"], rep["kind"]) == (n - 4, "rollback"), rep


def test_tail_truncated_and_other_entries_appended_to_the_same_size(small_log) -> None:
    path, signer, vkey = small_log
    pinned = (path.parent / "checkpoint").read_text()
    (path.parent / "pinned").write_text(pinned)
    n = len(records(path))
    data = path.read_bytes()
    cut = list(read_frames(data))[12][0]
    path.write_bytes(data[:cut])
    # root itself rewriting history: same key, a fresh checkpoint, the same size as before
    log = AuditLog(path.parent, signer, checkpoint_every=10**9, checkpoint_interval_s=3600)
    while log.size < n - 1:
        log.record("event", {"i": -1, "text": "forged"})
    log.close()
    assert len(records(path)) == n
    assert cli_verify(path, vkey)[0] == 0  # self-consistent...
    rc, rep = cli_verify(path, vkey, "--pinned", str(path.parent / "pinned"))
    assert rc == 1 and rep["kind"] == "fork", rep  # ...but not what was signed before


def test_records_swapped_deleted_inserted(small_log) -> None:
    path, _, vkey = small_log
    orig = records(path)
    k = 6
    recs = list(orig)
    recs[k], recs[k + 1] = recs[k + 1], recs[k]
    write(path, recs)
    rep = cli_verify(path, vkey)[1]
    assert (rep["index"], rep["kind"]) == (k, "swapped"), rep
    write(path, orig[:k] + orig[k + 1 :])
    rc, rep = cli_verify(path, vkey)
    assert rc == 1 and (rep["index"], rep["kind"]) == (k, "deleted"), rep
    extra = json.loads(orig[k])
    extra["data"] = {"i": 99, "text": "inserted"}
    write(path, orig[:k] + [rfc8785.dumps(extra)] + orig[k:])
    rc, rep = cli_verify(path, vkey)
    assert rc == 1 and (rep["index"], rep["kind"]) == (k, "inserted"), rep
    objs = [json.loads(r) for r in orig]
    write(path, rechain(objs[:k] + [extra] + objs[k:]))  # renumbered and re-linked
    rc, rep = cli_verify(path, vkey)
    assert rc == 1 and rep["kind"] == "inserted" and rep["index"] <= k, rep


def test_older_checkpoint_against_newer_pinned(small_log) -> None:
    path, _, vkey = small_log
    newer = path.parent / "checkpoint"
    objs = objs_of(path)
    cps = [o for o in objs if o["type"] == "checkpoint"]
    older = path.parent / "older"
    older.write_text(cps[1]["data"]["note"])
    assert cli_verify(path, vkey, "--pinned", str(older))[0] == 0  # an old head: consistent
    write(path, records(path)[: cps[1]["index"] + 1])  # the log put back to that older head
    assert cli_verify(path, vkey)[0] == 0
    rc, rep = cli_verify(path, vkey, "--pinned", str(newer))
    assert rc == 1 and (rep["index"], rep["kind"]) == (cps[1]["index"] + 1, "rollback"), rep


def test_checkpoint_signed_by_another_key_and_stripped_signatures(small_log) -> None:
    path, signer, vkey = small_log
    objs = objs_of(path)
    cp = next(o for o in objs if o["type"] == "checkpoint" and o["index"] > 5)
    i = cp["index"]
    body = Checkpoint.parse(cp["data"]["note"].split("\n\n")[0] + "\n").body()
    mallory = Signer.generate(signer.name)
    forged = [dict(o) for o in objs]
    forged[i] = {**cp, "data": {"note": mallory.sign(body)}}
    write(path, rechain(forged))
    rc, rep = cli_verify(path, vkey)
    assert rc == 1 and (rep["index"], rep["kind"]) == (i, "foreign-key"), rep
    stripped = [
        {**o, "data": {"note": o["data"]["note"].split("\n\n")[0] + "\n"}}
        if o["type"] == "checkpoint" else o
        for o in objs
    ]  # fmt: skip
    write(path, rechain(stripped))
    rc, rep = cli_verify(path, vkey)
    assert rc == 1 and (rep["index"], rep["kind"]) == (1, "unsigned-checkpoint"), rep
    write(path, rechain([o for o in objs if o["type"] != "checkpoint"]))  # all of them removed
    rc, rep = cli_verify(path, vkey)
    assert rc == 1 and (rep["index"], rep["kind"]) == (1, "missing-checkpoint"), rep


def test_duplicate_keys_and_non_canonical_records(small_log) -> None:
    path, _, vkey = small_log
    orig = records(path)
    k = 4
    cases = {
        "duplicate-key": orig[k].replace(b'"index":', b'"index":%d,"index":' % k, 1),
        "non-canonical": orig[k].replace(b'{"data":', b'{ "data":', 1),
    }
    reordered = dict(reversed(json.loads(orig[k]).items()))
    cases["non-canonical "] = json.dumps(reordered, separators=(",", ":")).encode()  # key order
    cases["non-canonical  "] = orig[k].replace(b'"i":%d' % (k - 2), b'"i":%d.0' % (k - 2))
    cases["non-canonical   "] = orig[k].replace(b'"entry', b'"\\u0065ntry')
    for kind, rec in cases.items():
        assert rec != orig[k], kind
        write(path, orig[:k] + [rec] + orig[k + 1 :])
        rc, rep = cli_verify(path, vkey)
        assert rc == 1 and (rep["index"], rep["kind"]) == (k, kind.strip()), (kind, rep)


# -- the server: receipts, a real client, kill -9 -----------------------------------------------


def test_call_is_refused_when_its_request_cannot_be_logged(tmp_path: Path) -> None:
    from kernsight.runtime import Runtime
    from kernsight.server.app import KernsightMCP

    with Runtime(tmp_path, sources=()) as rt:  # not started: no capture needed
        app = KernsightMCP(rt)
        rt.audit.close()  # e.g. the disk is gone: appends fail

        async def main() -> None:
            async with Client(app.server) as c:
                r = await c.call_tool("subscribe", {"sql": "SELECT pid FROM process"})
                assert r.is_error and r.content[0].text.startswith("refused: the audit log")

        anyio.run(main)
        assert rt.subscriptions.list() == []  # the tool did not run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(state: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [KERNSIGHT, "serve", "--http", f"127.0.0.1:{port}", "--no-view"],
        env={**os.environ, "KERNSIGHT_STATE_DIR": str(state)},
        stdout=subprocess.DEVNULL, stderr=open(state / "stderr.log", "ab"),
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            assert proc.poll() is None, (state / "stderr.log").read_text()
            time.sleep(0.1)
    raise TimeoutError("server did not start")


async def with_client(url: str, token: str, body) -> None:  # noqa: ANN001
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as h:
        async with Client(streamable_http_client(url, http_client=h)) as c:
            await body(c)


def dump(r) -> dict:  # noqa: ANN001
    return r.model_dump(mode="json", by_alias=True, exclude_none=True)


def receipt_of(doc: dict) -> dict:
    return (doc.get("structuredContent") or {}).get("receipt") or doc["_meta"][
        "dev.kernsight/receipt"
    ]


@pytest.mark.bpf
def test_receipts_end_to_end_and_kill_9_under_load(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    proc = start_server(state, port)
    token = (state / "http-token").read_text().strip()
    vkey = subprocess.run(
        [KERNSIGHT, "audit", "key"],
        capture_output=True,
        text=True,
        env={**os.environ, "KERNSIGHT_STATE_DIR": str(state)},
    ).stdout.strip()
    assert vkey.startswith("kernsight/") and Verifier.parse(vkey)  # fmt: skip
    tag = f"ks-audit-{uuid.uuid4().hex[:8]}"
    saved = tmp_path / "result.json"

    async def e2e(c: Client) -> None:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert {"audit_checkpoint", "audit_proof", "query"} <= set(tools)
        for t in tools.values():  # a schema closed to extra properties would reject the receipt
            assert (t.output_schema or {}).get("additionalProperties", True) is not False, t.name

        async def spawn() -> None:
            await anyio.sleep(0.4)
            await anyio.to_thread.run_sync(
                lambda: subprocess.run(["/bin/echo", tag], stdout=subprocess.DEVNULL)
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(spawn)
            r = await c.call_tool("query", {  # the SDK client validates the output schema
                "sql": f"SELECT pid, comm, argv FROM process WHERE argv LIKE '%{tag}%'",
                "live_seconds": 1.2})  # fmt: skip
        assert not r.is_error, r.content[0].text
        assert r.structured_content["rows"][0][1] == "echo"
        rc = r.structured_content["receipt"]
        assert r.content[-1].text.startswith("audit receipt:") and str(rc["index"]) in (
            r.content[-1].text
        )
        entry = json.loads(rc["entry"])
        assert entry["data"]["rows"] == 1 and entry["data"]["batches"] is not None
        saved.write_text(json.dumps(dump(r)))
        p = await c.call_tool("audit_proof", {"index": rc["index"], "old_size": 2})
        assert not p.is_error and p.structured_content["consistency_proof"] is not None
        cp = await c.call_tool("audit_checkpoint", {})
        assert cp.structured_content["verifier_key"] == vkey
        (tmp_path / "pinned").write_text(cp.structured_content["checkpoint"])

    anyio.run(with_client, url, token, e2e)
    r = subprocess.run([KERNSIGHT, "audit", "verify-receipt", str(saved), "--key", vkey,
                        "--no-log"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    forged = json.loads(saved.read_text())
    forged["structuredContent"]["rows"][0][2] = "/bin/echo innocent"
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    r = subprocess.run([KERNSIGHT, "audit", "verify-receipt", str(tmp_path / "forged.json"),
                        "--key", vkey, "--no-log"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 1 and "result altered" in r.stdout

    # many concurrent requests, then kill -9 while they are in flight
    got: list[dict] = []
    stop = threading.Event()

    async def flood(c: Client) -> None:
        async def one(i: int) -> None:
            while not stop.is_set():
                r = await c.call_tool("list_tables" if i % 2 else "status", {})
                got.append(dump(r))

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(one, i)

    def client() -> None:
        try:
            anyio.run(with_client, url, token, flood)
        except BaseException:  # the server dies under it
            pass

    t = threading.Thread(target=client)
    t.start()
    deadline = time.monotonic() + 10
    while len(got) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    stop.set()
    t.join(timeout=20)
    assert len(got) >= 60
    proc = start_server(state, port)  # restart on the same log
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    log = state / "audit" / "log"
    rc, rep = cli_verify(log, vkey, "--pinned", str(tmp_path / "pinned"))
    assert rc == 0, rep
    objs = {o["index"]: o for o in map(json.loads, records(log))}
    starts = [o for o in objs.values() if o["type"] == "start"]
    assert len(starts) == 2 and not [o for o in objs.values() if o["type"] == "recovered"]
    for doc in got:  # every response the client received is in the log, with its digest
        rc_ = receipt_of(doc)
        assert objs[rc_["index"]]["type"] == "response"
        assert objs[rc_["index"]]["data"]["result_sha256"] == result_digest(doc)
        req = objs[objs[rc_["index"]]["data"]["request"]]
        assert req["type"] == "request" and req["data"]["principal"]["client"] == "default"
    r = subprocess.run([KERNSIGHT, "audit", "verify-receipt", str(saved), "--key", vkey,
                        "--log", str(log)], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0 and "holds entry" in r.stdout, r.stdout + r.stderr
    batches = [o for o in objs.values() if o["type"] == "batch"]
    assert batches and all(len(o["data"]["arrow_sha256"]) == 64 for o in batches)
    stop_ = [o for o in objs.values() if o["type"] == "stop"]
    assert len(stop_) == 1  # the killed run has none: its end is the kill
