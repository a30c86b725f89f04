package wire

import "errors"

// Errors returned by Datagram.Decode and Reply.Decode, one per way a datagram
// can be bad, so that the server can count drops by reason (see Reason).
var (
	// ErrTooLarge means the datagram is longer than MaxDatagram.
	ErrTooLarge = errors.New("datagram too large")
	// ErrTooShort means the datagram is shorter than its 8-byte header.
	ErrTooShort = errors.New("datagram shorter than header")
	// ErrBadMagic means the first byte is not Magic.
	ErrBadMagic = errors.New("bad magic byte")
	// ErrBadVersion means the version byte is not Version.
	ErrBadVersion = errors.New("unsupported version")
	// ErrBadFlags means a flag bit is set that the datagram's kind does not
	// allow (in a request: any bit but FlagAck and FlagConn; in a reply:
	// FlagReply missing or any bit but FlagReply and FlagTiming).
	ErrBadFlags = errors.New("bad flags")
	// ErrBadCount means the item count is 0 or more than MaxItems.
	ErrBadCount = errors.New("bad item count")
	// ErrTruncated means the datagram ends inside an item (or, for a reply,
	// before its last status byte or timing field).
	ErrTruncated = errors.New("truncated item")
	// ErrBadOp means an item's op is neither OpHeartbeat nor OpLeave.
	ErrBadOp = errors.New("bad op")
	// ErrBadID means a user, room or connection id has a bad length (a
	// connection id: over MaxConnLen), is not UTF-8 or contains a control
	// character (see ValidID).
	ErrBadID = errors.New("bad user, room or connection id")
	// ErrTrailing means bytes follow the last item (or the reply's end).
	ErrTrailing = errors.New("trailing bytes after last item")
)

// Errors returned by the encoders. They mean a bug in the caller, not bad
// input from the network.
var (
	// ErrTokenTooLong means an item's token is longer than MaxTokenLen.
	ErrTokenTooLong = errors.New("token longer than 255 bytes")
	// ErrNoRequest means AppendReply was given a Datagram that holds no
	// successfully decoded request.
	ErrNoRequest = errors.New("no decoded request to reply to")
	// ErrStatusCount means AppendReply was given a different number of
	// statuses than the request has items.
	ErrStatusCount = errors.New("status count does not match item count")
	// ErrReplyTooLarge means the reply would be larger than its request,
	// which the no-amplification rule forbids. It cannot happen with v1
	// sizes; AppendReply checks anyway.
	ErrReplyTooLarge = errors.New("reply larger than request")
)

// reasons maps each decode error to its metric label.
var reasons = []struct {
	err   error
	label string
}{
	{ErrTooLarge, "too_large"},
	{ErrTooShort, "too_short"},
	{ErrBadMagic, "bad_magic"},
	{ErrBadVersion, "bad_version"},
	{ErrBadFlags, "bad_flags"},
	{ErrBadCount, "bad_count"},
	{ErrTruncated, "truncated"},
	{ErrBadOp, "bad_op"},
	{ErrBadID, "bad_id"},
	{ErrTrailing, "trailing"},
}

// Reason returns a short, fixed label for a decode error, for use as a
// metric label: "too_large", "too_short", "bad_magic", "bad_version",
// "bad_flags", "bad_count", "truncated", "bad_op", "bad_id", "trailing",
// "" for nil and "other" for anything else. It does not allocate.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	for _, r := range reasons {
		if err == r.err {
			return r.label
		}
	}
	return "other"
}

// Reasons returns every label Reason can return for a non-nil error, so a
// metric can be registered with all its label values up front.
func Reasons() []string {
	out := make([]string, 0, len(reasons)+1)
	for _, r := range reasons {
		out = append(out, r.label)
	}
	return append(out, "other")
}
