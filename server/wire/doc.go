// Package wire encodes and decodes presenced's UDP datagrams.
//
// A request datagram carries 1..MaxItems heartbeats or leaves, each with a
// user, an optional room, an optional connection id (with FlagConn) and an
// optional token; a reply carries one status byte per item and, when it
// fits, the heartbeat interval and session TTL.
// PROTOCOL.md at the repository root draws the format byte by byte;
// testdata/vectors.json holds golden datagrams.
//
//	request:  'P' 0x01 flags count seq(4, big-endian)  item*count
//	item:     op userLen user roomLen room [connLen conn] tokenLen token
//	          (connLen and conn only with FlagConn; connLen 0: the default connection)
//	reply:    'P' 0x01 0x80|flags count seq(4)  status*count  [interval_ms(4) ttl_ms(4)]
//
// # No amplification
//
// A reply is never larger than the request that caused it: AppendReply drops
// the optional timing fields when they would not fit, and returns an error
// rather than a larger reply. This keeps the server useless as a reflector
// for spoofed-source traffic.
//
// # Buffers and concurrency
//
// Decoding allocates nothing. Datagram.Decode validates the whole datagram,
// every item included, before it exposes any item, so a caller never acts
// on half of a bad datagram. The Items it exposes are sub-slices of the
// decoded buffer: they are valid only while that buffer is, which for gnet
// means only during the OnTraffic callback. Copy what you keep (the session
// map copies ids on first insert).
//
// A Datagram or Reply is not safe for concurrent use; keep one per event
// loop (or per goroutine) and reuse it. The package functions are safe for
// concurrent use.
package wire
