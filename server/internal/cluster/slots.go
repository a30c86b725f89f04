package cluster

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// slotsTimeout bounds one reload of the Redis Cluster slot map.
const slotsTimeout = time.Second

// slotSource reloads the Redis Cluster slot map for go-redis
// (ClusterOptions.ClusterSlots): CLUSTER SLOTS asked of every known node at
// once, each bounded by slotsTimeout, the first answer wins. go-redis's own
// reload asks one node at a time and waits a whole ReadTimeout on each that
// does not answer, so a hung master picked first held the switch to its
// promoted replica for 5 s. Known nodes are the --redis addresses and every
// node a slot map named since.
type slotSource struct {
	base *redis.Options // credentials, TLS, dial timeout

	mu      sync.Mutex
	clients map[string]*redis.Client
	closed  bool
}

func newSlotSource(o *redis.UniversalOptions) *slotSource {
	s := &slotSource{
		base: &redis.Options{
			Username: o.Username, Password: o.Password, TLSConfig: o.TLSConfig,
			DialTimeout: o.DialTimeout, ReadTimeout: slotsTimeout, WriteTimeout: slotsTimeout,
			MaxRetries: -1, DialerRetries: 1, ContextTimeoutEnabled: true, PoolSize: 1,
		},
		clients: map[string]*redis.Client{},
	}
	for _, a := range o.Addrs {
		s.clientLocked(a)
	}
	return s
}

func (s *slotSource) clientLocked(addr string) *redis.Client {
	c, ok := s.clients[addr]
	if !ok {
		o := *s.base
		o.Addr = addr
		c = redis.NewClient(&o)
		s.clients[addr] = c
	}
	return c
}

// slots is the ClusterSlots function.
func (s *slotSource) slots(ctx context.Context) ([]redis.ClusterSlot, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, redis.ErrClosed
	}
	cs := make([]*redis.Client, 0, len(s.clients))
	for _, c := range s.clients {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, slotsTimeout)
	defer cancel()
	type answer struct {
		slots []redis.ClusterSlot
		err   error
	}
	ch := make(chan answer, len(cs))
	for _, c := range cs {
		go func() {
			//lint:ignore SA1019 ClusterOptions.ClusterSlots takes this form; go-redis's own reload reads CLUSTER SLOTS too
			sl, err := c.ClusterSlots(ctx).Result()
			ch <- answer{sl, err}
		}()
	}
	var errs []error
	for range cs {
		a := <-ch
		if a.err == nil && len(a.slots) > 0 {
			s.learn(a.slots)
			return a.slots, nil
		}
		errs = append(errs, a.err)
	}
	return nil, errors.Join(errs...)
}

// learn remembers every node a slot map names.
func (s *slotSource) learn(slots []redis.ClusterSlot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for _, sl := range slots {
		for _, n := range sl.Nodes {
			s.clientLocked(n.Addr)
		}
	}
}

func (s *slotSource) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, c := range s.clients {
		_ = c.Close()
	}
}
