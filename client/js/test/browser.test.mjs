// Headless Chromium: the demo page shows a second tab's join in the first
// tab, two tabs of one user are two connections of one member, and the /ui
// live page renders (screenshot saved as a CI artifact).
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import { createHash } from "node:crypto";
import path from "node:path";
import { startServer, eventually, getJSON, postJSON, launchChromium, repoRoot } from "./helpers.mjs";

const artifacts = process.env.CI_ARTIFACTS || path.join(repoRoot, "artifacts");

test("demo page: a second tab's join appears in the first tab, and its close leaves", async (t) => {
  const srv = await startServer(t, ["--leave-delay", "0"]);
  const browser = await launchChromium(t);
  const a = await browser.open(`${srv.base}/ui/demo?user=alice&room=lobby`);
  await eventually("alice's tab shows alice", async () => (await a.eval("document.body?.dataset.members || ''")) === "alice", 20000);
  const b = await browser.open(`${srv.base}/ui/demo?user=bob&room=lobby`);
  await eventually("bob's join shown in alice's tab", async () => (await a.eval("document.body?.dataset.members || ''")) === "alice,bob", 20000);
  assert.match(await a.eval("document.getElementById('status').textContent"), /alice via ws/);
  // Closing bob's tab: the pagehide beacon (or the socket's disconnect) ends bob's session.
  await b.close();
  await eventually("bob gone from alice's tab", async () => (await a.eval("document.body?.dataset.members || ''")) === "alice", 20000);
});

/**
 * Record a room's events from GET /v1/events?room= (server-sent events)
 * until stop() or the end of t. The server subscribes before it answers,
 * so every event after this resolves is recorded.
 */
async function recordEvents(t, base, room) {
  const ac = new AbortController();
  const res = await fetch(`${base}/v1/events?room=${encodeURIComponent(room)}`, { signal: ac.signal });
  assert.equal(res.status, 200);
  const events = [];
  const reading = (async () => {
    const dec = new TextDecoder();
    let buf = "";
    try {
      for await (const chunk of res.body) {
        buf += dec.decode(chunk, { stream: true });
        for (let i; (i = buf.indexOf("\n\n")) >= 0;) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          for (const line of block.split("\n")) if (line.startsWith("data:")) events.push(JSON.parse(line.slice(5)));
        }
      }
    } catch { /* aborted, or the server stopped */ }
  })();
  const stop = () => { ac.abort(); return reading; };
  t.after(stop);
  return { events, stop };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test("two tabs of one user: closing one keeps the user with one connection, closing the second is one leave", async (t) => {
  const leaveDelay = 200;
  const srv = await startServer(t, ["--leave-delay", leaveDelay + "ms"]);
  const room = "two-tabs";
  const feed = await recordEvents(t, srv.base, room);
  const of = (type) => feed.events.filter((e) => e.type === type && e.user === "alice");
  // "user:conn+conn" per member, from the server.
  const listed = async () => (await getJSON(`${srv.base}/v1/rooms/${room}/members`)).body.members
    .map((m) => m.user + ":" + m.connections.map((c) => c.conn).sort().join("+")).join(",");

  const browser = await launchChromium(t);
  const tab1 = await browser.open(`${srv.base}/ui/demo?user=alice&room=${room}`);
  await eventually("tab 1 shows alice", async () => (await tab1.eval("document.body?.dataset.members || ''")) === "alice", 20000);
  const c1 = await tab1.eval("window.presence.conn");
  await eventually("alice's join, for tab 1's connection", async () => of("join").length === 1, 10000);
  assert.equal(of("join")[0].conn, c1);
  const tab2 = await browser.open(`${srv.base}/ui/demo?user=alice&room=${room}`);
  await eventually("tab 2 shows alice", async () => (await tab2.eval("document.body?.dataset.members || ''")) === "alice", 20000);
  const c2 = await tab2.eval("window.presence.conn");
  assert.match(c1, /^[A-Za-z0-9_-]{16}$/);
  assert.match(c2, /^[A-Za-z0-9_-]{16}$/);
  assert.notEqual(c1, c2, "each tab is its own connection");
  await eventually("members: alice with both tabs' connections", async () => (await listed()) === "alice:" + [c1, c2].sort().join("+"), 10000);
  await eventually("an update for tab 2's connection", async () => of("update").some((e) => e.conn === c2 && e.connections?.length === 2), 10000);

  // Tab 1 closes: its pagehide beacon (and its socket's close) end tab 1's connection only.
  await tab1.close();
  const ended = await eventually("an update: tab 1's connection ended", async () => of("update").find((e) => e.conn === c1), 10000);
  assert.deepEqual(ended.connections.map((c) => c.conn), [c2]);
  assert.ok(["left", "disconnect"].includes(ended.reason), "reason " + ended.reason);
  await sleep(5 * leaveDelay); // time for a wrong leave to arrive: several leave delays
  assert.deepEqual(of("leave"), [], "no leave while tab 2 is open");
  assert.equal(of("join").length, 1);
  assert.equal(await listed(), "alice:" + c2);
  // Tab 2 sees the same through the module, and still shows alice.
  assert.equal(await tab2.eval(`import("/ui/presenced.js").then((m) => m.members(location.origin, ${JSON.stringify(room)}))
    .then((ms) => ms.map((m) => m.user + ":" + m.connections.map((c) => c.conn).join("+")).join(","))`), "alice:" + c2);
  assert.equal(await tab2.eval("document.body.dataset.members"), "alice");

  // Tab 2 closes: alice leaves, once.
  await tab2.close();
  await eventually("alice's leave", async () => of("leave").length > 0, 10000);
  await eventually("the room vacated", async () => feed.events.some((e) => e.type === "vacated"), 10000);
  await sleep(5 * leaveDelay); // time for a second leave to arrive
  assert.equal(of("leave").length, 1, "exactly one leave: " + JSON.stringify(of("leave")));
  assert.equal(of("join").length, 1);
  assert.equal(await listed(), "");
  await feed.stop();
});

