// Package events is presenced's event pipeline after the presence table:
// event ids, the bounded history streams resume from, the fan-out to stream
// subscribers, and the leave debounce.
//
// # Flow
//
//	single node:  table decides join/leave ──> Debouncer ──> Bus.Publish (assigns the id)
//	cluster:      Redis decides, XADD pd:events ──> XREAD loop ──> Bus.Append (stream id)
//
//	Bus: ring of the last Config.History events ──> subscribers, indexed by room
//	     (SSE streams today; WebSocket subscriptions and webhooks are further sinks)
//
// # Ids
//
// An id is "<ms>-<seq>" and increases in the order the bus delivers. On a
// single node ms is the time the node started, so an id from before a
// restart is recognised as from an earlier history (the client gets a
// reset); in a cluster the id is the Redis Stream entry id, the same on
// every node, so a client can resume on any node.
//
// # Delivery promise
//
// A subscriber gets every event after its starting point exactly once, in
// id order, as long as the history holds the events it has not read yet.
// Publish never blocks on a subscriber: a subscriber whose live queue is
// full is marked behind and re-reads from the ring (under the bus lock, a
// page at a time) before it takes live events again. When the history no
// longer holds its position (it fell further behind than Config.History
// events, or resumed from an id the history never had) it gets one reset
// event (reason history_lost) and continues with live events.
//
// # Concurrency
//
// One mutex (Bus.mu) guards the ring and the subscriber index; Publish and
// Append hold it while they assign the id, store the event and offer it to
// the subscribers of its room and of all rooms, so delivery order is id
// order. Each Sub is read by one goroutine (Next); Source.Range is called
// without the lock. The Debouncer has its own mutex and calls its output
// (Bus.Publish) with it held: lock order Debouncer.mu, then Bus.mu.
package events
