package loadtest

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/presenced/presenced/server/token"
	"github.com/presenced/presenced/server/wire"
)

// population is the simulated users: ids, rooms, tokens, and each user's
// request pre-encoded for the transports in use, so sending allocates
// nothing. Immutable once built; shared by all senders.
type population struct {
	n     int
	order []uint32 // users in send order (shuffled), so rooms interleave
	users []string
	rooms []string // room of each user
	toks  []string // token of each user, "" without --secret-file

	udp  [][]byte // request datagram per user, seq 0, ack requested
	json [][]byte // {"user":..,"room":..,"token":..} per user
	keys []string // "user:<id>" per user, for Redis

	flood [][]byte // the flooder's datagrams: one valid request (seq 0), or a pool of garbage
}

// newPopulation builds the users. The seed is fixed so runs are comparable.
func newPopulation(cfg *Config, kr *token.Keyring, now time.Time) (*population, error) {
	p := &population{n: cfg.Users}
	rng := rand.New(rand.NewPCG(1, 2))
	var zipf *rand.Zipf
	if cfg.RoomDist == "zipf" && cfg.Rooms > 1 {
		zipf = rand.NewZipf(rng, defaultRoomZipfS, 1, uint64(cfg.Rooms-1))
	}
	exp := now.Add(cfg.Duration + defaultTokenValidity)
	p.users = make([]string, p.n)
	p.rooms = make([]string, p.n)
	p.toks = make([]string, p.n)
	p.order = make([]uint32, p.n)
	for i := range p.n {
		p.users[i] = "lt-" + strconv.Itoa(i)
		r := i % cfg.Rooms
		if zipf != nil {
			r = int(zipf.Uint64())
		}
		p.rooms[i] = "room-" + strconv.Itoa(r)
		if kr != nil {
			tok, err := kr.Mint("", p.users[i], "", false, exp)
			if err != nil {
				return nil, fmt.Errorf("cannot mint token for %s: %w", p.users[i], err)
			}
			p.toks[i] = tok
		}
		p.order[i] = uint32(i)
	}
	rng.Shuffle(p.n, func(i, j int) { p.order[i], p.order[j] = p.order[j], p.order[i] })
	if cfg.FloodRate != 0 {
		if err := p.buildFlood(cfg.FloodKind, kr, exp, rng); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// buildFlood makes the flooder's datagrams. valid: a heartbeat of one user
// (floodUser, with a token when there is a keyring) asking for an ack, so
// every one would be answered but for the limits. garbage: random bytes of
// random length that never decode as a request.
func (p *population) buildFlood(kind string, kr *token.Keyring, exp time.Time, rng *rand.Rand) error {
	if kind == "valid" {
		tok := ""
		if kr != nil {
			var err error
			if tok, err = kr.Mint("", floodUser, "", false, exp); err != nil {
				return fmt.Errorf("cannot mint token for %s: %w", floodUser, err)
			}
		}
		b, err := wire.AppendRequest(nil, 0, true, []wire.Item{{Op: wire.OpHeartbeat, User: []byte(floodUser), Room: []byte(floodRoom), Token: []byte(tok)}})
		if err != nil {
			return fmt.Errorf("cannot encode the flood datagram: %w", err)
		}
		p.flood = [][]byte{b}
		return nil
	}
	var d wire.Datagram
	for len(p.flood) < floodGarbagePool {
		b := make([]byte, 1+rng.IntN(128))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if d.Decode(b) == nil {
			continue // a valid request by chance: not garbage
		}
		p.flood = append(p.flood, b)
	}
	return nil
}

// user returns the user index of global job index k.
func (p *population) user(k int64) int { return int(p.order[k%int64(p.n)]) }

func (p *population) buildUDP() error {
	if p.udp != nil {
		return nil
	}
	p.udp = make([][]byte, p.n)
	for i := range p.n {
		it := []wire.Item{{Op: wire.OpHeartbeat, User: []byte(p.users[i]), Room: []byte(p.rooms[i]), Token: []byte(p.toks[i])}}
		b, err := wire.AppendRequest(nil, 0, true, it)
		if err != nil {
			return fmt.Errorf("cannot encode datagram for %s: %w", p.users[i], err)
		}
		p.udp[i] = b
	}
	return nil
}

func (p *population) buildJSON() {
	if p.json != nil {
		return
	}
	p.json = make([][]byte, p.n)
	for i := range p.n {
		b := []byte(`{"user":`)
		b = strconv.AppendQuote(b, p.users[i])
		b = append(b, `,"room":`...)
		b = strconv.AppendQuote(b, p.rooms[i])
		if p.toks[i] != "" {
			b = append(b, `,"token":`...)
			b = strconv.AppendQuote(b, p.toks[i])
		}
		p.json[i] = append(b, '}')
	}
}

func (p *population) buildKeys() {
	if p.keys != nil {
		return
	}
	p.keys = make([]string, p.n)
	for i := range p.n {
		p.keys[i] = "user:" + p.users[i]
	}
}
