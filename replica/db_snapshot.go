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
	return db.writeSnapshot(ctx, w, snapshotStamped)
}

// How a snapshot is stamped (see ltx.Stamp).
type snapshotStamp int

const (
	// snapshotStamped: with the stamp of the newest transaction it holds.
	snapshotStamped snapshotStamp = iota
	// snapshotUnstamped: with none. A replica that applies it holds
	// every transaction up to that one in its database, but not, in other
	// databases, every transaction stamped before it; with sync-replicas
	// its stamp must not claim so (see Server.sendOrdered).
	snapshotUnstamped
)

func (db *DB) writeSnapshot(ctx context.Context, w io.Writer, stamping snapshotStamp) (ltx.Header, checksum.Checksum, error) {
	var (
		hdr ltx.Header
		enc *ltx.Encoder
	)
	img, err := db.readCommitted(ctx, "snapshot", func(img committedImage) error {
		hdr = ltx.Header{PageSize: img.PageSize, Commit: img.PageN, MinTXID: 1, MaxTXID: img.Pos.TXID, Timestamp: time.Now().UnixMilli()}
		// The stamp of the newest transaction it holds: a replica that
		// applies it holds that one (see Store.Stamp).
		if last := db.log.LastHeader(); last.MaxTXID == img.Pos.TXID && stamping == snapshotStamped {
			hdr.Stamp = last.Stamp
		}
		var err error
		enc, err = ltx.NewEncoder(w, hdr)
		return err
	}, func(pgno uint32, data []byte) error {
		if pgno == checksum.LockPgno(hdr.PageSize) {
			return nil
		}
		return enc.Page(pgno, data)
	})
	if err != nil {
		return ltx.Header{}, 0, err
	}
	if err := enc.Close(img.Pos.Checksum); err != nil {
		return ltx.Header{}, 0, err
	}
	return hdr, img.Pos.Checksum, nil
}

// committedImage describes the database at one position.
type committedImage struct {
	Pos      ltx.Pos
	PageSize uint32
	PageN    uint32
}

// readCommitted passes the database as readers see it at its position to
// page, every page in order (the lock page as zeros), after begin saw what
// it is: the file with the WAL's committed frames laid over it. It holds
// db.mu throughout, so commits and applies wait, never half seen; it first
// waits for a rollback-mode transaction in progress to end, since the file
// may hold its uncommitted pages until then. It fails, naming what, if the
// pages read do not have the position's checksum.
func (db *DB) readCommitted(ctx context.Context, what string, begin func(committedImage) error, page func(pgno uint32, data []byte) error) (committedImage, error) {
	for {
		db.mu.Lock()
		if db.closed {
			db.mu.Unlock()
			return committedImage{}, ErrClosed
		}
		if active, err := db.journalActive(); err != nil {
			db.mu.Unlock()
			return committedImage{}, err
		} else if !active {
			break
		}
		db.mu.Unlock()
		select {
		case <-ctx.Done():
			return committedImage{}, fmt.Errorf("%s %q: a transaction is writing: %w", what, db.name, context.Cause(ctx))
		case <-time.After(time.Millisecond):
		}
	}
	defer db.mu.Unlock()

	if db.pos.TXID == 0 {
		return committedImage{}, fmt.Errorf("%s %q: no transaction yet", what, db.name)
	}
	img := committedImage{Pos: db.pos, PageSize: db.pageSize, PageN: db.chk.PageN()}

	// Pages in the WAL's committed frames are newer than the file's.
	frames := map[uint32]int64{}
	var wal *os.File
	if db.wal.valid && db.wal.end > walHeaderSize {
		f, err := os.Open(db.WALPath())
		if err != nil {
			return committedImage{}, err
		}
		defer f.Close()
		txns, err := readWALTxns(f, db.wal.end, db.wal.hdr, walHeaderSize, db.wal.hdr.cksum)
		if err != nil {
			return committedImage{}, err
		}
		for _, txn := range txns {
			for _, fr := range txn.frames {
				frames[fr.pgno] = fr.offset + walFrameHeaderSize
			}
		}
		wal = f
	}
	if err := begin(img); err != nil {
		return committedImage{}, err
	}
	tbl := checksum.NewTable(db.pageSize)
	buf := make([]byte, db.pageSize)
	lock := checksum.LockPgno(db.pageSize)
	for pgno := uint32(1); pgno <= img.PageN; pgno++ {
		if pgno%1024 == 0 && ctx.Err() != nil {
			return committedImage{}, fmt.Errorf("%s %q: %w", what, db.name, context.Cause(ctx))
		}
		if pgno == lock {
			clear(buf)
		} else if off, ok := frames[pgno]; ok {
			if _, err := wal.ReadAt(buf, off); err != nil {
				return committedImage{}, err
			}
		} else if err := db.readDBPage(pgno, buf); err != nil {
			return committedImage{}, err
		}
		tbl.Set(pgno, buf)
		if err := page(pgno, buf); err != nil {
			return committedImage{}, err
		}
	}
	if got := tbl.Sum(); got != img.Pos.Checksum {
		return committedImage{}, fmt.Errorf("%s %q: pages read have checksum %s, position says %s", what, db.name, got, img.Pos.Checksum)
	}
	return img, nil
}
