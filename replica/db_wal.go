package replica

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/litefs-project/litefs/checksum"
)

// walState is what a DB knows of its write-ahead log: the header in force
// and where the committed frames end.
type walState struct {
	hdr   walHeader
	valid bool      // a valid header is in force
	end   int64     // offset just after the last committed frame
	cksum [2]uint32 // cumulative checksum at end
	cut   error     // a commit failed and its frames were cut; see refuseCutRetry
}

func (w *walState) reset() { *w = walState{} }

// start puts a new header in force: the WAL restarted with new salts.
func (w *walState) start(hdr walHeader) {
	*w = walState{hdr: hdr, valid: true, end: walHeaderSize, cksum: hdr.cksum}
}

func (w *walState) frameSize() int64 { return walFrameHeaderSize + int64(w.hdr.pageSize) }

// WriteWALAt writes p at off to the WAL open as f and returns the bytes
// written. When the write completes a commit frame (its page, or its
// header when SQLite rewrites checksums after writing the frame), the
// frames of the transaction become one LTX file before WriteWALAt returns,
// so before SQLite publishes the commit to readers through the WAL index.
// If that fails, the write fails. A new WAL header (a restart after a
// checkpoint) starts the WAL over.
func (db *DB) WriteWALAt(f *os.File, p []byte, off int64) (int, error) {
	n, err := f.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, db.walWritten(f, off, n)
}

// walWritten is called after n bytes were written at off to the WAL, which
// r reads, and logs the transactions the write completes (see WriteWALAt).
func (db *DB) walWritten(r io.ReaderAt, off int64, n int) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return ErrClosed
	}
	if err := db.refuseCutRetry(off); err != nil {
		return err
	}
	if off == 0 && n >= walHeaderSize {
		b := make([]byte, walHeaderSize)
		if _, err := r.ReadAt(b, 0); err != nil {
			return fmt.Errorf("read wal header: %w", err)
		}
		hdr, ok := parseWALHeader(b)
		if !ok {
			db.wal.reset()
			return nil
		}
		db.wal.start(hdr)
		if n == walHeaderSize {
			return nil
		}
	}
	if !db.wal.valid {
		return nil
	}
	frameSize := db.wal.frameSize()
	last := off + int64(n) - 1
	if last < walHeaderSize {
		return nil
	}
	frameOff := walHeaderSize + (last-walHeaderSize)/frameSize*frameSize
	if frameOff < db.wal.end {
		return nil
	}
	if end := off + int64(n); end != frameOff+frameSize && end != frameOff+walFrameHeaderSize {
		return nil // not the end of a frame's page or header
	}
	hb := make([]byte, walFrameHeaderSize)
	if _, err := r.ReadAt(hb, frameOff); err != nil {
		return fmt.Errorf("read wal frame header at %d: %w", frameOff, err)
	}
	if binary.BigEndian.Uint32(hb[4:]) == 0 {
		return nil // not a commit frame
	}
	txns, err := readWALTxns(r, frameOff+frameSize, db.wal.hdr, db.wal.end, db.wal.cksum)
	if err != nil {
		return err
	}
	// Until the checksums hold (SQLite rewrites some after writing the
	// commit frame), txns is empty and a later write completes the commit.
	for _, txn := range txns {
		if err := db.commitWALTxn(r, txn); err != nil {
			db.walCommitFailed(err)
			return err
		}
	}
	return nil
}

// commitWALTxn writes the LTX file of one committed WAL transaction and
// moves the WAL's committed end past it. db.mu must be held.
func (db *DB) commitWALTxn(r io.ReaderAt, txn walTxn) error {
	if db.pageSize == 0 {
		db.pageSize = db.wal.hdr.pageSize
		db.chk = checksum.NewTable(db.pageSize)
	}
	if db.wal.hdr.pageSize != db.pageSize {
		return fmt.Errorf("wal page size %d differs from the database's %d", db.wal.hdr.pageSize, db.pageSize)
	}
	frames, pgnos := txnPages(txn)
	read := func(pgno uint32, buf []byte) error {
		off, ok := frames[pgno]
		if !ok {
			clear(buf) // a page added at the end and never written
			return nil
		}
		_, err := r.ReadAt(buf, off+walFrameHeaderSize)
		return err
	}
	if err := db.commitTxn(txn.commit, pgnos, read, syncDeferred); err != nil {
		return err
	}
	db.wal.end, db.wal.cksum = txn.end, txn.cksum
	return nil
}

