package replica

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"time"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
)

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
	if db.pos.TXID == 0 {
		if err := db.checkFirstCommit(size); err != nil {
			return err
		}
		if size == 0 { // a first transaction rolled back: no page size yet
			db.pageSize, db.chk = 0, checksum.NewTable(0)
			db.resetDirty()
			return nil
		}
	}
	pgnos := make([]uint32, 0, len(db.dirty))
	for pgno := range db.dirty {
		pgnos = append(pgnos, pgno)
	}
	if err := db.commitTxn(uint32(size/int64(db.pageSize)), pgnos, db.readDBPage, syncNow); err != nil {
		return err
	}
	db.resetDirty()
	return nil
}

// checkFirstCommit checks that the first transaction of a database of
// size bytes leaves a SQLite header on page 1 declaring the page size its
// first write set. db.mu held.
func (db *DB) checkFirstCommit(size int64) error {
	if size == 0 {
		return nil
	}
	sz, err := readPageSize(db.f)
	if err != nil {
		return fmt.Errorf("database %q: first transaction: %w", db.name, err)
	}
	if sz != db.pageSize {
		return fmt.Errorf("%w: database %q: page 1 declares %d-byte pages, the transaction wrote %d-byte pages",
			ErrNotPageWrite, db.name, sz, db.pageSize)
	}
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

// durability says when a commit's LTX file is made durable.
type durability int

const (
	// syncNow: before the commit returns. A rollback-journal commit is
	// durable in the database file once SQLite deletes, truncates or
	// zeroes its journal, so its LTX file must be too.
	syncNow durability = iota
	// syncDeferred: when SQLite next asks for durability (an fsync of the
	// WAL or the database file), before that fsync. A WAL commit is
	// durable only once SQLite syncs the WAL: at every commit with
	// synchronous=FULL, at checkpoints with NORMAL.
	syncDeferred
)

// commitTxn writes one LTX file for a transaction that leaves the database
// at pageN pages and may have changed the pages in written; read returns
// a page's new contents. Pages that read as they were are left out, pages
// that appeared at the end are added, and the first transaction holds
// every page (a snapshot). A transaction that changed nothing (a rollback)
// writes nothing. db.mu must be held.
func (db *DB) commitTxn(pageN uint32, written []uint32, read func(pgno uint32, buf []byte) error, when durability) error {
	start := time.Now()
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
	var prevLast ltx.Header // what a take-back returns the log to
	if db.sync != nil {
		prevLast = db.log.LastHeader()
	}
	if db.reserveStamp != nil {
		hdr.Stamp = db.reserveStamp()
	}
	appendFile := db.log.AppendChecked
	if when == syncDeferred {
		appendFile = db.log.AppendDeferred
	}
	if err := appendFile(hdr, pages, post, db.canCommit); err != nil {
		if db.sync != nil {
			db.cancelStamp(hdr.Stamp)
		}
		if errors.Is(err, ErrReadOnly) || errors.Is(err, ErrFenced) {
			return err
		}
		return fmt.Errorf("commit txid %s: %w", txid, err)
	}
	pos := ltx.Pos{TXID: txid, Checksum: post}
	if db.sync != nil {
		if err := db.awaitSync(pos, hdr.Stamp, prevLast); err != nil {
			return err
		}
	} else {
		db.pos = pos
		db.publish()
	}
	db.chk.Apply(pageN, sums)
	db.diskRoomAgain()
	db.metrics.committed(db.name, time.Since(start))
	db.logger.Debug("commit", slog.String(LogKeyTXID, txid.String()), slog.Int("pages", len(pages)),
		slog.Uint64("commit", uint64(pageN)), slog.String(LogKeyChecksum, post.String()))
	return nil
}

// cancelStamp gives up the place in the publish order reserved for stamp
// s, and wakes the streams, which it may have held back (see
// syncTracker.watermark).
func (db *DB) cancelStamp(s ltx.Stamp) {
	db.sync.cancel(s)
	if db.onChange != nil {
		db.onChange()
	}
}

// awaitSync publishes the position pos of a transaction whose LTX file is
// durable, stamped stamp, so that the stream sends it, and waits until enough candidates
// hold it (lease.sync-replicas). If they do not in time, or the node may
// no longer commit once they do (fenced or stepping down while it
// waited), the transaction is taken back: the position returns to what it
// was, the LTX file is removed, and the commit fails, so SQLite rolls it
// back (from the journal, or by dropping its WAL frames). Nothing of it
// stays on the primary; a replica that received it meanwhile finds its
// history differs at the next transaction and is sent a snapshot, its
// state kept aside. db.mu held: the database's next commit waits behind
// this one; other databases' commits wait alongside it.
func (db *DB) awaitSync(pos ltx.Pos, stamp ltx.Stamp, prevLast ltx.Header) error {
	prev := db.pos
	w, err := db.sync.publish(db.name, pos, stamp, func() {
		db.pos = pos
		db.publish()
	})
	if err == nil && w != nil {
		err = db.sync.await(w, prev)
	}
	if err == nil && db.canCommit != nil {
		err = db.canCommit()
	}
	if err == nil {
		return nil
	}
	if db.pos != prev { // published
		db.pos = prev
		db.publish()
	}
	if terr := db.log.TakeBack(pos.TXID, prev, prevLast); terr != nil {
		// The file stays while the position went back: the database
		// no longer matches its log, and the node must stop for it.
		return fmt.Errorf("commit txid %s: %v, and taking it back failed: %w", pos.TXID, err, terr)
	}
	db.logger.Warn("commit taken back: not acknowledged by enough candidates in time, or the node stopped being the primary",
		slog.String(LogKeyTXID, pos.TXID.String()), slog.Any(LogKeyError, err))
	return err
}

// commitFailed logs a commit that could not be made and reports it to the
// store's owner, unless it was refused because the node is not (or no
// longer safely) the primary, which is not a failure of the node. A commit
// that failed for lack of space is logged once per episode of a full disk
// (see DiskFull); it is still reported.
func (db *DB) commitFailed(err error) {
	if errors.Is(err, ErrSyncTimeout) {
		return // logged by awaitSync; the node goes on as primary
	}
	if errors.Is(err, ErrReadOnly) || errors.Is(err, ErrFenced) {
		if errors.Is(err, ErrFenced) {
			db.metrics.fencedCommit()
		}
		db.logger.Warn("commit refused; the transaction is not acknowledged and will be rolled back", slog.Any(LogKeyError, err))
		return
	}
	if IsDiskFull(err) {
		db.DiskFull(err)
	} else {
		db.logger.Error("commit failed; the transaction is not acknowledged", slog.Any(LogKeyError, err))
	}
	if db.onError != nil {
		db.onError(err)
	}
}

// walCommitFailed handles a WAL commit that could not be made: the write
// that completed its commit frame fails, so SQLite reports the commit
// failed and never publishes it in the WAL index, but the frames are in
// the WAL file and valid. They are cut off, back to the end of the last
// commit in the log, so that no later recovery of the WAL index from the
// file (a connection opening after the others closed or crashed) can bring
// back a transaction the application was told failed. Only SQLite's writer,
// blocked in this write, writes the WAL, and readers read no frame past
// the last commit. The bytes that completed the commit are not in the
// kernel's page cache either: it drops the pages of a failed write.
// db.mu held.
func (db *DB) walCommitFailed(err error) {
	db.commitFailed(err)
	if db.wal.valid {
		db.wal.cut = err
		db.cutWAL()
	}
}

// refuseCutRetry fails a WAL write that continues one whose commit failed
// (see walCommitFailed) with the same error. The kernel splits a write
// that crosses a page boundary, so the failed piece may follow one that
// went through; SQLite then writes the rest again, which would otherwise
// succeed over the cut frames and let SQLite publish a commit whose frames
// are gone. SQLite's next transaction starts writing at the end of the
// last commit (or at 0, with a new WAL header), which ends the refusal.
// db.mu held.
func (db *DB) refuseCutRetry(off int64) error {
	err := db.wal.cut
	if err == nil {
		return nil
	}
	if off == db.wal.end || off == 0 {
		db.wal.cut = nil
		return nil
	}
	db.cutWAL()
	return err
}

// cutWAL truncates the WAL file to the end of the last logged commit.
// db.mu held.
func (db *DB) cutWAL() {
	if fi, err := os.Stat(db.WALPath()); err != nil || fi.Size() <= db.wal.end {
		return
	}
	if err := os.Truncate(db.WALPath(), db.wal.end); err != nil {
		db.logger.Error("cut the frames of a failed commit off the wal", slog.String(LogKeyPath, db.WALPath()),
			slog.Int64("offset", db.wal.end), slog.Any(LogKeyError, err))
	}
}

func (db *DB) resetDirty() {
	clear(db.dirty)
	db.resized = false
}
