package server

import (
	"errors"

	"github.com/presenced/presenced/server/token"
	"github.com/presenced/presenced/shardmap"
)

// outcome is the result of one heartbeat or leave on either transport. Each
// has a metric label, an HTTP status and an error message naming the field
// or limit, so the two transports report bad input the same way.
type outcome uint8

const (
	outOK outcome = iota
	outBadUser
	outBadRoom
	outMissingToken
	outBadToken
	outExpiredToken
	outUnknownKey
	outWrongRoom
	outTooManyRooms
	outRateLimited
	outUnavailable
	outBadRequest // malformed body or datagram
	outBadConn
	outTooManyConns
	numOutcomes
)

var outcomeInfo = [numOutcomes]struct {
	label  string
	status int
	msg    string
}{
	outOK:           {"ok", 200, ""},
	outBadUser:      {"bad_user", 400, "user must be 1 to 128 bytes of UTF-8 without control characters"},
	outBadRoom:      {"bad_room", 400, "room must be at most 128 bytes of UTF-8 without control characters"},
	outMissingToken: {"missing_token", 401, "token is required"},
	outBadToken:     {"bad_token", 401, "token is malformed or its signature does not match"},
	outExpiredToken: {"expired_token", 401, "token has expired"},
	outUnknownKey:   {"unknown_key", 401, "token key id is unknown"},
	outWrongRoom:    {"wrong_room", 401, "token is bound to another room"},
	outTooManyRooms: {"too_many_rooms", 429, "user is in too many rooms (max-rooms-per-user)"},
	outRateLimited:  {"rate_limited", 429, "too many heartbeats for this session (heartbeat-min-gap) or from this address (source-rate)"},
	outUnavailable:  {"unavailable", 503, "server is shutting down"},
	outBadRequest:   {"bad_request", 400, "malformed request"},
	outBadConn:      {"bad_conn", 400, "conn must be 1 to 64 bytes of UTF-8 without control characters"},
	outTooManyConns: {"too_many_conns", 429, "session has too many connections (max-conns-per-session)"},
}

func (o outcome) String() string { return outcomeInfo[o].label }

// tokenOutcome maps a token verification error to an outcome.
func tokenOutcome(err error) outcome {
	switch {
	case err == nil:
		return outOK
	case errors.Is(err, token.ErrExpired):
		return outExpiredToken
	case errors.Is(err, token.ErrUnknownKey):
		return outUnknownKey
	case errors.Is(err, token.ErrWrongRoom):
		return outWrongRoom
	default:
		return outBadToken
	}
}

// mapOutcome maps a shardmap error to an outcome.
func mapOutcome(err error) outcome {
	switch {
	case err == nil:
		return outOK
	case errors.Is(err, shardmap.ErrTooManyRooms):
		return outTooManyRooms
	case errors.Is(err, shardmap.ErrRateLimited):
		return outRateLimited
	case errors.Is(err, shardmap.ErrTooManyConns):
		return outTooManyConns
	case errors.Is(err, shardmap.ErrBadConn):
		return outBadConn
	default:
		return outBadUser
	}
}