test("/ui: stats, top rooms, members and the live feed render; guarded by --api-token-file", async (t) => {
  const tok = "ui-token-0123456789abcdef";
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "presenced-ui-test-"));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, "tokens"), tok + "\n");
  const srv = await startServer(t, ["--leave-delay", "0", "--api-token-file", path.join(dir, "tokens")]);
  assert.equal((await fetch(srv.base + "/ui")).status, 401);
  assert.equal((await fetch(srv.base + "/ui?access_token=" + tok)).status, 200);
  for (const [u, r] of [["ann", "kitchen"], ["ben", "kitchen"], ["cy", "kitchen"], ["dee", "garden"]]) {
    assert.equal((await postJSON(srv.base + "/v1/heartbeat", { user: u, room: r })).status, 200);
  }
  const browser = await launchChromium(t);
  const page = await browser.open(`${srv.base}/ui?access_token=${tok}&room=kitchen`);
  await eventually("the page loaded its data", async () => (await page.eval("document.body?.dataset.loaded || ''")) === "1", 20000);
  assert.equal(await page.eval("document.getElementById('online_users').textContent"), "4");
  assert.equal(await page.eval("[...document.querySelectorAll('#top tr')].map(tr => tr.dataset.room + '=' + tr.cells[1].textContent).join(',')"), "kitchen=3,garden=1");
  assert.equal(await page.eval("[...document.querySelectorAll('#members tr')].map(tr => tr.dataset.user).sort().join(',')"), "ann,ben,cy");
  await eventually("the feed is live", async () => (await page.eval("document.getElementById('conn').textContent")) === "live", 20000);
  await postJSON(srv.base + "/v1/heartbeat", { user: "eve", room: "kitchen" });
  await eventually("eve's join in the feed and the members", async () =>
    (await page.eval("document.getElementById('feed').textContent")).includes("join eve @kitchen") &&
    (await page.eval("[...document.querySelectorAll('#members tr')].map(tr => tr.dataset.user).sort().join(',')")) === "ann,ben,cy,eve", 20000);
  fs.mkdirSync(artifacts, { recursive: true });
  const png = await page.screenshot();
  assert.ok(png.length > 1000 && png.subarray(1, 4).toString() === "PNG");
  fs.writeFileSync(path.join(artifacts, "ui.png"), png);
});

/**
 * A stand-in for presenced serving /ui from the repository with fixed
 * answers, whose WebSocket answers every op and lets the test push events:
 * the page's handling of connections without a server that tracks them.
 */
