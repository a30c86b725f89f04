package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/presenced/presenced/client"
	"github.com/presenced/presenced/internal/servertest"
	"github.com/presenced/presenced/server"
	"github.com/presenced/presenced/server/token"
)

// exampleNode is a presenced started in-process for an example, on free
// loopback ports. In an application, these are the server's --http-addr
// and --udp-addr.
type exampleNode struct {
	base, udp string
	srv       *server.Server
}

func startExampleServer(mod func(*server.Config)) *exampleNode {
	cfg := servertest.Config()
	if mod != nil {
		mod(&cfg)
	}
	srv, err := servertest.Run(cfg)
	if err != nil {
		log.Fatal(err)
	}
	return &exampleNode{base: "http://" + srv.HTTPAddr(), udp: srv.UDPAddr(), srv: srv}
}

func (n *exampleNode) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.srv.Shutdown(ctx); err != nil {
		log.Fatal(err)
	}
}

// Keep alice online in the lobby over UDP, with HTTP as the fallback.
func ExampleStartHeartbeater() {
	srv := startExampleServer(nil)
	defer srv.stop()

	h, err := client.StartHeartbeater(context.Background(), client.Config{
		UDPAddr: srv.udp,  // e.g. "presence.example.com:7070"
		BaseURL: srv.base, // e.g. "https://presence.example.com"
		User:    "alice",
		Room:    "lobby",
		OnError: func(err error) { log.Print(err) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close() // or h.Leave(ctx) to leave at once

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.WaitAck(ctx); err != nil {
		log.Fatal(err)
	}
	st := h.Status()
	fmt.Println("acknowledged over", st.Transport, "- next heartbeat in", st.Interval, "- session lives", st.TTL)
	// Output: acknowledged over udp - next heartbeat in 1m0s - session lives 2m30s
}

// Leave ends the session at once instead of at its TTL.
func ExampleHeartbeater_Leave() {
	srv := startExampleServer(nil)
	defer srv.stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := client.StartHeartbeater(ctx, client.Config{UDPAddr: srv.udp, BaseURL: srv.base, User: "bob", Room: "lobby"})
	if err != nil {
		log.Fatal(err)
	}
	if err := h.WaitAck(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("online:", online(srv.base, "bob"))
	if err := h.Leave(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("online after Leave:", online(srv.base, "bob"))
	// Output:
	// online: true
	// online after Leave: false
}

// With --secret-file, heartbeats carry a token from your backend; TokenFunc
// is asked for a new one when it expires or the server refuses it.
func ExampleTokenFunc() {
	dir, err := os.MkdirTemp("", "presenced-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	keys := filepath.Join(dir, "keys")
	if err := os.WriteFile(keys, []byte("k1 an-example-secret-of-at-least-32-bytes\n"), 0o600); err != nil {
		log.Fatal(err)
	}
	srv := startExampleServer(func(c *server.Config) { c.SecretFile = keys })
	defer srv.stop()

	// Your backend mints tokens (presenced token, server/token, or
	// PROTOCOL.md's Python minter); here the keyring stands in for it.
	backend, err := token.LoadKeyring(keys)
	if err != nil {
		log.Fatal(err)
	}
	fetchToken := func(ctx context.Context, reason error) (string, error) {
		return backend.Mint("", "carol", "", false, time.Now().Add(15*time.Minute))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first, err := fetchToken(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	h, err := client.StartHeartbeater(ctx, client.Config{
		UDPAddr: srv.udp, BaseURL: srv.base, User: "carol", Room: "lobby",
		Token: first, TokenFunc: fetchToken,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()
	if err := h.WaitAck(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("online:", online(srv.base, "carol"))
	// Output: online: true
}

// Follow a room's joins and leaves. The subscription reconnects by itself
// and resumes after the last event it returned.
func ExampleSubscribe() {
	srv := startExampleServer(nil)
	defer srv.stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := client.Subscribe(ctx, client.SubscriberConfig{
		BaseURL: srv.base,
		Room:    "lobby", // empty: all rooms
		// BearerToken: "...", // when the server runs with --api-token-file
	})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()

	h, err := client.StartHeartbeater(ctx, client.Config{UDPAddr: srv.udp, User: "dave", Room: "lobby"})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()

	for range 2 {
		ev, err := sub.Next()
		if err != nil {
			log.Fatal(err)
		}
		switch ev.Type {
		case "reset":
			// Events were lost (history_lost): re-read the room with
			// GET /v1/rooms/{room}/members.
		default:
			fmt.Println(ev.Type, ev.User, ev.Room)
		}
	}
	// Output:
	// occupied  lobby
	// join dave lobby
}

// SetState publishes a small JSON object with the session (sent over HTTP;
// UDP heartbeats keep it).
func ExampleHeartbeater_SetState() {
	h, err := client.StartHeartbeater(context.Background(), client.Config{
		UDPAddr: "127.0.0.1:7070", BaseURL: "http://127.0.0.1:7070",
		User: "erin", Room: "lobby",
		State: map[string]string{"status": "online", "device": "ios"},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()
	// Later, when the app goes to the background:
	if err := h.SetState(json.RawMessage(`{"status":"away","device":"ios"}`)); err != nil {
		log.Fatal(err)
	}
}

// online asks GET /v1/users/{user} whether user is online.
func online(base, user string) bool {
	resp, err := http.Get(base + "/v1/users/" + user)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	var us struct {
		Online bool `json:"online"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&us); err != nil {
		log.Fatal(err)
	}
	return us.Online
}
