package replica

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	_ "github.com/mattn/go-sqlite3" // PRAGMA quick_check on a received copy

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
)

// DefaultModeSwitchTimeout is how long an import that takes a database
// out of WAL mode waits for the connections open in WAL mode to close.
const DefaultModeSwitchTimeout = 5 * time.Second

// ImportOptions configures Store.Import.
type ImportOptions struct {
	// NoCheck skips PRAGMA quick_check on the received copy (for very
	// large files); the header and length are validated regardless.
	NoCheck bool
	// Gate keeps connections out while the database changes and makes
	// them drop what they cached; nil if the mount is not up.
	Gate Gate
	// ModeSwitchTimeout bounds the wait for connections in WAL mode to
	// close when the imported file is in rollback-journal mode; zero
	// means DefaultModeSwitchTimeout.
	ModeSwitchTimeout time.Duration
}

// ImportResult is what Store.Import did; it is also the JSON body of a
// successful POST /import.
type ImportResult struct {
	DB       string `json:"db"`
	Position string `json:"position"` // txid/checksum of the import's transaction
	PageSize uint32 `json:"page_size"`
	Pages    uint32 `json:"pages"`
	Size     int64  `json:"size"` // bytes received
	// JournalMode is the imported file's mode, which the database now has:
	// "wal" or "rollback".
	JournalMode string `json:"journal_mode"`
	// PreviousJournalMode is the database's mode before; "" if it had no
	// transaction.
	PreviousJournalMode string `json:"previous_journal_mode,omitempty"`
	JournalModeChanged  bool   `json:"journal_mode_changed"`
	Created             bool   `json:"created"` // the database did not exist
}

// Pos returns the position of the import's transaction.
func (r ImportResult) Pos() (ltx.Pos, error) { return ltx.ParsePos(r.Position) }