async function fakeUIServer(t, state) {
  const files = { "/ui": path.join(repoRoot, "server/internal/ui/index.html"), "/ui/presenced.js": path.join(repoRoot, "client/js/presenced.js") };
  const sockets = new Set();
  const srv = http.createServer((req, res) => {
    const u = new URL(req.url, "http://x");
    const json = (v) => { res.setHeader("Content-Type", "application/json"); res.end(JSON.stringify(v)); };
    if (files[u.pathname]) {
      res.setHeader("Content-Type", u.pathname.endsWith(".js") ? "text/javascript" : "text/html");
      res.end(fs.readFileSync(files[u.pathname]));
    } else if (u.pathname === "/v1/stats") json({ online_users: 1, sessions: 1, rooms: 1, connections: state.connections.length });
    else if (u.pathname === "/v1/rooms") json({ rooms: [{ room: "kitchen", online: 1 }] });
    else if (u.pathname === "/v1/rooms/kitchen/members") {
      json({ room: "kitchen", members: [{ user: "ann", last_seen: "2026-12-07T10:00:00.000Z", connections: state.connections }], next_cursor: null });
    } else { res.statusCode = 404; json({ error: "not found" }); }
  });
  const frame = (text) => {
    const p = Buffer.from(text);
    const head = p.length < 126 ? Buffer.from([0x81, p.length]) : Buffer.from([0x81, 126, p.length >> 8, p.length & 0xff]);
    return Buffer.concat([head, p]);
  };
  srv.on("upgrade", (req, sock) => {
    const accept = createHash("sha1").update(req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
    sock.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
    sockets.add(sock);
    sock.on("close", () => sockets.delete(sock));
    sock.on("error", () => sock.destroy());
    let buf = Buffer.alloc(0);
    sock.on("data", (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) { // client frames: masked, small
        if (buf.length < 2) return;
        let len = buf[1] & 0x7f, off = 2;
        if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
        if (buf.length < off + 4 + len) return;
        const mask = buf.subarray(off, off + 4);
        const p = Buffer.from(buf.subarray(off + 4, off + 4 + len));
        const op = buf[0] & 0x0f;
        buf = buf.subarray(off + 4 + len);
        for (let i = 0; i < p.length; i++) p[i] ^= mask[i & 3];
        if (op === 0x8) { sock.end(); return; }
        if (op !== 0x1) continue;
        const m = JSON.parse(p.toString());
        sock.write(frame(JSON.stringify({ ref: m.ref, ok: true, op: m.op })));
      }
    });
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  t.after(() => new Promise((r) => { for (const s of sockets) s.destroy(); srv.closeAllConnections(); srv.close(r); }));
  return {
    base: "http://127.0.0.1:" + srv.address().port,
    subscribed: () => sockets.size > 0,
    push(ev) { for (const s of sockets) s.write(frame(JSON.stringify(ev))); },
  };
}

test("/ui: a member's connections show as a count with each state on hover and expand, and update events redraw them", async (t) => {
  const state = { connections: [
    { conn: "tab-1", state: { status: "online" }, last_seen: "2026-12-07T10:00:00.000Z" },
    { conn: "", state: null, last_seen: "2026-12-07T09:59:00.000Z" },
  ] };
  const srv = await fakeUIServer(t, state);
  const browser = await launchChromium(t);
  const page = await browser.open(`${srv.base}/ui?room=kitchen`);
  await eventually("the page loaded its data", async () => (await page.eval("document.body?.dataset.loaded || ''")) === "1", 20000);
  const conns = "document.querySelector('#members tr[data-user=ann] td.conns')";
  assert.equal(await page.eval(`${conns}.dataset.conns`), "2");
  const title = await page.eval(`${conns}.title`);
  assert.match(title, /^tab-1: \{"status":"online"\} @/m);
  assert.match(title, /^\(default\): no state @/m);
  await page.eval(`${conns}.querySelector('summary').click()`);
  assert.equal(await page.eval(`${conns}.querySelector('details').open`), true);
  assert.equal(await page.eval(`[...${conns}.querySelectorAll('li')].map(li => li.dataset.conn).join(',')`), "tab-1,");
  await eventually("the feed is live", async () => (await page.eval("document.getElementById('conn').textContent")) === "live" && srv.subscribed(), 20000);

  // A third tab starts: one update event, the member stays.
  state.connections = [...state.connections, { conn: "tab-3", state: { status: "away" }, last_seen: "2026-12-07T10:00:01.000Z" }];
  srv.push({ id: "1700000000001-0", type: "update", user: "ann", room: "kitchen", at: "2026-12-07T10:00:01.000Z", state: { status: "away" },
    conn: "tab-3", connections: state.connections.map(({ conn, state }) => ({ conn, state })) });
  await eventually("3 connections shown", async () => (await page.eval(`${conns}.dataset.conns`)) === "3", 10000);
  assert.match(await page.eval("document.getElementById('feed').textContent"), /update ann @kitchen +conn tab-3 \(3 conns\)/);
  assert.match(await page.eval(`${conns}.title`), /^tab-3: \{"status":"away"\}/m);
  assert.equal(await page.eval(`${conns}.querySelector('details').open`), true, "the expanded list stays expanded");
  // Two tabs close: down to the default connection.
  state.connections = state.connections.slice(1, 2);
  srv.push({ id: "1700000000002-0", type: "update", user: "ann", room: "kitchen", at: "2026-12-07T10:00:02.000Z", state: null,
    conn: "tab-3", connections: [{ conn: "", state: null }] });
  await eventually("1 connection shown", async () => (await page.eval(`${conns}.dataset.conns`)) === "1", 10000);
  assert.equal(await page.eval("document.querySelectorAll('#members tr').length"), 1);
});
