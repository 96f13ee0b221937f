package replica

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
)

// journalActive reports whether a rollback journal holds a transaction
// (a valid header): until it ends, the database file may hold uncommitted
// pages. Checkpoints in WAL mode write committed pages without a journal.
func (db *DB) journalActive() (bool, error) {
	f, err := os.Open(db.JournalPath())
	if os.IsNotExist(err) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	defer f.Close()
	b := make([]byte, len(journalMagic))
	if n, _ := f.ReadAt(b, 0); n < len(b) {
		return false, nil
	}
	return isJournalMagic(b), nil
}

// WriteSnapshot writes the database as readers see it at its current
// position to w, as an LTX snapshot (every page, TXIDs 1 to the position),
// and returns the snapshot's header and checksum. It holds the database's
// lock while it reads, so commits wait; it first waits for a rollback-mode
// transaction in progress to end, since the file may hold its uncommitted
// pages until then.
func (db *DB) WriteSnapshot(ctx context.Context, w io.Writer) (ltx.Header, checksum.Checksum, error) {
	for {
		db.mu.Lock()
		if db.closed {
			db.mu.Unlock()
			return ltx.Header{}, 0, ErrClosed
		}
		if active, err := db.journalActive(); err != nil {
			db.mu.Unlock()
			return ltx.Header{}, 0, err
		} else if !active {
			break
		}
		db.mu.Unlock()
		select {
		case <-ctx.Done():
			return ltx.Header{}, 0, fmt.Errorf("snapshot %q: a transaction is writing: %w", db.name, context.Cause(ctx))
		case <-time.After(time.Millisecond):
		}
	}
	defer db.mu.Unlock()

	if db.pos.TXID == 0 {
		return ltx.Header{}, 0, fmt.Errorf("snapshot %q: no transaction yet", db.name)
	}
	pageN := db.chk.PageN()
	hdr := ltx.Header{PageSize: db.pageSize, Commit: pageN, MinTXID: 1, MaxTXID: db.pos.TXID, Timestamp: time.Now().UnixMilli()}

	// Pages in the WAL's committed frames are newer than the file's.
	frames := map[uint32]int64{}
	var wal *os.File
	if db.wal.valid && db.wal.end > walHeaderSize {
		f, err := os.Open(db.WALPath())
		if err != nil {
			return ltx.Header{}, 0, err
		}
		defer f.Close()
		txns, err := readWALTxns(f, db.wal.end, db.wal.hdr, walHeaderSize, db.wal.hdr.cksum)
		if err != nil {
			return ltx.Header{}, 0, err
		}
		for _, txn := range txns {
			for _, fr := range txn.frames {
				frames[fr.pgno] = fr.offset + walFrameHeaderSize
			}
		}
		wal = f
	}

	enc, err := ltx.NewEncoder(w, hdr)
	if err != nil {
		return ltx.Header{}, 0, err
	}
	tbl := checksum.NewTable(db.pageSize)
	buf := make([]byte, db.pageSize)
	lock := checksum.LockPgno(db.pageSize)
	for pgno := uint32(1); pgno <= pageN; pgno++ {
		if pgno == lock {
			continue
		}
		if off, ok := frames[pgno]; ok {
			if _, err := wal.ReadAt(buf, off); err != nil {
				return ltx.Header{}, 0, err
			}
		} else if err := db.readDBPage(pgno, buf); err != nil {
			return ltx.Header{}, 0, err
		}
		tbl.Set(pgno, buf)
		if err := enc.Page(pgno, buf); err != nil {
			return ltx.Header{}, 0, err
		}
	}
	if got := tbl.Sum(); got != db.pos.Checksum {
		return ltx.Header{}, 0, fmt.Errorf("snapshot %q: pages read have checksum %s, position says %s", db.name, got, db.pos.Checksum)
	}
	if err := enc.Close(db.pos.Checksum); err != nil {
		return ltx.Header{}, 0, err
	}
	return hdr, db.pos.Checksum, nil
}
