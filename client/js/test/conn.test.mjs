// Connections: each tab sends its own connection id ("conn") with every
// heartbeat and leave (HTTP, WebSocket, sendBeacon), kept across a reload
// in sessionStorage. A recording HTTP server and a fake WebSocket see what
// the module sends.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { Presence, tabConnId } from "../presenced.js";
import { eventually, fakeBrowser } from "./helpers.mjs";

const CONN = /^[A-Za-z0-9_-]{16}$/;

/** An HTTP server answering heartbeats and leaves; requests has {path, body} of each. */
async function recorder(t) {
  const requests = [];
  const srv = http.createServer((req, res) => {
    let data = "";
    req.on("data", (d) => { data += d; });
    req.on("end", () => {
      let body;
      try { body = JSON.parse(data); } catch { body = data; }
      requests.push({ path: req.url, body });
      res.setHeader("Content-Type", "application/json");
      res.end(req.url === "/v1/leave" ? '{"left":1}' : '{"interval_ms":100,"ttl_ms":1000}');
    });
  });
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  t.after(() => new Promise((r) => { srv.closeAllConnections(); srv.close(r); }));
  return { base: "http://127.0.0.1:" + srv.address().port, requests };
}

/** A WebSocket that opens at once and answers every op ok; sent has the ops. */
function fakeWebSocket() {
  const sent = [];
  class FakeWS {
    constructor() { setTimeout(() => this.onopen?.({}), 0); }
    send(text) {
      const m = JSON.parse(text);
      sent.push(m);
      setTimeout(() => this.onmessage?.({ data: JSON.stringify({ ref: m.ref, ok: true, op: m.op, interval_ms: 100, ttl_ms: 1000 }) }), 0);
    }
    close() { setTimeout(() => this.onclose?.({ code: 1000 }), 0); }
  }
  return { FakeWS, sent };
}

/** A sessionStorage stand-in; copy() is what a browser's "duplicate tab" does. */
class FakeStorage {
  constructor(m = new Map()) { this.m = m; }
  getItem(k) { return this.m.has(k) ? this.m.get(k) : null; }
  setItem(k, v) { this.m.set(k, String(v)); }
  removeItem(k) { this.m.delete(k); }
  copy() { return new FakeStorage(new Map(this.m)); }
}

let loads = 0;
/**
 * Loads presenced.js afresh, as a new page of a tab whose sessionStorage is
 * st: it stays the global sessionStorage until the next loadPage or the end
 * of t, so create the page's Presence objects before loading another page.
 */
async function loadPage(t, st) {
  if (!("sessionStorage" in globalThis)) t.after(() => { delete globalThis.sessionStorage; });
  globalThis.sessionStorage = st;
  return import("../presenced.js?page=" + ++loads);
}

test("every HTTP heartbeat and leave carries this tab's conn", async (t) => {
  const srv = await recorder(t);
  const p = new Presence({ url: srv.base, user: "alice", room: "r" });
  p.WS = undefined; // HTTP only
  assert.match(p.conn, CONN);
  assert.equal(p.conn, tabConnId(), "a Presence uses the tab's id");
  p.start();
  await eventually("3 heartbeats", () => srv.requests.filter((r) => r.path === "/v1/heartbeat").length >= 3);
  await p.close();
  assert.equal(srv.requests.at(-1).path, "/v1/leave");
  for (const r of srv.requests) assert.equal(r.body.conn, p.conn, `${r.path} ${JSON.stringify(r.body)}`);
  const other = new Presence({ url: srv.base, user: "alice", room: "other-room" });
  assert.equal(other.conn, p.conn, "one tab is one connection, whatever the room");
});

test("WebSocket heartbeat and leave ops carry the conn; an explicit conn option wins", async (t) => {
  const { FakeWS, sent } = fakeWebSocket();
  const p = new Presence({ url: "http://127.0.0.1:1", user: "bob", room: "r", conn: "device-7", WebSocket: FakeWS });
  p.start();
  t.after(() => p.close({ leave: false }));
  await eventually("2 heartbeats over the socket", () => sent.filter((m) => m.op === "heartbeat").length >= 2);
  await p.leave();
  const ops = sent.filter((m) => m.op === "heartbeat" || m.op === "leave");
  assert.equal(ops.at(-1).op, "leave");
  for (const m of ops) assert.equal(m.conn, "device-7", JSON.stringify(m));
  assert.throws(() => new Presence({ url: "http://x", user: "bob", conn: "c".repeat(65) }), /conn must be 1 to 64 bytes/);
  assert.throws(() => new Presence({ url: "http://x", user: "bob", conn: "a\nb" }), /conn must be/);
});

test("the pagehide beacon leaves with the conn and keeps it for a reload; another tab or a duplicate gets its own", async (t) => {
  const srv = await recorder(t);
  const { win, sent, beacons } = fakeBrowser(t);
  const tabA = new FakeStorage();
  const pageA1 = await loadPage(t, tabA);
  const a1 = new pageA1.Presence({ url: srv.base, user: "carol", room: "r", WebSocket: null });
  a1.WS = undefined;
  a1.start();
  t.after(() => a1.close({ leave: false }));
  await eventually("a heartbeat", () => srv.requests.length >= 1);
  assert.equal(srv.requests[0].body.conn, a1.conn);
  assert.match(a1.conn, CONN);

  // Duplicating tab A while its page lives copies a storage without the id.
  const dup = tabA.copy();
  // Another tab.
  const pageB = await loadPage(t, new FakeStorage());
  const b = new pageB.Presence({ url: srv.base, user: "carol", room: "r" });
  assert.notEqual(b.conn, a1.conn, "two tabs, two connections");

  win.dispatchEvent(new Event("pagehide"));
  assert.equal(sent.length, 1);
  assert.equal(JSON.parse(sent[0].body).conn, a1.conn, "the leave beacon names the tab's connection only");
  await Promise.all(beacons);
  assert.equal(srv.requests.at(-1).path, "/v1/leave");
  assert.equal(srv.requests.at(-1).body.conn, a1.conn);

  const pageA2 = await loadPage(t, tabA); // the reload
  assert.equal(new pageA2.Presence({ url: srv.base, user: "carol", room: "r" }).conn, a1.conn, "a reload keeps the connection id");
  const pageDup = await loadPage(t, dup);
  const d = new pageDup.Presence({ url: srv.base, user: "carol", room: "r" });
  assert.notEqual(d.conn, a1.conn, "a duplicated tab is a connection of its own");
  assert.match(d.conn, CONN);
});