// txnPages returns the offset of the last frame of each page in txn, and
// the pages.
func txnPages(txn walTxn) (map[uint32]int64, []uint32) {
	frames := make(map[uint32]int64, len(txn.frames))
	pgnos := make([]uint32, 0, len(txn.frames))
	for _, f := range txn.frames {
		if _, ok := frames[f.pgno]; !ok {
			pgnos = append(pgnos, f.pgno)
		}
		frames[f.pgno] = f.offset
	}
	return frames, pgnos
}

// SyncWAL makes the WAL open as f durable, as SQLite asks with an fsync:
// the LTX files of its transactions first, so the log never has less than
// what the durable WAL holds. datasync skips the file's metadata.
func (db *DB) SyncWAL(f *os.File, datasync bool) error {
	if err := db.log.Sync(); err != nil {
		return fmt.Errorf("sync ltx files: %w", err)
	}
	return syncFile(f, datasync)
}

// TruncateWAL truncates the WAL to size bytes. Cutting committed frames
// (a checkpoint in TRUNCATE mode) starts the WAL over.
func (db *DB) TruncateWAL(size int64) error {
	if err := os.Truncate(db.WALPath(), size); err != nil {
		return err
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if size < db.wal.end {
		db.wal.reset()
	}
	return nil
}

// RemoveWAL deletes the WAL (the last connection closed), which starts it
// over.
func (db *DB) RemoveWAL() error {
	if err := os.Remove(db.WALPath()); err != nil {
		return err
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	db.wal.reset()
	return nil
}

// recoverWAL adds the committed transactions in the WAL to tbl, the
// checksums of the database file, so that tbl describes the database as
// readers see it. If the log's position is reached before the end of the
// WAL, the transactions after it never had their LTX file written (litefs
// stopped before the commit returned), so they are cut off the WAL. It
// returns the table to use, and sets the WAL state.
func (db *DB) recoverWAL(tbl *checksum.Table, pageSize uint32) (*checksum.Table, error) {
	db.wal.reset()
	f, err := os.OpenFile(db.WALPath(), os.O_RDWR, 0)
	if os.IsNotExist(err) {
		return tbl, nil
	} else if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	b := make([]byte, walHeaderSize)
	if n, _ := f.ReadAt(b, 0); n < walHeaderSize {
		return tbl, nil
	}
	hdr, ok := parseWALHeader(b)
	if !ok || (pageSize != 0 && hdr.pageSize != pageSize) {
		return tbl, nil
	}
	txns, err := readWALTxns(f, fi.Size(), hdr, walHeaderSize, hdr.cksum)
	if err != nil {
		return nil, err
	}
	if tbl.PageSize() == 0 {
		tbl = checksum.NewTable(hdr.pageSize)
	}
	// The checksum after each transaction; the last one equal to the
	// position says how much of the WAL the log covers.
	work := tbl.Clone()
	sums := []checksum.Checksum{work.Sum()}
	for _, txn := range txns {
		if err := applyWALTxn(work, f, txn); err != nil {
			return nil, err
		}
		sums = append(sums, work.Sum())
	}
	keep := -1
	for k := len(sums) - 1; k >= 0; k-- {
		if sums[k] == db.pos.Checksum {
			keep = k
			break
		}
	}
	switch {
	case keep == len(txns):
		tbl = work
	case keep < 0:
		tbl = work // no match: the caller reports the mismatch
	default:
		end := int64(walHeaderSize)
		if keep > 0 {
			end = txns[keep-1].end
		}
		db.logger.Warn("cutting unacknowledged transactions off the wal: litefs stopped before their commit returned",
			slog.Int("transactions", len(txns)-keep), slog.Int64("offset", end))
		if err := f.Truncate(end); err != nil {
			return nil, err
		}
		if err := f.Sync(); err != nil {
			return nil, err
		}
		for _, txn := range txns[:keep] {
			if err := applyWALTxn(tbl, f, txn); err != nil {
				return nil, err
			}
		}
		txns = txns[:keep]
	}
	db.wal.start(hdr)
	if n := len(txns); n > 0 {
		db.wal.end, db.wal.cksum = txns[n-1].end, txns[n-1].cksum
	}
	return tbl, nil
}

// applyWALTxn applies one WAL transaction's pages to tbl.
func applyWALTxn(tbl *checksum.Table, r io.ReaderAt, txn walTxn) error {
	frames, pgnos := txnPages(txn)
	buf := make([]byte, tbl.PageSize())
	sums := make([]checksum.PageSum, 0, len(pgnos))
	for _, pgno := range pgnos {
		if _, err := r.ReadAt(buf, frames[pgno]+walFrameHeaderSize); err != nil {
			return err
		}
		sums = append(sums, checksum.PageSum{Pgno: pgno, Sum: checksum.Page(pgno, buf)})
	}
	tbl.Apply(txn.commit, sums)
	return nil
}
