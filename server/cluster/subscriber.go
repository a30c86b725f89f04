package cluster

import (
	"time"

	"github.com/redis/go-redis/v9"
)

func (n *Node) subscribeLoop() {
	ctx := n.ctx
	for {
		sub := n.c.Subscribe(ctx, n.k.channel())
		if _, err := sub.Receive(ctx); err != nil {
			_ = sub.Close()
			select {
			case <-n.quit:
				return
			case <-time.After(time.Second):
			}
			continue
		}
		n.subscribed.Store(true)
		ch := sub.Channel(redis.WithChannelSize(4096))
	recv:
		for {
			select {
			case <-n.quit:
				_ = sub.Close()
				return
			case msg, ok := <-ch:
				if !ok {
					n.subscribed.Store(false)
					break recv
				}
				if ev, ok := decodeEvent(msg.Payload); ok && n.onEvent != nil {
					n.onEvent(ev)
				}
			}
		}
		_ = sub.Close()
		select {
		case <-n.quit:
			return
		case <-time.After(time.Second):
		}
	}
}
