package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
)

// Gate keeps SQLite connections out of a database while the node changes
// its files underneath them, and makes them forget what they cached. The
// FUSE filesystem implements it; a nil Gate means no connections exist
// (the mount is not up).
type Gate interface {
	// Lock waits until no connection is in a transaction on the database
	// and keeps new ones out until unlock is called. wal says whether the
	// database is in WAL mode, whose connections hold other locks.
	Lock(ctx context.Context, db string, wal bool) (unlock func() error, err error)
	// Invalidate makes connections drop what they cache of the database:
	// pages, attributes and the WAL index. It is called without db locks.
	Invalidate(db string) error
	// Forget drops the kernel's cached names of a database that was
	// created or deleted underneath the mount.
	Forget(db string) error
}

// PosMismatchError is returned by Apply when an LTX file does not apply to
// the database's position: the replica and the primary disagree.
type PosMismatchError struct {
	DB   string
	Pos  ltx.Pos // the database's position
	Want ltx.Pos // the file's pre-apply position
}

func (e *PosMismatchError) Error() string {
	return fmt.Sprintf("database %q is at %s, ltx file applies to %s", e.DB, e.Pos, e.Want)
}

// Apply applies the LTX file at path to the database: a transaction that
// continues the database's position, or a snapshot that replaces it. The
// file is verified end to end first; a damaged file returns an error
// wrapping ErrCorruptLTX and changes nothing. The file moves into the
// database's log (durably, before the database file changes, so a crash
// in between is redone at the next start); then, with gate keeping readers
// out, the pages are written, the file truncated to the commit size,
// synced, and what readers cache invalidated. Readers never see half a
// transaction.
func (db *DB) Apply(ctx context.Context, path string, gate Gate) error {
	return db.ApplyAll(ctx, []string{path}, gate)
}

// ApplyAll applies LTX files in order, as Apply does, with readers kept
// out once for all of them and the database file synced once: a replica
// that fell behind catches up in fewer, larger steps. The files must chain
// (each applies to the position the one before leaves); a file that does
// not changes nothing.
//
// The space the database file grows into is allocated before anything
// changes, so a full disk fails the apply cleanly (an error IsDiskFull
// matches) and a later call retries it. If an apply failed anyway after
// its file entered the log, the next call finishes that file first, and
// drops it from paths if the primary sent it again.
func (db *DB) ApplyAll(ctx context.Context, paths []string, gate Gate) error {
	start := time.Now()
	hdrs := make([]ltx.Header, len(paths))
	posts := make([]checksum.Checksum, len(paths))
	for i, path := range paths {
		d, err := ltx.VerifyFile(path)
		if err != nil {
			return err
		}
		hdrs[i], posts[i] = d.Header, d.PostApplyChecksum
	}
	if err := db.finishApply(ctx, gate); err != nil {
		return err
	}
	db.mu.Lock()
	if db.closed {
		db.mu.Unlock()
		return ErrClosed
	}
	pos := db.pos
	// A file this node finished applying above, sent again by a primary
	// that was told the position before it.
	if last := db.log.LastHeader(); len(hdrs) > 0 && hdrs[0].MinTXID == last.MinTXID && hdrs[0].MaxTXID == pos.TXID &&
		posts[0] == pos.Checksum && !hdrs[0].IsSnapshot() {
		hdrs, posts, paths = hdrs[1:], posts[1:], paths[1:]
	}
	var grow int64
	for i, hdr := range hdrs {
		if !hdr.IsSnapshot() && hdr.PreApplyPos() != pos {
			db.mu.Unlock()
			return &PosMismatchError{DB: db.name, Pos: pos, Want: hdr.PreApplyPos()}
		}
		pos = ltx.Pos{TXID: hdr.MaxTXID, Checksum: posts[i]}
		grow = max(grow, int64(hdr.Commit)*int64(hdr.PageSize))
	}
	if len(hdrs) == 0 {
		db.mu.Unlock()
		return nil
	}
	if err := reserve(db.f, grow); err != nil {
		db.mu.Unlock()
		return fmt.Errorf("apply ltx %s: make room for the database to grow to %d bytes: %w", hdrs[0].MaxTXID, grow, err)
	}
	unlock, err := db.lockGate(ctx, gate)
	if err != nil {
		db.mu.Unlock()
		return err
	}
	for i := 0; i < len(paths) && err == nil; i++ {
		err = db.applyLocked(paths[i], hdrs[i], posts[i])
	}
	if serr := db.f.Sync(); err == nil {
		err = serr
	}
	db.mu.Unlock()
	if err = db.reopenGate(gate, unlock, err); err == nil {
		db.metrics.applied(hdrs, time.Since(start))
	}
	return err
}

