package replica

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
)

// File names inside a database's directory, as LiteFS lays them out, so a
// LiteFS data directory opens unchanged.
const (
	DatabaseFile = "database"
	JournalFile  = "journal"
	WALFile      = "wal"
	SHMFile      = "shm"
	LTXDir       = "ltx"
)

// DB is one database: its file, its LTX log and its position. The FUSE
// layer passes database reads and writes through it; it validates writes,
// tracks the pages a transaction changes, and turns each commit into one
// LTX file.
type DB struct {
	name   string
	dir    string
	logger *slog.Logger

	mu       sync.Mutex
	f        *os.File
	log      *ltx.Log
	pageSize uint32                  // zero until the first page is written
	chk      *checksum.Table         // checksums of the committed database
	pos      ltx.Pos                 // position of the committed database
	posCopy  atomic.Pointer[ltx.Pos] // pos, readable without mu
	dirty    map[uint32]struct{}     // pages written since the last commit
	resized  bool                    // truncated since the last commit
	closed   bool
	saved    *checksum.Table // the file's table from a clean close; used once at open
	// ownWrite is when this node last changed the file (Unix ns): a file
	// changed after it was changed by someone else (see saveChecksums).
	ownWrite int64

	onError   func(error)  // reports failures the store's owner may stop for
	canCommit func() error // refuses commits on a node that may not write
	onChange  func()       // tells the store the position moved
	metrics   *Metrics     // nil: none
	sync      *syncTracker // nil: asynchronous replication
	// reserveStamp gives a commit its stamp (see Store.reserveStamp); nil:
	// none (zero).
	reserveStamp func() ltx.Stamp

	wal walState

	full diskFull // episodes of a full disk (diskfull.go)
}

// openDB opens the database in dir, recovering from a crash: a hot journal
// left by an interrupted transaction is rolled back, and the file's checksum
// must then equal the log's position. Nothing is changed if it does not.
//
// The newest LTX file, if large, is checked by its ends only (see
// ltx.OpenLogFast): the database's full checksum equal to the position it
// gives confirms both. Anything else (a database that does not match, a
// crash to recover from) is handled with the file read in full, as if
// opened with ltx.OpenLog.
func openDB(name, dir string, logger *slog.Logger) (*DB, error) {
	db, err := openDBWith(name, dir, logger, ltx.OpenLogFast)
	if errors.Is(err, errUnverifiedLog) {
		return openDBWith(name, dir, logger, ltx.OpenLog)
	}
	return db, err
}

// errUnverifiedLog says the database does not match its log's position
// while the log's newest file was checked by its ends only.
var errUnverifiedLog = errors.New("database does not match a position not yet verified")

func openDBWith(name, dir string, logger *slog.Logger, openLog func(string) (*ltx.Log, error)) (_ *DB, err error) {
	db := &DB{
		name:   name,
		dir:    dir,
		logger: logger.With(slog.String(LogKeyDB, name)),
		dirty:  make(map[uint32]struct{}),
	}
	// A newest LTX file that fails verification is either torn (a crash
	// before its sync returned, so never acknowledged) or damaged; recover
	// tells which. Any other failure stops here.
	var torn *ltx.CorruptError
	db.log, err = openLog(filepath.Join(dir, LTXDir))
	if err != nil && (db.log == nil || !errors.As(err, &torn)) {
		return nil, fmt.Errorf("open ltx log of %q: %w", name, err)
	}
	if db.f, err = os.OpenFile(db.path(DatabaseFile), os.O_RDWR|os.O_CREATE, 0o644); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = db.f.Close()
		}
	}()
	defer func() {
		if err == nil {
			pos := db.pos
			db.posCopy.Store(&pos)
		}
	}()
	db.saved = loadChecksums(dir, db.f, db.log.Pos(), db.logger)
	defer func() { db.ownWrite = time.Now().UnixNano() }() // recovery may write
	if err := db.recover(false); err != nil {
		if torn != nil {
			// The file does not match the log without the failed file
			// either: that file held a committed transaction.
			return nil, fmt.Errorf("open ltx log of %q: %w", name, torn)
		}
		return nil, err
	}
	if torn != nil {
		// The database matches the log without the failed files, so
		// their transactions never became durable: torn writes.
		db.logger.Warn("removing torn ltx files left by a crash; their transactions were never made durable",
			slog.Any("files", db.log.Torn()), slog.Any(LogKeyError, torn.Err))
		if err := db.log.DiscardTorn(); err != nil {
			return nil, err
		}
	}
	if err := removeChecksums(dir); err != nil {
		return nil, err
	}
	return db, nil
}

