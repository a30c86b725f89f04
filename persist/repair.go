package persist

import (
	"bytes"
	"fmt"
	"log/slog"
	"math/big"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// RepairStats says what Repair moved aside and what it kept.
type RepairStats struct {
	MovedTo  string   // where the damaged store now is (Config.Dir + ".damaged-<UTC time>")
	Sessions int      // session records copied into the new store
	LastSeen int      // last-seen records copied into the new store
	Skipped  int      // unreadable key ranges stepped over (each lost the keys of at least one damaged block)
	Damaged  []string // files Pebble reported damaged while reading
	// Unreadable is why nothing at all could be read (the damaged store
	// would not open: a lost MANIFEST, say); empty otherwise. The new store
	// is then empty.
	Unreadable string
}

// Repair moves the store in cfg.Dir aside, to cfg.Dir + ".damaged-<time>",
// and creates a new store in cfg.Dir holding every session and last-seen
// record that can still be read from the old one: a block whose checksum
// fails loses the keys it held (and the keys of other files in the same key
// range), the rest is copied. The damaged copy is left for inspection; delete
// it once the node runs again. Do not run Repair while a node uses the store.
func Repair(cfg Config) (RepairStats, error) {
	var st RepairStats
	if err := cfg.Validate(); err != nil {
		return st, err
	}
	fs := cfg.FS
	if fs == nil {
		fs = vfs.Default
	}
	if _, err := fs.Stat(cfg.Dir); err != nil {
		return st, fmt.Errorf("cannot repair store: %w", err)
	}
	// Pebble's own lock: a node still using the store holds it.
	lock, err := fs.Lock(fs.PathJoin(cfg.Dir, "LOCK"))
	if err != nil {
		return st, fmt.Errorf("cannot repair store %s: is a node still running on it? %w", cfg.Dir, err)
	}
	st.MovedTo = cfg.Dir + ".damaged-" + time.Now().UTC().Format("20060102T150405Z")
	err = fs.Rename(cfg.Dir, st.MovedTo)
	lock.Close()
	if err != nil {
		return st, fmt.Errorf("cannot move damaged store aside: %w", err)
	}
	dst, err := Open(cfg)
	if err != nil {
		return st, fmt.Errorf("cannot create new store: %w", err)
	}
	old, damaged, err := openDamaged(fs, st.MovedTo, dst.log)
	if err != nil {
		st.Unreadable = err.Error()
	} else {
		err = copyReadable(old, dst.db, &st)
		// Closing a DB that met corruption may report it again; what was
		// copied is what counts.
		_ = closeDB(old, closeOldDBTimeout)
		if err != nil {
			_ = dst.Close()
			return st, err
		}
	}
	st.Damaged = damaged()
	if err := dst.Close(); err != nil {
		return st, fmt.Errorf("cannot close new store: %w", err)
	}
	return st, nil
}

// openDamaged opens dir read-only, without compactions, collecting the
// files Pebble reports damaged instead of ending the process.
func openDamaged(fs vfs.FS, dir string, log *slog.Logger) (db *pebble.DB, damaged func() []string, err error) {
	var (
		mu    sync.Mutex
		files []string
	)
	damaged = func() []string {
		mu.Lock()
		defer mu.Unlock()
		return files
	}
	opts := &pebble.Options{
		FS:                          fs,
		ReadOnly:                    true,
		DisableAutomaticCompactions: true,
		Merger:                      lastSeenMerger,
		// Pebble's own chatter is dropped: the damaged files are reported
		// through the DataCorruption event.
		Logger: pebbleLogger{log: slog.New(slog.DiscardHandler)},
		EventListener: &pebble.EventListener{
			DataCorruption: func(info pebble.DataCorruptionInfo) {
				mu.Lock()
				defer mu.Unlock()
				for _, f := range files {
					if f == info.Path {
						return
					}
				}
				files = append(files, info.Path)
				log.Error("damaged file: keys in its damaged blocks are lost", "file", info.Path, "err", info.Details)
			},
		},
	}
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("cannot open damaged store %s: pebble panic: %v", dir, r)
		}
	}()
	db, err = pebble.Open(dir, opts)
	if err != nil {
		return nil, damaged, fmt.Errorf("cannot open damaged store %s: %w", dir, err)
	}
	return db, damaged, nil
}

