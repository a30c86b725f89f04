package cluster

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Script plumbing. Every write goes out as a command go-redis never resends
// after a network error (noRetryCmd): a script that may have run once
// already must not run twice (a second TOUCH answers "not new" and the join
// loses its room update and event; a second LEAVE loses the leave). MOVED
// and ASK replies, which mean the command did not run, are still followed
// (Config.options keeps the client's redirects). A failed command is a
// fault (Node.fault): the node answers partial and re-asserts.
//
// Scripts are loaded on every new connection (Config.newClient's
// OnConnect), so a restarted or newly promoted master knows them before
// its first EVALSHA. A NOSCRIPT can still come from a SCRIPT FLUSH on a
// live connection: it is a fault like any other, the scripts are loaded on
// every master again, and nothing is re-run blindly.

// noRetryCmd marks a command as not to be resent by go-redis.
type noRetryCmd struct{ *redis.Cmd }

func (noRetryCmd) NoRetry() bool { return true }

// evalSha queues one call of s on p (EVALSHA), not resent by go-redis.
// Only the Redis Cluster client resends pipelines after network errors
// (its MaxRedirects loop); the standalone and Sentinel clients do not
// (MaxRetries -1), and there the marker is left off: it takes pipelines off
// go-redis's fast path (100,000 joins took 5 times longer).
func (n *Node) evalSha(ctx context.Context, p redis.Pipeliner, s *redis.Script, keys []string, args ...any) *redis.Cmd {
	a := make([]any, 3+len(keys), 3+len(keys)+len(args))
	a[0], a[1], a[2] = "evalsha", s.Hash(), len(keys)
	for i, k := range keys {
		a[3+i] = k
	}
	a = append(a, args...)
	c := redis.NewCmd(ctx, a...)
	if len(keys) > 0 {
		c.SetFirstKeyPos(3)
	}
	if n.noRetry {
		_ = p.Process(ctx, noRetryCmd{c})
	} else {
		_ = p.Process(ctx, c)
	}
	return c
}

func isNoScript(err error) bool {
	return err != nil && strings.Contains(err.Error(), "NOSCRIPT")
}

// loadScriptsOn loads every script on one connection or client.
func loadScriptsOn(ctx context.Context, c redis.Cmdable) error {
	for _, s := range allScripts {
		if err := s.Load(ctx, c).Err(); err != nil {
			return fmt.Errorf("cannot load scripts: %w", err)
		}
	}
	return nil
}

// loadScripts loads the scripts on every master (after a NOSCRIPT).
func (n *Node) loadScripts(ctx context.Context) error {
	if cc, ok := n.c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return loadScriptsOn(ctx, c) })
	}
	return loadScriptsOn(ctx, n.c)
}

// withScripts runs f, which sends a pipeline of script calls. It never
// re-runs f: on NOSCRIPT it has the scripts loaded on every master at the
// next health check, and the caller's fault path repairs what failed.
func (n *Node) withScripts(_ context.Context, f func() error) error {
	err := f()
	if isNoScript(err) {
		n.scriptsLost.Store(true)
	}
	return err
}