// recover brings the database back to its log's position: it cuts WAL
// transactions the log does not have, rolls back a hot journal, applies
// the newest LTX file again if needed, and fails with a
// *ChecksumMismatchError if the file still differs. live says the mount is
// up: the WAL index stays (connections map it; the caller resets it).
func (db *DB) recover(live bool) error {
	db.pos = db.log.Pos()
	pageSize, err := readPageSize(db.f)
	if err != nil && db.pos.TXID == 0 {
		// A first transaction that outgrew SQLite's page cache may have
		// spilled pages into a new database before page 1: its journal
		// has the page size, and rolls it back below.
		if j, jerr := readHotJournal(db.path(JournalFile), 0); jerr == nil && j != nil {
			pageSize, err = j.pageSize, nil
		} else if jerr == nil && db.zeroFilled() {
			// Extended (ftruncate, a chunk size) before any page was
			// committed: nothing is lost by making it empty again.
			db.logger.Info("database with no transaction holds only zero bytes; making it empty again", slog.String(LogKeyPath, db.Path()))
			err = db.f.Truncate(0)
		}
	}
	if err != nil {
		return fmt.Errorf("database %q: read header of %s: %w", db.name, db.path(DatabaseFile), err)
	}
	if pageSize == 0 {
		pageSize = db.log.LastHeader().PageSize
	}
	tbl, err := db.recompute(pageSize)
	if err != nil {
		return err
	}
	// The WAL index is rebuilt by SQLite from the WAL; no process can have
	// it open while the mount is down, and a stale one must not survive a
	// WAL that recovery cuts.
	if !live {
		if err := os.Remove(db.SHMPath()); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if tbl, err = db.recoverWAL(tbl, pageSize); err != nil {
		return fmt.Errorf("database %q: recover wal: %w", db.name, err)
	}
	if pageSize == 0 {
		pageSize = tbl.PageSize()
	}
	if tbl.Sum() != db.pos.Checksum {
		if db.log.Unverified() && !live {
			// Nothing changed yet: start over with the log verified.
			return errUnverifiedLog
		} else if err := db.log.VerifyNewest(context.Background()); err != nil {
			return fmt.Errorf("database %q: %w", db.name, err)
		}
		j, err := readHotJournal(db.path(JournalFile), pageSize)
		if err != nil {
			return fmt.Errorf("database %q: read journal: %w", db.name, err)
		}
		hot := j != nil
		if hot && j.super != "" {
			if hot, err = db.superJournalExists(j.super); err != nil {
				return fmt.Errorf("database %q: %w", db.name, err)
			}
		}
		switch {
		case j != nil && !hot && !live:
			// SQLite deleted the super-journal of a transaction over
			// several databases, its commit point, but litefs stopped
			// before SQLite finalized this database's journal: the
			// transaction is committed, as plain SQLite would have it.
			if tbl, err = db.commitJournaled(j, tbl, pageSize); err != nil {
				return fmt.Errorf("database %q: log the transaction of a finished super-journal: %w", db.name, err)
			}
		case j != nil:
			if hot {
				db.logger.Info("rolling back the hot journal of an interrupted transaction",
					slog.Int("pages", len(j.pages)), slog.Uint64("db_size", uint64(j.dbSize)))
			} else {
				// A node stepping down cannot log it; its COMMIT never
				// returned, so rolling back loses nothing acknowledged.
				db.logger.Warn("rolling back this database's part of a transaction over several databases that SQLite had committed: the node is stepping down and cannot log it; the other databases of the transaction may keep theirs",
					slog.String("super_journal", j.super))
			}
			if err := j.rollback(db.f); err != nil {
				return fmt.Errorf("database %q: roll back hot journal: %w", db.name, err)
			}
			if pageSize, err = readPageSize(db.f); err != nil {
				return fmt.Errorf("database %q: read header after rollback: %w", db.name, err)
			}
			if tbl, err = db.recompute(pageSize); err != nil {
				return err
			}
		}
	}
	if got := tbl.Sum(); got != db.pos.Checksum {
		db.pageSize, db.chk = pageSize, tbl
		if ok, err := db.redo(got); err != nil {
			return fmt.Errorf("database %q: redo ltx files: %w", db.name, err)
		} else if ok {
			tbl, pageSize = db.chk, db.pageSize
		}
	}
	if got := tbl.Sum(); got != db.pos.Checksum {
		return &ChecksumMismatchError{DB: db.name, Path: db.path(DatabaseFile),
			TXID: uint64(db.pos.TXID), Want: db.pos.Checksum, Got: got}
	}
	// The file matches the log: any journal left is either the journal of
	// a transaction whose LTX file was written (the commit finished) or one
	// that changed nothing. Either way it must not be played back.
	if err := os.Remove(db.path(JournalFile)); err == nil {
		db.logger.Info("removed the journal of a finished transaction", slog.String(LogKeyTXID, db.pos.TXID.String()))
	} else if !os.IsNotExist(err) {
		return err
	}
	db.pageSize, db.chk = pageSize, tbl
	return nil
}

func (db *DB) recompute(pageSize uint32) (*checksum.Table, error) {
	if pageSize == 0 {
		return checksum.NewTable(0), nil
	}
	if saved := db.saved; saved != nil {
		db.saved = nil
		if saved.PageSize() == pageSize {
			db.logger.Debug("checksum table kept at the last close describes the database file as it is; not reading it")
			return saved, nil
		}
	}
	tbl, err := checksum.ReadFile(db.f, pageSize)
	if err != nil {
		return nil, fmt.Errorf("database %q: checksum %s: %w", db.name, db.path(DatabaseFile), err)
	}
	return tbl, nil
}

func (db *DB) path(name string) string { return filepath.Join(db.dir, name) }

// Name returns the database name, as it appears in the mount.
func (db *DB) Name() string { return db.name }

// Path returns the path of the database file in the data directory.
func (db *DB) Path() string { return db.path(DatabaseFile) }

// JournalPath returns the path of the rollback journal in the data directory.
func (db *DB) JournalPath() string { return db.path(JournalFile) }

// WALPath returns the path of the write-ahead log in the data directory.
func (db *DB) WALPath() string { return db.path(WALFile) }

// SHMPath returns the path of the WAL index in the data directory.
func (db *DB) SHMPath() string { return db.path(SHMFile) }

// Log returns the database's LTX log.
func (db *DB) Log() *ltx.Log { return db.log }

// Pos returns the position of the last committed transaction. It never
// waits, even while a commit or an apply is under way.
func (db *DB) Pos() ltx.Pos {
	if p := db.posCopy.Load(); p != nil {
		return *p
	}
	return ltx.Pos{}
}

// PageSize returns the page size; zero before the first write.
func (db *DB) PageSize() uint32 {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.pageSize
}

// publish makes db.pos visible to Pos and tells the store it moved.
// db.mu held.
func (db *DB) publish() {
	db.ownWrite = time.Now().UnixNano()
	pos := db.pos
	db.posCopy.Store(&pos)
	if db.onChange != nil {
		db.onChange()
	}
}

// ReadAt reads from the database file.
func (db *DB) ReadAt(p []byte, off int64) (int, error) {
	return db.f.ReadAt(p, off)
}

// Size returns the database file's size in bytes.
func (db *DB) Size() (int64, error) {
	fi, err := db.f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// WriteAt writes one page to the database file and records it as changed
// by the current transaction. It returns ErrNotPageWrite for anything but
// one whole, page-aligned page of the database's page size. The first
// write to an empty database sets the page size: page 1 declares it in its
// header; a first transaction larger than SQLite's page cache spills
// pages before page 1, in any order, and their length is the page size,
// which page 1's header must then declare.
func (db *DB) WriteAt(p []byte, off int64) (int, error) {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return 0, ErrClosed
	}
	if isZero(p) {
		// SQLite grows a file in chunks (SQLITE_FCNTL_CHUNK_SIZE) by writing
		// zero bytes past its end; that changes no page, only the size.
		if size, err := db.Size(); err != nil {
			return 0, err
		} else if off >= size {
			n, err := db.f.WriteAt(p, off)
			db.ownWrite = time.Now().UnixNano()
			if n > 0 {
				db.resized = true
			}
			return n, err
		}
	}
	if db.pageSize == 0 {
		sz := uint32(len(p))
		if off == 0 {
			sz = headerPageSize(p)
		}
		if !validPageSize(sz) || int(sz) != len(p) || off%int64(sz) != 0 {
			return 0, fmt.Errorf("%w: %d bytes at offset %d of an empty database (SQLite writes whole pages of 512 to 65536 bytes, page 1 with a SQLite header)",
				ErrNotPageWrite, len(p), off)
		}
		db.pageSize = sz
		db.chk = checksum.NewTable(sz)
	}
	if len(p) != int(db.pageSize) || off%int64(db.pageSize) != 0 {
		return 0, fmt.Errorf("%w: %d bytes at offset %d, page size is %d", ErrNotPageWrite, len(p), off, db.pageSize)
	}
	pgno := uint32(off/int64(db.pageSize)) + 1
	if pgno == 1 && headerPageSize(p) != db.pageSize {
		return 0, fmt.Errorf("%w: page 1 would change the page size from %d (changing the page size of an existing database is not supported; import a database with the new page size instead)",
			ErrNotPageWrite, db.pageSize)
	}
	if err := db.checkRoom(pgno, p, off); err != nil {
		return 0, err
	}
	n, err := db.f.WriteAt(p, off)
	db.ownWrite = time.Now().UnixNano() // after: at least the file's change time
	if n > 0 {
		db.dirty[pgno] = struct{}{}
	}
	return n, err
}

// Truncate sets the database file's size, which must be a whole number of
// pages.
func (db *DB) Truncate(size int64) error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return ErrClosed
	}
	// An empty database may be extended before its first page is written
	// (a chunk size); the first commit checks the size against the pages.
	if (db.pageSize == 0 && size != 0 && db.pos.TXID != 0) || (db.pageSize != 0 && size%int64(db.pageSize) != 0) {
		return fmt.Errorf("%w: truncate to %d bytes, page size is %d", ErrNotPageWrite, size, db.pageSize)
	}
	if size == 0 && db.pos.TXID > 0 {
		return fmt.Errorf("%w: truncating a database with committed transactions to zero bytes (to delete a database, remove its file)", ErrNotPageWrite)
	}
	err := db.f.Truncate(size)
	db.ownWrite = time.Now().UnixNano()
	if err != nil {
		return err
	}
	db.resized = true
	return nil
}

