package client

import (
	"errors"
	"strings"

	"github.com/presenced/presenced/server/wire"
)

// ErrNoReply means a UDP heartbeat or leave got no acknowledgement after
// Config.FallbackAfter attempts: the datagrams or the replies were lost, the
// server is down, or (with a secret) the token was refused, which the server
// answers with silence.
var ErrNoReply = errors.New("no reply")

// ErrBadID means the server refused the user, room or connection id.
var ErrBadID = errors.New("bad user, room or connection id")

// ErrBadRequest means the server refused the request as malformed (HTTP 400
// other than a bad id), e.g. a state larger than --max-state-bytes.
var ErrBadRequest = errors.New("bad request")

// ErrBadToken means the token is missing, malformed or wrongly signed. The
// heartbeater asks Config.TokenFunc for a new one.
var ErrBadToken = errors.New("bad token")

// ErrTokenExpired means the token is genuine but past its expiry. The
// heartbeater asks Config.TokenFunc for a new one; it also does so by itself
// before sending a token whose expiry it can read has passed.
var ErrTokenExpired = errors.New("token expired")

// ErrUnknownKey means the token's key id is not in the server's keyring. The
// heartbeater asks Config.TokenFunc for a new one.
var ErrUnknownKey = errors.New("unknown token key")

// ErrWrongRoom means a room-bound token was used without a room. The
// heartbeater asks Config.TokenFunc for a new one (it should be a token for
// any room).
var ErrWrongRoom = errors.New("token bound to another room")

// ErrRateLimited means the server refused the heartbeat as too frequent
// (--heartbeat-min-gap or --source-rate); the heartbeater retries later.
var ErrRateLimited = errors.New("rate limited")

// ErrTooManyRooms means the user is in as many rooms as the server allows.
var ErrTooManyRooms = errors.New("too many rooms")

// ErrTooManyConns means the session already has as many connections as the
// server allows (--max-conns-per-session): other heartbeaters or tabs hold
// them. The heartbeater retries later, when one may have ended.
var ErrTooManyConns = errors.New("too many connections in the session")

// ErrUnavailable means the server is starting, draining or overloaded; the
// heartbeater retries later.
var ErrUnavailable = errors.New("server unavailable")

// ErrUnauthorized means the event stream refused the bearer token
// (--api-token-file): SubscriberConfig.BearerToken is missing or wrong.
var ErrUnauthorized = errors.New("unauthorized")

// ErrClosed is returned by calls on a closed Heartbeater or Subscription.
var ErrClosed = errors.New("closed")

// statusErrors maps a UDP reply status to the error it stands for (nil: ok).
// A status this table does not know is a failure (PROTOCOL.md).
var statusErrors = [...]error{
	wire.StatusOK:           nil,
	wire.StatusBadID:        ErrBadID,
	wire.StatusBadToken:     ErrBadToken,
	wire.StatusTokenExpired: ErrTokenExpired,
	wire.StatusUnknownKey:   ErrUnknownKey,
	wire.StatusWrongRoom:    ErrWrongRoom,
	wire.StatusRateLimited:  ErrRateLimited,
	wire.StatusTooManyRooms: ErrTooManyRooms,
	wire.StatusUnavailable:  ErrUnavailable,
	wire.StatusTooManyConns: ErrTooManyConns,
}

var errUnknownStatus = errors.New("unknown status")

func statusError(s wire.Status) error {
	if int(s) < len(statusErrors) {
		return statusErrors[s]
	}
	return errUnknownStatus
}

// httpError maps an HTTP error answer (status code and the server's
// {"error"} message) to the error it stands for. The messages are those of
// the server's outcome table; 401 without a known message is a bad token.
func httpError(code int, msg string) error {
	switch code {
	case 400:
		if strings.HasPrefix(msg, "user ") || strings.HasPrefix(msg, "room ") || strings.HasPrefix(msg, "conn ") {
			return ErrBadID
		}
		return ErrBadRequest
	case 401:
		switch {
		case strings.Contains(msg, "expired"):
			return ErrTokenExpired
		case strings.Contains(msg, "key id"):
			return ErrUnknownKey
		case strings.Contains(msg, "another room"):
			return ErrWrongRoom
		}
		return ErrBadToken
	case 429:
		if strings.Contains(msg, "too many rooms") {
			return ErrTooManyRooms
		}
		if strings.Contains(msg, "max-conns-per-session") {
			return ErrTooManyConns
		}
		return ErrRateLimited
	case 503:
		return ErrUnavailable
	}
	return errUnexpectedStatus
}

var errUnexpectedStatus = errors.New("unexpected HTTP status")

// isTokenError reports whether err asks for a new token.
func isTokenError(err error) bool {
	return errors.Is(err, ErrBadToken) || errors.Is(err, ErrTokenExpired) ||
		errors.Is(err, ErrUnknownKey) || errors.Is(err, ErrWrongRoom)
}
