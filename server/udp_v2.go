package server

import "github.com/presenced/presenced/server/wire"

// checkV2 authenticates a decoded v2 datagram (PROTOCOL.md section 3) and
// returns "" or the drop reason: "unauthenticated" (no secret configured,
// or the token's key id is unknown), "bad_mac" (not signed with the
// token's client key), "stale" (its timestamp is more than
// --v2-max-clock-skew from this node's clock) or "replayed" (not later than
// the last datagram accepted for the token). The MAC is checked first, so
// the last two only count genuine datagrams. The items' tokens are then
// verified as in v1.
func (s *Server) checkV2(d *wire.Datagram, nowMs int64) string {
	kr := s.keys.Load()
	if kr == nil {
		return "unauthenticated"
	}
	key, err := kr.ClientKey(d.Items()[0].Token)
	if err != nil {
		return "unauthenticated"
	}
	if !d.VerifyMAC(key[:]) {
		return "bad_mac"
	}
	skew := s.cfg.V2MaxClockSkew.Milliseconds()
	if ts := int64(d.TimestampMs); ts < nowMs-skew || ts > nowMs+skew {
		return "stale"
	}
	if !s.replay.fresh(key[:], d.TimestampMs) {
		return "replayed"
	}
	return ""
}