// Sync flushes the database file to disk, and first the LTX files not yet
// durable (see SyncWAL); datasync skips the file's metadata.
func (db *DB) Sync(datasync bool) error {
	if err := db.log.Sync(); err != nil {
		return fmt.Errorf("sync ltx files: %w", err)
	}
	return syncFile(db.f, datasync)
}

// retain removes the LTX files retention no longer keeps. The database
// file and WAL are made durable first: after a crash of the machine,
// recovery may need every file after the durable database state.
func (db *DB) retain(before time.Time) (int, error) {
	if err := db.Sync(false); err != nil {
		return 0, err
	}
	if f, err := os.OpenFile(db.WALPath(), os.O_RDWR, 0); err == nil {
		err = ltx.Sync(f)
		_ = f.Close()
		if err != nil {
			return 0, err
		}
	} else if !os.IsNotExist(err) {
		return 0, err
	}
	return db.log.Retain(before)
}

// SetSyncHook sets a function called after every sync of a file or
// directory in the data directory, for crash tests; nil removes it.
func SetSyncHook(fn func(f *os.File)) { ltx.SetSyncHook(fn) }

// syncFile makes f durable; datasync skips its metadata.
func syncFile(f *os.File, datasync bool) error {
	if datasync {
		return ltx.SyncData(f)
	}
	return ltx.Sync(f)
}

// closeIfEmpty closes the database if it has no transaction and no bytes,
// and reports whether it did.
func (db *DB) closeIfEmpty() bool {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed || db.pos.TXID != 0 || db.pageSize != 0 {
		return false
	}
	if size, err := db.Size(); err != nil || size != 0 {
		return false
	}
	db.closed = true
	_ = db.f.Close()
	return true
}

// close closes the database file. Safe to call twice.
func (db *DB) close() error {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return nil
	}
	db.closed = true
	serr := db.log.Sync() // a clean stop leaves the log durable
	if err := db.saveChecksums(); err != nil {
		// Only the next start's speed depends on it.
		db.logger.Warn("could not keep the checksum table for the next start; it will read the whole database", slog.Any(LogKeyError, err))
	}
	_ = db.log.Close()
	if err := db.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return serr
}

// zeroFilled reports whether the database file holds only zero bytes.
func (db *DB) zeroFilled() bool {
	buf := make([]byte, 64<<10)
	for off := int64(0); ; off += int64(len(buf)) {
		n, err := db.f.ReadAt(buf, off)
		if !isZero(buf[:n]) {
			return false
		}
		if err != nil {
			return errors.Is(err, io.EOF)
		}
	}
}

func isZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}
