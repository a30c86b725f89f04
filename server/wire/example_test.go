package wire_test

import (
	"fmt"

	"github.com/presenced/presenced/server/wire"
)

// A client encodes a heartbeat for one of its connections and asks for an
// acknowledgement; the server decodes it and answers with the item's status
// and the timing clients follow.
func Example() {
	req, err := wire.AppendRequest(nil, 1, true, []wire.Item{
		{Op: wire.OpHeartbeat, User: []byte("alice"), Room: []byte("lobby"), Conn: []byte("tab-1")},
	})
	if err != nil {
		panic(err)
	}
	var d wire.Datagram
	if err := d.Decode(req); err != nil {
		panic(err)
	}
	it := d.Items()[0]
	fmt.Printf("%s %s in %s on %s\n", it.Op, it.User, it.Room, it.Conn)

	rep, err := wire.AppendReply(nil, &d, []wire.Status{wire.StatusOK}, 60000, 150000)
	if err != nil {
		panic(err)
	}
	var r wire.Reply
	if err := r.Decode(rep); err != nil {
		panic(err)
	}
	fmt.Println(r.Statuses(), len(rep) <= len(req))
	// Output:
	// heartbeat alice in lobby on tab-1
	// [ok] true
}
