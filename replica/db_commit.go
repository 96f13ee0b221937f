package replica

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"time"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
)

// CommitJournal ends a rollback-journal transaction. The FUSE layer calls
// it when SQLite deletes the journal (DELETE), truncates it to zero
// (TRUNCATE) or zeroes its header (PERSIST); finalize performs that
// operation on the real journal. If pages changed since the last commit,
// they become one LTX file, durable before finalize runs and before the
// position moves. A rollback (pages written back to what they were)
// produces nothing.
//
// If writing the LTX file fails, finalize does not run, so SQLite sees its
// commit fail and its journal still in place.
func (db *DB) CommitJournal(finalize func() error) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return ErrClosed
	}
	if err := db.commit(); err != nil {
		db.commitFailed(err)
		return err
	}
	if finalize == nil {
		return nil
	}
	return finalize()
}

// commit turns the pages written to the database file since the last
// commit into an LTX file. db.mu must be held.
func (db *DB) commit() error {
	if len(db.dirty) == 0 && !db.resized {
		return nil
	}
	size, err := db.Size()
	if err != nil {
		return err
	}
	if db.pageSize == 0 {
		if size != 0 {
			return fmt.Errorf("database %q has %d bytes but no page size", db.name, size)
		}
		db.resetDirty()
		return nil
	}
	if size%int64(db.pageSize) != 0 {
		return fmt.Errorf("database %q: size %d is not a whole number of %d-byte pages", db.name, size, db.pageSize)
	}
	pgnos := make([]uint32, 0, len(db.dirty))
	for pgno := range db.dirty {
		pgnos = append(pgnos, pgno)
	}
	if err := db.commitTxn(uint32(size/int64(db.pageSize)), pgnos, db.readDBPage); err != nil {
		return err
	}
	db.resetDirty()
	return nil
}

func (db *DB) readDBPage(pgno uint32, buf []byte) error {
	_, err := db.f.ReadAt(buf, int64(pgno-1)*int64(db.pageSize))
	if errors.Is(err, io.EOF) {
		clear(buf) // beyond the end of the file: a page never written
		return nil
	}
	return err
}

// commitTxn writes one LTX file for a transaction that leaves the database
// at pageN pages and may have changed the pages in written; read returns
// a page's new contents. Pages that read as they were are left out, pages
// that appeared at the end are added, and the first transaction holds
// every page (a snapshot). A transaction that changed nothing (a rollback)
// writes nothing. db.mu must be held.
func (db *DB) commitTxn(pageN uint32, written []uint32, read func(pgno uint32, buf []byte) error) error {
	oldN := db.chk.PageN()
	snapshot := db.pos.TXID == 0
	lock := checksum.LockPgno(db.pageSize)

	candidates := make(map[uint32]struct{}, len(written))
	for _, pgno := range written {
		if pgno <= pageN && pgno <= oldN {
			candidates[pgno] = struct{}{}
		}
	}
	from := oldN + 1
	if snapshot {
		from = 1
	}
	for pgno := from; pgno <= pageN; pgno++ {
		candidates[pgno] = struct{}{}
	}
	delete(candidates, lock)
	pgnos := make([]uint32, 0, len(candidates))
	for pgno := range candidates {
		pgnos = append(pgnos, pgno)
	}
	sort.Slice(pgnos, func(i, j int) bool { return pgnos[i] < pgnos[j] })

	var (
		pages []ltx.Page
		sums  []checksum.PageSum
	)
	for _, pgno := range pgnos {
		data := make([]byte, db.pageSize)
		if err := read(pgno, data); err != nil {
			return fmt.Errorf("read page %d: %w", pgno, err)
		}
		sum := checksum.Page(pgno, data)
		if !snapshot && pgno <= oldN && sum == db.chk.PageChecksum(pgno) {
			continue // unchanged: written back by a rollback, or rewritten as it was
		}
		pages = append(pages, ltx.Page{Pgno: pgno, Data: data})
		sums = append(sums, checksum.PageSum{Pgno: pgno, Sum: sum})
	}
	if len(pages) == 0 && pageN == oldN {
		return nil // nothing changed
	}
	if pageN == 0 {
		return fmt.Errorf("database %q: a transaction emptied the database", db.name)
	}

	// A demoted or fenced primary refuses here, before any work: nothing
	// is logged, so SQLite sees its commit fail, and the node rolls the
	// transaction back when it steps down.
	if db.canCommit != nil {
		if err := db.canCommit(); err != nil {
			return err
		}
	}
	post := db.chk.Peek(pageN, sums)
	txid := db.pos.TXID + 1
	hdr := ltx.Header{
		PageSize:  db.pageSize,
		Commit:    pageN,
		MinTXID:   txid,
		MaxTXID:   txid,
		Timestamp: time.Now().UnixMilli(),
	}
	if !snapshot {
		hdr.PreApplyChecksum = db.pos.Checksum
	}
	// The check is made again once the file is durable: the process may
	// have been stopped since the check above (a frozen VM, SIGSTOP, a
	// long pause) until its lease was gone and another node took over.
	// Nothing was published yet, so the file is taken back and the
	// commit refused like any other; only the few instructions from the
	// check to the reply remain exposed to such a pause.
	if err := db.log.AppendChecked(hdr, pages, post, db.canCommit); err != nil {
		if errors.Is(err, ErrReadOnly) || errors.Is(err, ErrFenced) {
			return err
		}
		return fmt.Errorf("commit txid %s: %w", txid, err)
	}
	db.chk.Apply(pageN, sums)
	db.pos = ltx.Pos{TXID: txid, Checksum: post}
	db.publish()
	db.logger.Debug("commit", slog.String(LogKeyTXID, txid.String()), slog.Int("pages", len(pages)),
		slog.Uint64("commit", uint64(pageN)), slog.String(LogKeyChecksum, post.String()))
	return nil
}

// commitFailed logs a commit that could not be made and reports it to the
// store's owner, unless it was refused because the node is not (or no
// longer safely) the primary, which is not a failure of the node.
func (db *DB) commitFailed(err error) {
	if errors.Is(err, ErrReadOnly) || errors.Is(err, ErrFenced) {
		db.logger.Warn("commit refused; the transaction is not acknowledged and will be rolled back", slog.Any(LogKeyError, err))
		return
	}
	db.logger.Error("commit failed; the transaction is not acknowledged", slog.Any(LogKeyError, err))
	if db.onError != nil {
		db.onError(err)
	}
}

func (db *DB) resetDirty() {
	clear(db.dirty)
	db.resized = false
}
