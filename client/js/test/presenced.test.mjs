// node --test client/js/test/: presenced.js against a real presenced.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Presence, members, compareIds, backoff } from "../presenced.js";
import { startServer, eventually, getJSON, postJSON, MiniWebSocket, cuttableProxy } from "./helpers.mjs";

const online = async (base, user) => (await getJSON(base + "/v1/users/" + encodeURIComponent(user))).body.online;

test("ids compare numerically and backoff is capped with jitter", () => {
  assert.equal(compareIds("5-9", "5-10"), -1);
  assert.equal(compareIds("6-0", "5-10"), 1);
  assert.equal(compareIds("5-10", "5-10"), 0);
  for (let n = 0; n < 30; n++) {
    const b = backoff(n, 30000);
    assert.ok(b >= 200 && b <= 36000, `backoff(${n}) = ${b}`);
  }
  assert.equal(backoff(0, 30000, () => 0.5), 250);
  assert.equal(backoff(40, 30000, () => 0.5), 30000);
});

test("heartbeats over WebSocket follow interval_ms and keep the session past the TTL", async (t) => {
  const srv = await startServer(t, ["--interval", "300ms", "--ttl", "1s", "--leave-delay", "0"]);
  const statuses = [];
  const p = new Presence({ url: srv.base, user: "alice", room: "r", WebSocket: MiniWebSocket, onStatus: (s) => statuses.push(s) });
  p.start();
  t.after(() => p.close());
  await eventually("alice online", () => online(srv.base, "alice"));
  await eventually("interval_ms taken from the answer", () => p.intervalMs === 300 && p.ttlMs === 1000);
  assert.ok(statuses.some((s) => s.transport === "ws" && s.connected));
  // Three TTLs later the session still lives: heartbeats kept coming every interval_ms.
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal(await online(srv.base, "alice"), true);
  const m = await srv_metric(srv.base, 'presenced_heartbeats_total{outcome="ok",transport="ws"}');
  assert.ok(m >= 8, `ws heartbeats ${m}, want about 10 in 3 s at 300 ms`);
  await p.close();
  await eventually("alice offline after close (leave)", async () => !(await online(srv.base, "alice")));
});

async function srv_metric(base, sample) {
  const text = await (await fetch(base + "/metrics")).text();
  const line = text.split("\n").find((l) => l.startsWith(sample + " "));
  return line ? Number(line.slice(sample.length + 1)) : -1;
}

test("a subscription resumes after a cut with nothing missed or twice, and a quick reconnect leaves no trace", async (t) => {
  const srv = await startServer(t, ["--leave-delay", "1s"]);
  const proxy = await cuttableProxy(t, srv.base);
  const seen = [];
  const p = new Presence({ url: proxy.base, user: "me", room: "r", WebSocket: MiniWebSocket, maxBackoffMs: 300 });
  p.subscribe("r", (ev) => seen.push(ev));
  p.start();
  t.after(() => p.close({ leave: false }));
  await eventually("my own join", () => seen.some((e) => e.type === "join" && e.user === "me"));
  await postJSON(srv.base + "/v1/heartbeat", { user: "a", room: "r" });
  await eventually("a's join", () => seen.some((e) => e.user === "a"));
  proxy.cut();
  // While the socket is down (the client reconnects within its backoff):
  await postJSON(srv.base + "/v1/heartbeat", { user: "b", room: "r" });
  await postJSON(srv.base + "/v1/leave", { user: "a", room: "r" });
  await eventually("b's join after the reconnect", () => seen.some((e) => e.user === "b"), 10000);
  await postJSON(srv.base + "/v1/heartbeat", { user: "marker", room: "r" });
  await eventually("a's held leave and the marker", () => seen.some((e) => e.user === "marker") && seen.some((e) => e.user === "a" && e.type === "leave"), 10000);
  // Member events only: the room's own occupied (my join) is not what this checks.
  const keys = seen.filter((e) => e.user !== undefined).map((e) => `${e.type} ${e.user} ${e.reason || ""}`.trim());
  assert.deepEqual(seen.filter((e) => e.type === "occupied").length, 1, "the room was occupied once: the reconnect must not vacate it");
  assert.deepEqual(keys.filter((k) => k.includes(" me")), ["join me"], "the reconnect within --leave-delay must give no leave/join of me: " + keys);
  assert.deepEqual(keys.filter((k) => !k.includes(" me")).sort(), ["join a", "join b", "join marker", "leave a left"], keys.join(", "));
  const ids = seen.map((e) => e.id);
  assert.equal(new Set(ids).size, ids.length, "an event delivered twice: " + ids);
  for (let i = 1; i < ids.length; i++) assert.ok(compareIds(ids[i - 1], ids[i]) < 0, "ids out of order: " + ids);
  assert.equal(await online(srv.base, "me"), true);
});

test("without a WebSocket the module heartbeats over HTTP, and falls back to HTTP while the socket cannot connect", async (t) => {
  const srv = await startServer(t, ["--interval", "300ms", "--ttl", "1s", "--leave-delay", "0"]);
  const httpOnly = new Presence({ url: srv.base, user: "h", room: "r", WebSocket: null });
  httpOnly.WS = undefined; // as in Node 20: no global WebSocket
  httpOnly.start();
  t.after(() => httpOnly.close());
  await eventually("h online over HTTP", () => online(srv.base, "h"));
  assert.equal(httpOnly.transport, "http");
  // A WebSocket that never connects: HTTP keeps the session alive past the TTL.
  class Refused { constructor() { setTimeout(() => this.onclose?.({ code: 1006 }), 10); } send() { throw new Error("not open"); } close() {} }
  const fb = new Presence({ url: srv.base, user: "f", room: "r", WebSocket: Refused, maxBackoffMs: 200 });
  fb.start();
  t.after(() => fb.close());
  await eventually("f online over the HTTP fallback", () => online(srv.base, "f"));
  await new Promise((r) => setTimeout(r, 2500));
  assert.equal(await online(srv.base, "f"), true, "the fallback must keep heartbeating past the 1 s TTL");
  assert.ok(await srv_metric(srv.base, 'presenced_heartbeats_total{outcome="ok",transport="http"}') >= 6);
});

test("refused answers reach onError and a function token is asked again", async (t) => {
  const srv = await startServer(t, ["--leave-delay", "0"]);
  const errors = [];
  let asked = 0;
  const p = new Presence({ url: srv.base, user: "", room: "r", WebSocket: MiniWebSocket, token: () => { asked++; return "t"; }, onError: (e) => errors.push(e.message) });
  p.start();
  t.after(() => p.close({ leave: false }));
  await eventually("the refusal", () => errors.some((m) => m.includes("user must be")));
  assert.ok(asked >= 1);
  const list = await members(srv.base, "r");
  assert.deepEqual(list, []);
});
