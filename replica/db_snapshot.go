package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

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
	if err := db.lockCommitted(ctx, what); err != nil {
		return committedImage{}, err
	}
	defer db.mu.Unlock()

	if db.pos.TXID == 0 {
		return committedImage{}, fmt.Errorf("%s %q: no transaction yet", what, db.name)
	}
	img := committedImage{Pos: db.pos, PageSize: db.pageSize, PageN: db.chk.PageN()}

	frames, wal, err := db.committedFrames()
	if err != nil {
		return committedImage{}, err
	}
	if wal != nil {
		defer wal.Close()
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

// lockCommitted takes db.mu once no rollback-mode transaction is in
// progress (until it ends, the file may hold its uncommitted pages), and
// returns with it held; what names the caller in errors.
func (db *DB) lockCommitted(ctx context.Context, what string) error {
	for {
		db.mu.Lock()
		if db.closed {
			db.mu.Unlock()
			return ErrClosed
		}
		if active, err := db.journalActive(); err != nil {
			db.mu.Unlock()
			return err
		} else if !active {
			return nil
		}
		db.mu.Unlock()
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s %q: a transaction is writing: %w", what, db.name, context.Cause(ctx))
		case <-time.After(time.Millisecond):
		}
	}
}

// committedFrames returns where each page of the WAL's committed frames
// is (its last frame wins), with the WAL open for the caller to read and
// close; no frames and a nil file when the WAL holds none. db.mu held.
func (db *DB) committedFrames() (map[uint32]int64, *os.File, error) {
	frames := map[uint32]int64{}
	if !db.wal.valid || db.wal.end <= walHeaderSize {
		return frames, nil, nil
	}
	f, err := os.Open(db.WALPath())
	if err != nil {
		return nil, nil, err
	}
	txns, err := readWALTxns(f, db.wal.end, db.wal.hdr, walHeaderSize, db.wal.hdr.cksum)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	for _, txn := range txns {
		for _, fr := range txn.frames {
			frames[fr.pgno] = fr.offset + walFrameHeaderSize
		}
	}
	return frames, f, nil
}

// CopySnapshot copies the database as readers see it at its position into
// dst, an empty file on the same filesystem (the file with the WAL's
// committed frames laid over it, exactly its pages, the lock page as the
// file has it), and returns what the copy holds. Commits and applies wait
// only while the copy is made: the kernel copies the file's bytes without
// them passing through this process, so a copy costs a fraction of reading
// and encoding the pages; EncodeSnapshot then encodes it without any lock.
// The copy is not checked against the position's checksum here: the
// replica that decodes the snapshot checks every page against it.
func (db *DB) CopySnapshot(ctx context.Context, dst *os.File, stamping snapshotStamp) (ltx.Header, checksum.Checksum, error) {
	if err := db.lockCommitted(ctx, "snapshot"); err != nil {
		return ltx.Header{}, 0, err
	}
	defer db.mu.Unlock()
	if db.pos.TXID == 0 {
		return ltx.Header{}, 0, fmt.Errorf("snapshot %q: no transaction yet", db.name)
	}
	hdr := ltx.Header{PageSize: db.pageSize, Commit: db.chk.PageN(), MinTXID: 1, MaxTXID: db.pos.TXID, Timestamp: time.Now().UnixMilli()}
	// The stamp of the newest transaction it holds: a replica that
	// applies it holds that one (see Store.Stamp).
	if last := db.log.LastHeader(); last.MaxTXID == hdr.MaxTXID && stamping == snapshotStamped {
		hdr.Stamp = last.Stamp
	}
	size := int64(hdr.Commit) * int64(hdr.PageSize)
	fsize, err := db.Size()
	if err != nil {
		return ltx.Header{}, 0, err
	}
	if err := copyRange(dst, db.f, min(size, fsize)); err != nil {
		return ltx.Header{}, 0, fmt.Errorf("snapshot %q: copy the database: %w", db.name, err)
	}
	if err := dst.Truncate(size); err != nil {
		return ltx.Header{}, 0, err
	}
	frames, wal, err := db.committedFrames()
	if err != nil {
		return ltx.Header{}, 0, err
	}
	if wal != nil {
		defer wal.Close()
		buf := make([]byte, hdr.PageSize)
		for pgno, off := range frames {
			if pgno > hdr.Commit {
				continue
			}
			if _, err := wal.ReadAt(buf, off); err != nil {
				return ltx.Header{}, 0, err
			}
			if _, err := dst.WriteAt(buf, int64(pgno-1)*int64(hdr.PageSize)); err != nil {
				return ltx.Header{}, 0, err
			}
		}
	}
	return hdr, db.pos.Checksum, nil
}

// copyRange copies the first n bytes of src to the start of dst, in the
// kernel (copy_file_range) where it can, else through a buffer.
func copyRange(dst, src *os.File, n int64) error {
	var roff, woff int64
	for roff < n {
		c, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(min(n-roff, 1<<30)), 0)
		if err != nil || c == 0 {
			if roff == 0 && (errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
				_, err := io.Copy(io.NewOffsetWriter(dst, 0), io.NewSectionReader(src, 0, n))
				return err
			} else if err != nil {
				return err
			}
			return fmt.Errorf("copy stopped at %d of %d bytes", roff, n)
		}
	}
	return nil
}

// EncodeSnapshot writes the copy src that CopySnapshot made, with hdr and
// post as it returned them, to w as an LTX snapshot (every page but the
// lock page; see ltx.SnapshotWriter for what it compresses), reading it in
// large blocks. It takes no lock.
func EncodeSnapshot(ctx context.Context, src *os.File, hdr ltx.Header, post checksum.Checksum, w io.Writer) error {
	enc, err := ltx.NewSnapshotWriter(w, hdr)
	if err != nil {
		return err
	}
	lock := checksum.LockPgno(hdr.PageSize)
	ps := int64(hdr.PageSize)
	block := make([]byte, max(ps, 1<<20/ps*ps))
	for pgno := uint32(1); pgno <= hdr.Commit; {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		n := min(int64(hdr.Commit-pgno+1)*ps, int64(len(block)))
		if _, err := src.ReadAt(block[:n], int64(pgno-1)*ps); err != nil {
			return fmt.Errorf("read snapshot copy: %w", err)
		}
		for off := int64(0); off < n; off, pgno = off+ps, pgno+1 {
			if pgno == lock {
				continue
			}
			if err := enc.Page(pgno, block[off:off+ps]); err != nil {
				return err
			}
		}
	}
	return enc.Close(post)
}
