//go:build !linux

package server

// kernelDrops reads nothing outside Linux (no SO_MEMINFO): the metric
// stays 0 and the node never sheds.
type kernelDrops struct{}

func (k *kernelDrops) watch(port, want int) {}
func (k *kernelDrops) forget()              {}
func (k *kernelDrops) sample() uint64       { return 0 }