// Import replaces the content of the named database with the SQLite
// database read from r, creating the database if the store does not have
// it. Only the primary imports: elsewhere it returns an error wrapping
// ErrNotPrimary (naming the primary's hostname if known), and ErrFenced on
// a primary past its fence.
//
// The file is streamed page by page into a temporary file under TempDir,
// validated (see CopyDatabase, then PRAGMA quick_check unless
// opts.NoCheck), and becomes one transaction at the next TXID: an LTX file
// holding every page, logged durably as a commit is, then written into the
// database file with connections kept out by opts.Gate, which makes them
// reload on their next transaction (the header's change counter and schema
// cookie move past both the old and the imported file's). The database
// takes the imported file's journal mode; leaving WAL mode needs every
// connection closed, as PRAGMA journal_mode=DELETE does, and fails with
// ErrJournalModeBusy otherwise.
//
// Any refusal (invalid file, not primary, fence, busy) changes nothing:
// the database, its position and its log stay as they were.
func (s *Store) Import(ctx context.Context, name string, r io.Reader, opts ImportOptions) (ImportResult, error) {
	if err := ValidateName(name); err != nil {
		return ImportResult{}, fmt.Errorf("import: %w", err)
	}
	if err := s.checkImport(); err != nil {
		return ImportResult{}, fmt.Errorf("import %q: %w", name, err)
	}
	tmp, err := os.CreateTemp(s.TempDir(), "import-*.db")
	if err != nil {
		return ImportResult{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	info, err := CopyDatabase(bw, r)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return ImportResult{}, fmt.Errorf("import %q: %w", name, err)
	}
	if !opts.NoCheck {
		if err := quickCheck(ctx, tmp.Name()); err != nil {
			return ImportResult{}, fmt.Errorf("import %q: %w", name, err)
		}
	}
	// Receiving may have taken a while.
	if err := s.checkImport(); err != nil {
		return ImportResult{}, fmt.Errorf("import %q: %w", name, err)
	}

	db, created := s.DB(name), false
	if db == nil {
		if db, err = s.CreateDB(name); errors.Is(err, ErrDatabaseExists) {
			db = s.DB(name)
		} else if err != nil {
			return ImportResult{}, fmt.Errorf("import %q: %w", name, err)
		} else {
			created = true
		}
		if db == nil {
			return ImportResult{}, fmt.Errorf("import %q: %w (deleted meanwhile)", name, ErrDatabaseNotFound)
		}
		// The kernel may remember the name as missing; the gate opens
		// the database through the mount.
		if created && opts.Gate != nil {
			if err := opts.Gate.Forget(name); err != nil {
				s.Logger.Warn("import: drop the kernel's cached names", slog.String(LogKeyDB, name), slog.Any(LogKeyError, err))
			}
		}
	}
	res, err := db.importFile(ctx, tmp, info, opts, s.TempDir())
	if created {
		if err != nil {
			_, _ = s.DiscardEmpty(name)
		}
		if opts.Gate != nil {
			if ferr := opts.Gate.Forget(name); ferr != nil && err == nil {
				s.Logger.Warn("import: drop the kernel's cached names", slog.String(LogKeyDB, name), slog.Any(LogKeyError, ferr))
			}
		}
	}
	if errors.Is(err, ErrReadOnly) { // stepped down meanwhile
		if nerr := s.checkImport(); nerr != nil {
			err = nerr
		}
	}
	if err != nil {
		return ImportResult{}, fmt.Errorf("import %q: %w", name, err)
	}
	res.Created = created
	s.Logger.Info("database imported", slog.String(LogKeyDB, name), slog.String("pos", res.Position),
		slog.Int64("bytes", res.Size), slog.String("journal_mode", res.JournalMode), slog.Bool("journal_mode_changed", res.JournalModeChanged))
	return res, nil
}

// checkImport returns an error wrapping ErrNotPrimary on a replica, and
// ErrFenced on a primary past its fence.
func (s *Store) checkImport() error {
	err := s.checkCommit()
	if errors.Is(err, ErrReadOnly) {
		if host := s.PrimaryHostname(); host != "" {
			return fmt.Errorf("%w: imports go to the primary, %s", ErrNotPrimary, host)
		}
		return fmt.Errorf("%w: imports go to the primary, which this node does not know now", ErrNotPrimary)
	}
	return err
}

// quickCheck runs PRAGMA quick_check on the database file at path, opened
// read-only and immutable.
func quickCheck(ctx context.Context, path string) error {
	sdb, err := sql.Open("sqlite3", "file:"+path+"?mode=ro&immutable=1")
	if err != nil {
		return err
	}
	defer sdb.Close()
	rows, err := sdb.QueryContext(ctx, "PRAGMA quick_check(10)")
	if err != nil {
		return fmt.Errorf("%w: PRAGMA quick_check could not read it: %v: restore it from another copy", ErrInvalidDatabase, err)
	}
	defer rows.Close()
	var msgs []string
	for rows.Next() {
		var m string
		if err := rows.Scan(&m); err != nil {
			return err
		}
		msgs = append(msgs, m)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("%w: PRAGMA quick_check could not read it: %v: restore it from another copy", ErrInvalidDatabase, err)
	}
	if len(msgs) == 1 && msgs[0] == "ok" {
		return nil
	}
	return fmt.Errorf("%w: PRAGMA quick_check found damage: %s: restore it from another copy, or import it as it is with -no-check",
		ErrInvalidDatabase, strings.Join(msgs, "; "))
}

// importLTX is an import's LTX file, built for one position.
type importLTX struct {
	path string
	hdr  ltx.Header
	post checksum.Checksum
	pre  ltx.Pos
}

// importFile makes the validated database in src the database's next
// transaction. See Store.Import.
func (db *DB) importFile(ctx context.Context, src *os.File, info DatabaseInfo, opts ImportOptions, tmpDir string) (ImportResult, error) {
	// The LTX file is built before connections are kept out, for the
	// position now; if a commit moves it meanwhile, it is built again.
	// With synchronous replication the file is always built again once
	// connections are kept out, stamped then (see syncTracker.reserve): a
	// place reserved in the publish order holds back the stream until it
	// is filled.
	var stamp ltx.Stamp
	if db.sync == nil && db.reserveStamp != nil {
		stamp = db.reserveStamp()
	}
	db.mu.Lock()
	built, err := db.buildImport(src, info, tmpDir, stamp)
	db.mu.Unlock()
	if err != nil {
		return ImportResult{}, err
	}
	defer func() { _ = os.Remove(built.path) }() // gone once adopted

	gate := opts.Gate
	wasWAL := db.isWAL()
	prevMode := ""
	if db.Pos().TXID > 0 {
		prevMode = journalModeName(wasWAL)
	}
	leaveWAL := wasWAL && !info.WAL
	unlock, err := db.lockForImport(ctx, gate, wasWAL, leaveWAL, opts.ModeSwitchTimeout)
	if err != nil {
		return ImportResult{}, err
	}
	db.mu.Lock()
	err = db.checkImportable(wasWAL)
	if err == nil && (db.pos != built.pre || db.sync != nil) {
		_ = os.Remove(built.path)
		if db.sync != nil {
			stamp = db.sync.reserve()
		}
		built, err = db.buildImport(src, info, tmpDir, stamp)
	}
	if err == nil {
		err = db.commitImport(built, leaveWAL)
	}
	if db.sync != nil {
		db.cancelStamp(stamp) // the place is filled (published) or given up
	}
	db.mu.Unlock()
	if err = db.reopenGate(gate, unlock, err); err != nil {
		return ImportResult{}, err
	}
	return ImportResult{
		DB: db.name, Position: ltx.Pos{TXID: built.hdr.MaxTXID, Checksum: built.post}.String(),
		PageSize: info.PageSize, Pages: info.PageN, Size: info.Size,
		JournalMode: info.JournalMode(), PreviousJournalMode: prevMode,
		JournalModeChanged: prevMode != "" && prevMode != info.JournalMode(),
	}, nil
}

// lockForImport keeps connections out with gate, if set: with the locks of
// the database's journal mode, and, when the import leaves WAL mode, with
// the rollback-mode locks too, which connections in WAL mode hold a part
// of (SHARED) for as long as they are open.
func (db *DB) lockForImport(ctx context.Context, gate Gate, wasWAL, leaveWAL bool, timeout time.Duration) (func() error, error) {
	if gate == nil {
		return nil, nil
	}
	unlock, err := gate.Lock(ctx, db.name, wasWAL)
	if err != nil {
		return nil, fmt.Errorf("keep connections out: %w", err)
	}
	if !leaveWAL {
		return unlock, nil
	}
	if timeout <= 0 {
		timeout = DefaultModeSwitchTimeout
	}
	lctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	unlockDB, err := gate.Lock(lctx, db.name, false)
	if err != nil {
		_ = unlock()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("keep connections out: %w", err)
		}
		return nil, fmt.Errorf("%w: the database is in WAL mode and the imported file in rollback-journal mode; connections stayed open for %s: close them and import again, or convert the file first with sqlite3 FILE 'PRAGMA journal_mode=WAL' to keep WAL mode",
			ErrJournalModeBusy, timeout)
	}
	return func() error {
		err := unlockDB()
		if uerr := unlock(); err == nil {
			err = uerr
		}
		return err
	}, nil
}