// finishApply applies the newest file of the log again if the database is
// not at the log's position: an apply moved the file into the log and then
// failed to write the database file (the disk filled up on a filesystem
// that cannot allocate ahead, or an I/O error). Writing a file's pages and
// truncating to its commit size gives the same result over a partly
// written database, so the replica resumes from where it was, without a
// snapshot.
func (db *DB) finishApply(ctx context.Context, gate Gate) error {
	db.mu.Lock()
	if db.closed || db.log.Pos() == db.pos {
		db.mu.Unlock()
		return nil
	}
	hdr := db.log.LastHeader()
	if err := reserve(db.f, int64(hdr.Commit)*int64(hdr.PageSize)); err != nil {
		db.mu.Unlock()
		return fmt.Errorf("finish applying ltx %s: %w", hdr.MaxTXID, err)
	}
	unlock, err := db.lockGate(ctx, gate)
	if err != nil {
		db.mu.Unlock()
		return err
	}
	want := db.log.Pos()
	db.logger.Info("finishing the apply of an ltx file that an earlier apply could not write",
		slog.String(LogKeyTXID, hdr.MaxTXID.String()), slog.String("from", db.pos.String()))
	if err = db.applyFile(db.log.Path(hdr.MinTXID, hdr.MaxTXID), true); err == nil {
		if got := db.chk.Sum(); got != want.Checksum {
			err = fmt.Errorf("finish applying ltx %s: database checksum %s after apply, file says %s", hdr.MaxTXID, got, want.Checksum)
		} else {
			db.pos = want
			db.publish()
		}
	} else {
		err = fmt.Errorf("finish applying ltx %s: %w", hdr.MaxTXID, err)
	}
	db.mu.Unlock()
	return db.reopenGate(gate, unlock, err)
}

// lockGate keeps connections out with gate, if set. db.mu held.
func (db *DB) lockGate(ctx context.Context, gate Gate) (unlock func() error, err error) {
	if gate == nil {
		return nil, nil
	}
	if unlock, err = gate.Lock(ctx, db.name, db.isWAL()); err != nil {
		return nil, fmt.Errorf("keep readers out: %w", err)
	}
	return unlock, nil
}

// reopenGate makes connections drop what they cached of the database and
// lets them back in; it returns err, or the first error of its own. It
// runs after db.mu is released: invalidation talks to the kernel, which
// may be waiting on a request that needs db.mu.
func (db *DB) reopenGate(gate Gate, unlock func() error, err error) error {
	if gate == nil {
		return err
	}
	if ierr := gate.Invalidate(db.name); err == nil {
		err = ierr
	}
	if uerr := unlock(); err == nil {
		err = uerr
	}
	return err
}

// applyLocked logs and applies a verified LTX file; the caller syncs the
// database file. db.mu held, readers kept out.
func (db *DB) applyLocked(path string, hdr ltx.Header, post checksum.Checksum) error {
	if err := db.log.Adopt(path, hdr, post); err != nil {
		return fmt.Errorf("adopt ltx: %w", err)
	}
	if err := db.applyFile(db.log.Path(hdr.MinTXID, hdr.MaxTXID), false); err != nil {
		return fmt.Errorf("apply ltx %s: %w", hdr.MaxTXID, err)
	}
	if got := db.chk.Sum(); got != post {
		return fmt.Errorf("apply ltx %s: database checksum %s after apply, file says %s", hdr.MaxTXID, got, post)
	}
	db.pos = ltx.Pos{TXID: hdr.MaxTXID, Checksum: post}
	db.publish()
	db.logger.Debug("applied", slog.String(LogKeyTXID, hdr.MaxTXID.String()), slog.Bool("snapshot", hdr.IsSnapshot()))
	return nil
}

// isWAL reports whether the database file's header says WAL mode.
func (db *DB) isWAL() bool {
	b := make([]byte, 2)
	if _, err := db.f.ReadAt(b, 18); err != nil {
		return false
	}
	return b[0] == 2 || b[1] == 2
}

