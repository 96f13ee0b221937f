package replica

import (
	"errors"
	"fmt"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
)

var (
	// ErrNotPageWrite is returned by DB.WriteAt when a write to a database
	// file is not one whole, page-aligned page. SQLite never does that;
	// copying a file into the mount does (load a file with sqlite3's .restore).
	ErrNotPageWrite = errors.New("write is not a whole, page-aligned database page")

	// ErrNotSQLite is returned when a database file does not start with a
	// valid SQLite header.
	ErrNotSQLite = errors.New("not a SQLite database")

	// ErrInvalidDatabase is returned by CopyDatabase and Store.Import for a
	// file that is not a whole, sound SQLite database; the error says what
	// was wrong and what to do. Nothing was changed.
	ErrInvalidDatabase = errors.New("invalid database file")

	// ErrJournalModeBusy is returned by Store.Import when the database is
	// in WAL mode with connections open and the imported file is in
	// rollback-journal mode: as with PRAGMA journal_mode=DELETE, leaving
	// WAL needs every other connection closed. Nothing was changed.
	ErrJournalModeBusy = errors.New("leaving WAL mode needs every connection to the database closed")

	// ErrDatabaseNotFound is returned for a database the store does not have.
	ErrDatabaseNotFound = errors.New("database not found")

	// ErrDatabaseExists is returned by Store.CreateDB for a name in use.
	ErrDatabaseExists = errors.New("database already exists")

	// ErrInvalidName is returned for a database name the store cannot hold:
	// empty, hidden, or ending in a suffix SQLite uses for its own files.
	ErrInvalidName = errors.New("invalid database name")

	// ErrChecksumMismatch is returned (wrapped in a *ChecksumMismatchError)
	// when a database file's checksum differs from its log's position.
	ErrChecksumMismatch = errors.New("database checksum mismatch")

	// ErrReadOnly is returned for a write to a database on a replica:
	// writes go to the primary.
	ErrReadOnly = errors.New("database is read-only on a replica")

	// ErrFenced is returned for a commit on a primary whose lease was not
	// renewed in time: it stops writing before the lease can expire and
	// another node take over.
	ErrFenced = errors.New("commit refused: the primary lease was not renewed in time")

	// ErrSyncTimeout is returned for a commit on a primary with
	// lease.sync-replicas set that too few candidates acknowledged within
	// lease.sync-timeout (with lease.sync-fallback: fail). The transaction
	// is taken back: the primary's log and position are as before it, and
	// SQLite, seeing its commit fail with an I/O error, rolls it back.
	ErrSyncTimeout = errors.New("commit not acknowledged by enough candidates within lease.sync-timeout")

	// ErrNotPrimary is returned for what only the primary can do.
	ErrNotPrimary = errors.New("this node is not the primary")

	// ErrNoCandidate is returned by a handoff with no candidate to take
	// the lease.
	ErrNoCandidate = errors.New("no candidate to hand off to")

	// ErrNoHeartbeat ends a replication stream that stayed silent past
	// the heartbeat timeout: the primary or the network to it is down.
	ErrNoHeartbeat = errors.New("no heartbeat from the primary")

	// ErrClosed is returned by operations on a closed database.
	ErrClosed = errors.New("database closed")

	// ErrCorruptLTX matches errors about a damaged LTX file; the error
	// names the file.
	ErrCorruptLTX = ltx.ErrCorrupt
)

// ChecksumMismatchError reports a database whose file does not match the
// position its log records.
type ChecksumMismatchError struct {
	DB   string            // database name
	Path string            // database file
	TXID uint64            // the log's last TXID
	Want checksum.Checksum // the log's post-apply checksum
	Got  checksum.Checksum // full recompute of the file
}

func (e *ChecksumMismatchError) Error() string {
	return fmt.Sprintf("database %q: checksum of %s is %s but its ltx log ends at txid %016x with checksum %s",
		e.DB, e.Path, e.Got, e.TXID, e.Want)
}

func (e *ChecksumMismatchError) Unwrap() error { return ErrChecksumMismatch }
