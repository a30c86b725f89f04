package persist

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// A damaged log is not always visible to Pebble. Its records carry
// checksums, but Pebble reads the last log up to the first record that does
// not check out and treats the rest as the torn tail of a crash: garbage in
// the middle of the log, a log cut short, or an empty log all look like a
// clean end. So the store keeps its own count:
//
//   - every committed batch also sets commitKey to the batch's number
//     (one 15-byte record per cycle, not per change);
//   - at most once per watermarkInterval, after a synced commit, the number
//     is written to the file watermarkFile beside Pebble's files (8 bytes,
//     a CRC32-C, fsynced).
//
// At Open, a log whose commitKey is below the watermark lost synced
// commits: Open reports how many (Stats.LostCommits), the server logs it at
// error level and shows it in /readyz. Commits made in the last
// watermarkInterval before the damage are not covered.
const (
	watermarkFile     = "PRESENCED-WATERMARK"
	watermarkInterval = time.Second
	watermarkLen      = 12
)

var commitKey = []byte("mcommit")

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func encodeWatermark(seq uint64) []byte {
	b := binary.BigEndian.AppendUint64(make([]byte, 0, watermarkLen), seq)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

// readWatermark returns the stored watermark; ok is false when there is
// none or it does not check out (a torn write: then nothing is claimed).
func readWatermark(fs vfs.FS, dir string) (seq uint64, ok bool, err error) {
	f, err := fs.Open(fs.PathJoin(dir, watermarkFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("cannot read %s: %w", watermarkFile, err)
	}
	defer f.Close()
	var b [watermarkLen]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		return 0, false, nil
	}
	if crc32.Checksum(b[:8], crcTable) != binary.BigEndian.Uint32(b[8:]) {
		return 0, false, nil
	}
	return binary.BigEndian.Uint64(b[:8]), true, nil
}

// writeWatermark overwrites the watermark in place and fsyncs it. It is
// created once (and its directory entry synced); later writes are one
// 12-byte WriteAt and one fsync.
func (s *Store) writeWatermark(seq uint64) error {
	c := &s.c
	if c.wmFile == nil {
		name := s.fs.PathJoin(s.cfg.Dir, watermarkFile)
		f, err := s.fs.OpenReadWrite(name, vfs.WriteCategoryUnspecified)
		if err != nil {
			return fmt.Errorf("cannot open %s: %w", watermarkFile, err)
		}
		if d, err := s.fs.OpenDir(s.cfg.Dir); err == nil {
			_ = d.Sync()
			_ = d.Close()
		}
		c.wmFile = f
	}
	if _, err := c.wmFile.WriteAt(encodeWatermark(seq), 0); err != nil {
		return fmt.Errorf("cannot write %s: %w", watermarkFile, err)
	}
	if err := c.wmFile.Sync(); err != nil {
		return fmt.Errorf("cannot sync %s: %w", watermarkFile, err)
	}
	return nil
}

// maybeWatermark records a synced commit in the watermark, at most once per
// watermarkInterval. A failure is logged (rate-limited with the commit
// errors) and only weakens the check at the next start.
func (s *Store) maybeWatermark() {
	c := &s.c
	if c.commitSeq == c.wmSeq || time.Since(c.wmAt) < watermarkInterval {
		return
	}
	c.wmAt = time.Now()
	if err := s.writeWatermark(c.commitSeq); err != nil {
		if ok, _ := s.bgErrLog.allow(); ok {
			s.log.Warn("cannot record the durable commit; a damaged log may go unnoticed at the next start", "err", errLine(err))
		}
		return
	}
	c.wmSeq = c.commitSeq
}

// checkWatermark compares the log's last commit with the watermark at Open
// and sets the commit counter past both.
func (s *Store) checkWatermark(db *pebble.DB) error {
	var inLog uint64
	v, closer, err := db.Get(commitKey)
	switch {
	case err == nil:
		if len(v) == 8 {
			inLog = binary.BigEndian.Uint64(v)
		}
		closer.Close()
	case !errors.Is(err, pebble.ErrNotFound):
		return fmt.Errorf("cannot read commit counter: %w", s.corruption(err))
	}
	wm, ok, err := readWatermark(s.fs, s.cfg.Dir)
	if err != nil {
		return err
	}
	s.c.commitSeq = inLog
	if ok && wm > inLog {
		s.mu.Lock()
		s.mu.lost = WALDamage{LostCommits: wm - inLog, Durable: wm, InLog: inLog}
		s.mu.Unlock()
		s.c.commitSeq = wm
	}
	s.c.wmSeq = s.c.commitSeq
	return nil
}

// WALDamage says what Open found missing from the log.
type WALDamage struct {
	LostCommits uint64 // synced commits the watermark vouched for that the log no longer holds
	Durable     uint64 // last commit recorded as durable in the watermark
	InLog       uint64 // last commit the log holds
}

// Damage returns what Open found missing from the log (zero if nothing).
func (s *Store) Damage() WALDamage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.lost
}

func (d WALDamage) String() string {
	return fmt.Sprintf("%d synced commits missing from the write-ahead log (commit %d was durable, the log ends at %d): sessions changed in them may be missing or older",
		d.LostCommits, d.Durable, d.InLog)
}