// checkImportable refuses an import of a database that is not quiet: no
// transaction in progress, the journal mode seen when the locks were
// chosen, and the file at its log's position. db.mu held, connections
// kept out.
func (db *DB) checkImportable(wasWAL bool) error {
	if db.closed {
		return ErrClosed
	}
	if db.isWAL() != wasWAL {
		return errors.New("the database's journal mode changed during the import; import again")
	}
	if active, err := db.journalActive(); err != nil {
		return err
	} else if active || (!wasWAL && len(db.dirty) > 0) { // in WAL mode, checkpoints leave pages here
		return errors.New("a transaction is in progress on the database; import again once it ends")
	}
	if db.log.Pos() != db.pos {
		return fmt.Errorf("the database is at %s and its log at %s (an earlier apply did not finish); restart the node, then import again", db.pos, db.log.Pos())
	}
	return nil
}

// commitImport logs the import's LTX file as the next transaction, then
// writes it into the database file. Until the file is in the log, a
// refusal changes nothing. db.mu held, connections kept out.
func (db *DB) commitImport(b importLTX, leaveWAL bool) error {
	if db.canCommit != nil {
		if err := db.canCommit(); err != nil {
			return err
		}
	}
	if err := reserve(db.f, int64(b.hdr.Commit)*int64(b.hdr.PageSize)); err != nil {
		return fmt.Errorf("make room for %d pages: %w", b.hdr.Commit, err)
	}
	// The fence is asked again once the file is durable, as for a commit.
	if err := db.log.AdoptChecked(b.path, b.hdr, b.post, db.canCommit); err != nil {
		if errors.Is(err, ErrReadOnly) || errors.Is(err, ErrFenced) {
			return err
		}
		return fmt.Errorf("log ltx %s: %w", b.hdr.MaxTXID, err)
	}
	// Logged: from here a failure is finished by the next start, which
	// applies the log's newest file again.
	err := db.applyFile(db.log.Path(b.hdr.MinTXID, b.hdr.MaxTXID), false)
	if err == nil && db.chk.Sum() != b.post {
		err = fmt.Errorf("database checksum %s after writing it, the file says %s", db.chk.Sum(), b.post)
	}
	if err == nil && leaveWAL {
		// Every connection is closed: an empty WAL is no WAL to SQLite,
		// as when it leaves WAL mode itself.
		if terr := os.Truncate(db.WALPath(), 0); terr != nil && !os.IsNotExist(terr) {
			err = terr
		}
		db.wal.reset()
	}
	if err == nil {
		err = db.f.Sync()
	}
	if err != nil {
		err = fmt.Errorf("write imported ltx %s into the database: %w", b.hdr.MaxTXID, err)
		db.logger.Error("import logged but not written into the database file; restart the node to finish it", slog.Any(LogKeyError, err))
		if db.onError != nil {
			db.onError(err)
		}
		return err
	}
	db.resetDirty()
	db.pos = ltx.Pos{TXID: b.hdr.MaxTXID, Checksum: b.post}
	db.publish()
	return nil
}

