package replica

import (
	"os"
)

// The rollback journal's companion-file rules: SQLite ends a transaction in
// DELETE mode by deleting the journal, in TRUNCATE mode by truncating it to
// zero, and in PERSIST mode by zeroing its header. The FUSE layer passes
// each of these operations to the DB, which commits before performing it.

// WriteJournalAt writes p at off to the journal open as f and returns the
// bytes written. A write that leaves the journal without its magic number
// ends a transaction in PERSIST mode: it is performed as a commit (see
// commitJournal). The same write also starts a synced transaction, when
// nothing is pending and only the write is performed.
func (db *DB) WriteJournalAt(f *os.File, p []byte, off int64) (int, error) {
	if !isJournalHeaderZeroed(p, off) {
		return f.WriteAt(p, off)
	}
	var n int
	err := db.commitJournal(func() error {
		var err error
		n, err = f.WriteAt(p, off)
		return err
	})
	return n, err
}

// TruncateJournal truncates the journal to size bytes. Truncating it to
// zero ends a transaction in TRUNCATE mode: it is performed as a commit
// (see commitJournal).
func (db *DB) TruncateJournal(size int64) error {
	if size != 0 {
		return os.Truncate(db.JournalPath(), size)
	}
	return db.commitJournal(func() error { return os.Truncate(db.JournalPath(), 0) })
}

// RemoveJournal deletes the journal, which ends a transaction in DELETE
// mode: it is performed as a commit (see commitJournal).
func (db *DB) RemoveJournal() error {
	return db.commitJournal(func() error { return os.Remove(db.JournalPath()) })
}

// commitJournal ends a rollback-journal transaction; finalize performs the
// operation on the real journal that ends it. If pages changed since the
// last commit, they become one LTX file, durable before finalize runs and
// before the position moves. A rollback (pages written back to what they
// were) produces nothing.
//
// If writing the LTX file fails, finalize does not run, so SQLite sees its
// commit fail and its journal still in place.
func (db *DB) commitJournal(finalize func() error) error {
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

// isJournalHeaderZeroed reports whether a write of p at off leaves the
// journal without its magic number.
func isJournalHeaderZeroed(p []byte, off int64) bool {
	if off != 0 || len(p) < 8 {
		return false
	}
	return !isJournalMagic(p[:8])
}
