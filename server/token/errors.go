package token

import "errors"

// ErrMalformed means the token text does not follow <kid>.<exp>.<scope>.<sig>.
var ErrMalformed = errors.New("malformed token")

// ErrUnknownKey means the token names a key id the keyring does not hold.
var ErrUnknownKey = errors.New("unknown token key")

// ErrBadSignature means the signature does not match the token fields and the
// (user, room) it was presented with. A room-bound token presented for another
// room fails this way, because the room is part of the signed message.
var ErrBadSignature = errors.New("bad token signature")

// ErrExpired means the token was genuine but its expiry time has passed.
var ErrExpired = errors.New("token expired")

// ErrWrongRoom means a room-bound token (scope "r") was presented without a
// room, e.g. for a room-less heartbeat or a leave of all rooms.
var ErrWrongRoom = errors.New("token is bound to a room")

// ErrBadID means the user or room presented with a token is not a valid id:
// empty user, longer than 128 bytes, or containing control characters (which
// would make the signed message ambiguous).
var ErrBadID = errors.New("bad user or room id")
