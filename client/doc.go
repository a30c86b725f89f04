// Package client is the Go client of presenced: a Heartbeater that keeps a
// session alive and a Subscription that follows the event stream.
//
// # Heartbeater
//
// StartHeartbeater sends a heartbeat for one (user, room) at once and then
// every interval_ms the server's replies name (UDP acks and HTTP answers
// alike; 60 s until one does). Over UDP (PROTOCOL.md, through the codec in
// server/wire) every datagram asks for an ack; a datagram left without one
// for Config.AckTimeout is sent again, the wait doubling with ±20% jitter up
// to Config.MaxAckTimeout, and a reply to any datagram of the heartbeat
// answers it. After Config.FallbackAfter silent datagrams the heartbeat goes
// as POST /v1/heartbeat instead, and heartbeats stay on HTTP for
// Config.UDPRetryAfter before UDP is tried again. A state (SetState,
// Config.State) travels with one HTTP heartbeat; UDP heartbeats keep it.
//
// Each Heartbeater is one connection of its session: every heartbeat and
// the leave carry its connection id (Config.Conn, or 16 random base64url
// characters; Heartbeater.Conn), so the session stays while any of its
// connections does, and Leave ends this connection only. Update events name
// the connection that changed (Event.Conn) and list the member's
// connections (Event.Connections).
//
// When the server refuses the token (bad_token, token_expired, unknown_key,
// wrong_room; or 401 over HTTP), or before sending a token whose expiry has
// passed, the heartbeater asks Config.TokenFunc for a new one and sends
// again. A server with a secret does not answer a datagram whose token it
// refuses, so over UDP the refusal shows as silence; the HTTP fallback then
// names it, and once a new token is in hand heartbeats return to UDP.
//
// Other failures (silence with no HTTP to fall back to, rate_limited,
// unavailable, network errors) are retried after 1 s, doubling per failure
// up to the interval, so a session outlives an outage shorter than its TTL
// minus the interval. Every failure goes to Config.OnError and to
// Status().LastError.
//
// # Subscription
//
// Subscribe opens GET /v1/events (one room or all) and Next returns its
// events one by one. When the connection drops, or stays silent for
// SubscriberConfig.IdleTimeout, Next reconnects after a backoff and sends
// Last-Event-ID with the id of the last event it returned, so the server
// resumes the stream where it broke. A reset event (events were lost) is
// returned like any other: the caller re-reads state with the query
// endpoints.
//
// # Concurrency
//
// A Heartbeater's methods are safe for concurrent use. It runs one
// goroutine, started by StartHeartbeater, which ends when the context
// passed to it is done, at Close or at Leave; Close and Leave wait for it.
// Config.TokenFunc and Config.OnError run on that goroutine (or in the
// goroutine calling Leave) and must not block for long. Close or Leave must
// be called to release the UDP socket.
//
// A Subscription starts no goroutine: Next does the reading and reconnecting
// and must be called from one goroutine at a time; Close and LastEventID may
// be called from any, and Close makes a blocked Next return ErrClosed.
//
// This package imports only the standard library and the codec packages
// server/wire and server/token, never the server.
package client