// buildImport writes the LTX file of an import, stamped stamp, at the
// database's position:
// every page of src, with page 1's change counter and schema cookie moved
// past both the database's and the file's, so that connections reload.
// db.mu held.
func (db *DB) buildImport(src *os.File, info DatabaseInfo, tmpDir string, stamp ltx.Stamp) (_ importLTX, err error) {
	pre := db.pos
	var oldPage1 []byte
	if pre.TXID > 0 && db.pageSize != 0 {
		oldPage1 = make([]byte, db.pageSize)
		if err := db.readCommittedPage(1, oldPage1); err != nil {
			return importLTX{}, fmt.Errorf("read page 1: %w", err)
		}
	}
	hdr := ltx.Header{
		PageSize: info.PageSize, Commit: info.PageN,
		MinTXID: pre.TXID + 1, MaxTXID: pre.TXID + 1,
		PreApplyChecksum: pre.Checksum, Timestamp: time.Now().UnixMilli(),
		Stamp: stamp,
	}
	f, err := os.CreateTemp(tmpDir, "import-*.ltx")
	if err != nil {
		return importLTX{}, err
	}
	defer func() {
		_ = f.Close()
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	enc, err := ltx.NewEncoder(bw, hdr)
	if err != nil {
		return importLTX{}, err
	}
	tbl := checksum.NewTable(info.PageSize)
	buf := make([]byte, info.PageSize)
	br := bufio.NewReaderSize(io.NewSectionReader(src, 0, info.Size), 1<<20)
	lock := checksum.LockPgno(info.PageSize)
	for pgno := uint32(1); pgno <= info.PageN; pgno++ {
		if _, err := io.ReadFull(br, buf); err != nil {
			return importLTX{}, fmt.Errorf("read received page %d: %w", pgno, err)
		}
		if pgno == 1 {
			bumpHeader(buf, oldPage1, info.PageN)
		}
		if pgno == lock {
			continue
		}
		tbl.Set(pgno, buf)
		if err := enc.Page(pgno, buf); err != nil {
			return importLTX{}, fmt.Errorf("encode page %d: %w", pgno, err)
		}
	}
	post := tbl.Sum()
	if err := enc.Close(post); err != nil {
		return importLTX{}, err
	}
	if err := bw.Flush(); err != nil {
		return importLTX{}, err
	}
	if err := f.Sync(); err != nil {
		return importLTX{}, err
	}
	return importLTX{path: f.Name(), hdr: hdr, post: post, pre: pre}, nil
}

// bumpHeader sets page 1's change counter (and the version-valid-for that
// makes the page count trusted) and schema cookie to values past both the
// imported file's and old's, the page 1 that connections may have cached
// (nil for a new database), and the page count to pageN.
func bumpHeader(p1, old []byte, pageN uint32) {
	next := func(off int) uint32 {
		v := binary.BigEndian.Uint32(p1[off:])
		var o uint32
		if old != nil {
			o = binary.BigEndian.Uint32(old[off:])
		}
		n := max(v, o) + 1
		if n == o { // wrapped around
			n++
		}
		return n
	}
	counter, cookie := next(hdrOffChangeCounter), next(hdrOffSchemaCookie)
	binary.BigEndian.PutUint32(p1[hdrOffChangeCounter:], counter)
	binary.BigEndian.PutUint32(p1[hdrOffVersionValid:], counter)
	binary.BigEndian.PutUint32(p1[hdrOffPageCount:], pageN)
	binary.BigEndian.PutUint32(p1[hdrOffSchemaCookie:], cookie)
}

// readCommittedPage reads a page as readers see it: from the WAL's last
// committed frame of it, if any, else from the database file. db.mu held.
func (db *DB) readCommittedPage(pgno uint32, buf []byte) error {
	if db.wal.valid && db.wal.end > walHeaderSize {
		f, err := os.Open(db.WALPath())
		if err != nil {
			return err
		}
		defer f.Close()
		txns, err := readWALTxns(f, db.wal.end, db.wal.hdr, walHeaderSize, db.wal.hdr.cksum)
		if err != nil {
			return err
		}
		off := int64(-1)
		for _, txn := range txns {
			for _, fr := range txn.frames {
				if fr.pgno == pgno {
					off = fr.offset + walFrameHeaderSize
				}
			}
		}
		if off >= 0 {
			_, err := f.ReadAt(buf, off)
			return err
		}
	}
	return db.readDBPage(pgno, buf)
}