// copyReadable copies the session and last-seen ranges of src into dst. When
// the iterator fails (a damaged block), it searches for the smallest key past
// the last good one at which a seek succeeds again and carries on from there.
func copyReadable(src, dst *pebble.DB, st *RepairStats) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("cannot copy readable records: pebble panic: %v", r)
		}
	}()
	b := dst.NewBatch()
	defer b.Close()
	flush := func(opts *pebble.WriteOptions) error {
		if err := b.Commit(opts); err != nil {
			return fmt.Errorf("cannot write new store: %w", err)
		}
		b.Reset()
		return nil
	}
	// An iterator that met a damaged block keeps failing (its levels cache
	// the error): every resumption and every probe gets a fresh one.
	from := sessionLower
	for {
		last, err := copyFrom(src, from, b, st, flush)
		if err == nil {
			break
		}
		st.Skipped++
		if last == nil {
			last = from
		}
		resume, ok := findReadable(src, last, lastSeenUpper)
		if !ok {
			break
		}
		from = resume
	}
	return flush(pebble.Sync)
}

// copyFrom copies the records from key from up to the first read error and
// returns the last key copied (nil if none) and that error.
func copyFrom(src *pebble.DB, from []byte, b *pebble.Batch, st *RepairStats, flush func(*pebble.WriteOptions) error) (last []byte, err error) {
	it, err := src.NewIter(&pebble.IterOptions{LowerBound: from, UpperBound: lastSeenUpper})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	for valid := it.First(); valid; valid = it.Next() {
		k := it.Key()
		v, err := it.ValueAndErr()
		if err != nil {
			return last, err
		}
		switch {
		case k[0] == tagSession:
			_, _, ok := decodeSessionKey(k)
			_, _, _, ok2 := decodeSessionValue(v)
			if !ok || !ok2 {
				continue
			}
			st.Sessions++
		case k[0] == tagLastSeen:
			if _, ok := decodeMillis(v); !ok {
				continue
			}
			st.LastSeen++
		default:
			continue
		}
		_ = b.Set(k, v, nil)
		last = append(last[:0], k...)
		if b.Count() >= replayBatchOps {
			if err := flush(pebble.NoSync); err != nil {
				return last, err
			}
		}
	}
	return last, it.Error()
}

// findReadable returns the smallest key K in (after, upper] (to the
// precision of keys two bytes longer than after) at which a seek does not fail. A
// seek fails while the first key at or after K lies in a damaged block, so
// the keys that fail form a range starting right after the last good key: a
// binary search over keys read as big-endian numbers finds its end in at
// about 8*(len(after)+2) seeks.
func findReadable(src *pebble.DB, after, upper []byte) ([]byte, bool) {
	readable := func(k []byte) bool {
		it, err := src.NewIter(&pebble.IterOptions{LowerBound: k, UpperBound: upper})
		if err != nil {
			return false
		}
		it.First()
		return it.Close() == nil
	}
	// Keys of two more bytes than the last good one: enough to land
	// between it and the first readable key in practice, and few probes.
	w := max(len(after), len(upper)) + 2
	lo := keyNum(after, w)
	lo.Add(lo, big.NewInt(1))
	hi := keyNum(upper, w)
	for lo.Cmp(hi) < 0 {
		mid := new(big.Int).Add(lo, hi)
		mid.Rsh(mid, 1)
		if readable(numKey(mid, w)) {
			hi = mid
		} else {
			lo = mid.Add(mid, big.NewInt(1))
		}
	}
	k := numKey(hi, w)
	return k, bytes.Compare(k, upper) < 0
}

// keyNum reads k, padded with zeros to w bytes, as a number.
func keyNum(k []byte, w int) *big.Int {
	buf := make([]byte, w)
	copy(buf, k)
	return new(big.Int).SetBytes(buf)
}

// numKey is the inverse of keyNum, without the padding zeros.
func numKey(n *big.Int, w int) []byte {
	buf := make([]byte, w)
	n.FillBytes(buf)
	return bytes.TrimRight(buf, "\x00")
}
