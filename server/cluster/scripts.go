package cluster

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
)

// withScripts runs f, loading the scripts and retrying once when Redis
// does not know them (first use, or after a restart).
func (n *Node) withScripts(ctx context.Context, f func() error) error {
	err := f()
	if err == nil || !isNoScript(err) {
		return err
	}
	if err := n.loadScripts(ctx); err != nil {
		return err
	}
	return f()
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

func (n *Node) loadScripts(ctx context.Context) error {
	load := func(ctx context.Context, c redis.Cmdable) error {
		for _, s := range allScripts {
			if err := s.Load(ctx, c).Err(); err != nil {
				return fmt.Errorf("cannot load script: %w", err)
			}
		}
		return nil
	}
	if cc, ok := n.c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return load(ctx, c) })
	}
	return load(ctx, n.c)
}