// applyFile writes the pages of the LTX file at path into the database
// file, page by page, and updates the checksum table. Any WAL content is
// moved into the database file first, so the WAL never shadows what the
// file now holds. db.mu held; readers kept out.
func (db *DB) applyFile(path string, sync bool) error {
	if err := db.checkpointWAL(); err != nil {
		return err
	}
	var tbl *checksum.Table
	hdr, err := writeLTX(path, db.f, func(hdr ltx.Header) error {
		tbl = db.chk
		if hdr.IsSnapshot() || db.pageSize != hdr.PageSize {
			tbl = checksum.NewTable(hdr.PageSize)
		}
		return nil
	}, func(pgno uint32, data []byte) { tbl.Set(pgno, data) })
	if err != nil {
		return err
	}
	tbl.Truncate(hdr.Commit)
	if sync {
		if err := db.f.Sync(); err != nil {
			return err
		}
	}
	db.pageSize, db.chk = hdr.PageSize, tbl
	return nil
}

// writeLTX writes the pages of the LTX file at path into out and truncates
// out to the file's commit size. begin sees the header before any page is
// written; page sees each page after it is.
func writeLTX(path string, out *os.File, begin func(ltx.Header) error, page func(pgno uint32, data []byte)) (ltx.Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return ltx.Header{}, err
	}
	defer f.Close()
	dec, err := ltx.NewDecoder(f)
	if err != nil {
		return ltx.Header{}, err
	}
	hdr := dec.Header()
	if err := begin(hdr); err != nil {
		return hdr, err
	}
	buf := make([]byte, hdr.PageSize)
	for {
		pgno, err := dec.Next(buf)
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return hdr, err
		}
		if _, err := out.WriteAt(buf, int64(pgno-1)*int64(hdr.PageSize)); err != nil {
			return hdr, err
		}
		page(pgno, buf)
	}
	if _, err := dec.Close(); err != nil {
		return hdr, err
	}
	return hdr, out.Truncate(int64(hdr.Commit) * int64(hdr.PageSize))
}

// checkpointWAL copies the WAL's committed frames into the database file
// and empties the WAL. Only the node may do this, with connections kept
// out (or none possible). db.mu held.
func (db *DB) checkpointWAL() error {
	if !db.wal.valid || db.wal.end <= walHeaderSize {
		return nil
	}
	f, err := os.OpenFile(db.WALPath(), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	txns, err := readWALTxns(f, db.wal.end, db.wal.hdr, walHeaderSize, db.wal.hdr.cksum)
	if err != nil {
		return err
	}
	buf := make([]byte, db.wal.hdr.pageSize)
	for _, txn := range txns {
		for _, fr := range txn.frames {
			if _, err := f.ReadAt(buf, fr.offset+walFrameHeaderSize); err != nil {
				return err
			}
			if _, err := db.f.WriteAt(buf, int64(fr.pgno-1)*int64(len(buf))); err != nil {
				return err
			}
		}
		if err := db.f.Truncate(int64(txn.commit) * int64(len(buf))); err != nil {
			return err
		}
	}
	if err := db.f.Sync(); err != nil {
		return err
	}
	if err := f.Truncate(0); err != nil {
		return err
	}
	db.wal.reset()
	return nil
}

// redo applies the log's newest files again if the database, whose
// checksum is sum, is at the position one of them applies to: the node
// stopped after the files were logged and before the database file had
// them (a crash between an apply's two steps), or the machine crashed and
// the WAL lost transactions whose LTX files it kept (see syncDeferred).
// The files are searched newest first. A snapshot applies only if it is
// the newest file or the database is empty (zero sum): a database changed
// behind the node's back must not be silently replaced by an older one.
// db.mu held or not yet shared.
func (db *DB) redo(sum checksum.Checksum) (bool, error) {
	files := db.log.Files()
	from := -1
	for i := len(files) - 1; i >= 0; i-- {
		hdr, err := ltx.ReadHeader(db.log.Path(files[i].MinTXID, files[i].MaxTXID))
		if err != nil {
			return false, err
		}
		if (hdr.IsSnapshot() && (sum == 0 || i == len(files)-1)) || (!hdr.IsSnapshot() && hdr.PreApplyChecksum == sum) {
			from = i
			break
		}
	}
	if from < 0 {
		return false, nil
	}
	db.logger.Info("applying ltx files again: the node stopped before the database had them",
		slog.String("from", files[from].MinTXID.String()), slog.String("to", files[len(files)-1].MaxTXID.String()))
	for _, f := range files[from:] {
		if err := db.applyFile(db.log.Path(f.MinTXID, f.MaxTXID), false); err != nil {
			return true, err
		}
	}
	return true, db.f.Sync()
}
