package persist

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// The delivery queue: a durable FIFO of opaque records (webhook batches
// not yet delivered) in the same Pebble database as the sessions, under
// its own key tag (doc.go: delivery queue record). Appends are synced, so
// a record Append returned for survives kill -9 (per the fsync mode: with
// --fsync=off the WAL sync is a no-op, as for sessions).

// QueueItem is one queued record.
type QueueItem struct {
	Seq      uint64 // position in the queue, increasing
	Enqueued int64  // unix ms when it was appended
	Data     []byte // the record; owned by the caller
}

// Queue is the delivery queue of a Store. Its methods are safe for
// concurrent use; the queue keeps its length and next sequence in memory
// (counted once by OpenQueue).
type Queue struct {
	s  *Store
	mu struct {
		sync.Mutex
		next   uint64 // seq of the next append
		first  uint64 // seq of the oldest record (== next when empty)
		oldest int64  // Enqueued of the oldest record, 0 when empty
	}
}

var (
	queueLower = []byte{tagQueue}
	queueUpper = []byte{tagQueue + 1}
)

func appendQueueKey(dst []byte, seq uint64) []byte {
	dst = append(dst, tagQueue)
	return binary.BigEndian.AppendUint64(dst, seq)
}

// OpenQueue scans the queue's key range once to find its ends. Call it
// after Open (before or after Start).
func (s *Store) OpenQueue() (*Queue, error) {
	q := &Queue{s: s}
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if s.db == nil {
		return nil, fmt.Errorf("cannot open delivery queue: %w", ErrUnavailable)
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: queueLower, UpperBound: queueUpper})
	if err != nil {
		return nil, fmt.Errorf("cannot open delivery queue: %w", err)
	}
	defer it.Close()
	q.mu.next = 1
	q.mu.first = 1
	if it.First() {
		seq, at, _, ok := decodeQueueRecord(it.Key(), it.Value())
		if !ok {
			return nil, fmt.Errorf("cannot open delivery queue: %w", ErrBadRecord)
		}
		q.mu.first, q.mu.oldest = seq, at
		if it.Last() {
			last, _, _, _ := decodeQueueRecord(it.Key(), it.Value())
			q.mu.next = last + 1
		}
	}
	return q, it.Error()
}

func decodeQueueRecord(k, v []byte) (seq uint64, at int64, data []byte, ok bool) {
	if len(k) != 9 || k[0] != tagQueue || len(v) < 8 {
		return 0, 0, nil, false
	}
	return binary.BigEndian.Uint64(k[1:]), int64(binary.BigEndian.Uint64(v)), v[8:], true
}

// Append adds records at the tail, in order, with one synced commit.
func (q *Queue) Append(now int64, recs [][]byte) error {
	if len(recs) == 0 {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.s.dbMu.RLock()
	defer q.s.dbMu.RUnlock()
	if q.s.db == nil {
		return fmt.Errorf("cannot append to delivery queue: %w", ErrUnavailable)
	}
	b := q.s.db.NewBatch()
	defer b.Close()
	var k, v []byte
	for i, r := range recs {
		k = appendQueueKey(k[:0], q.mu.next+uint64(i))
		v = appendMillis(v[:0], now)
		v = append(v, r...)
		if err := b.Set(k, v, nil); err != nil {
			return fmt.Errorf("cannot append to delivery queue: %w", err)
		}
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("cannot append to delivery queue: %w", err)
	}
	if q.mu.first == q.mu.next {
		q.mu.oldest = now
	}
	q.mu.next += uint64(len(recs))
	return nil
}

// Read returns up to n of the oldest records, oldest first, without
// removing them.
func (q *Queue) Read(n int) ([]QueueItem, error) {
	q.s.dbMu.RLock()
	defer q.s.dbMu.RUnlock()
	if q.s.db == nil {
		return nil, fmt.Errorf("cannot read delivery queue: %w", ErrUnavailable)
	}
	it, err := q.s.db.NewIter(&pebble.IterOptions{LowerBound: queueLower, UpperBound: queueUpper})
	if err != nil {
		return nil, fmt.Errorf("cannot read delivery queue: %w", err)
	}
	defer it.Close()
	var out []QueueItem
	for ok := it.First(); ok && len(out) < n; ok = it.Next() {
		seq, at, data, good := decodeQueueRecord(it.Key(), it.Value())
		if !good {
			return out, fmt.Errorf("cannot read delivery queue: %w", ErrBadRecord)
		}
		out = append(out, QueueItem{Seq: seq, Enqueued: at, Data: append([]byte(nil), data...)})
	}
	return out, it.Error()
}

// Delete removes every record up to and including seq. It does not wait
// for an fsync: a delete lost in a crash only delivers those records again,
// which at-least-once delivery allows, and saves an fsync per batch.
func (q *Queue) Delete(through uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.s.dbMu.RLock()
	defer q.s.dbMu.RUnlock()
	if q.s.db == nil {
		return fmt.Errorf("cannot delete from delivery queue: %w", ErrUnavailable)
	}
	if through < q.mu.first {
		return nil
	}
	through = min(through, q.mu.next-1)
	err := q.s.db.DeleteRange(appendQueueKey(nil, q.mu.first), appendQueueKey(nil, through+1), pebble.NoSync)
	if err != nil {
		return fmt.Errorf("cannot delete from delivery queue: %w", err)
	}
	q.mu.first = through + 1
	q.mu.oldest = 0
	if q.mu.first < q.mu.next {
		v, closer, err := q.s.db.Get(appendQueueKey(nil, q.mu.first))
		if err == nil {
			if len(v) >= 8 {
				q.mu.oldest = int64(binary.BigEndian.Uint64(v))
			}
			closer.Close()
		} else if !errors.Is(err, pebble.ErrNotFound) {
			return fmt.Errorf("cannot read delivery queue: %w", err)
		}
	}
	return nil
}

// Len returns how many records are queued and when the oldest was
// appended (unix ms, 0 when empty).
func (q *Queue) Len() (n int, oldest int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return int(q.mu.next - q.mu.first), q.mu.oldest
}
