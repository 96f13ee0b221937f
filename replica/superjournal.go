package replica

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/litefs-project/litefs/checksum"
)

// A transaction over several databases in rollback-journal mode makes
// SQLite write a super-journal beside the connection's main database,
// named "<db>-mj" and nine uppercase hex digits, listing the journals of
// every database in the transaction. Each journal names it at its end.
// Deleting it is the commit point: from then on every journal of the
// transaction is finished, not hot, even before SQLite finalizes it
// (sqlite.org/atomiccommit.html, section 5).
//
// litefs keeps a super-journal as a plain file in the main database's
// directory. Each database's part of the transaction becomes its own LTX
// transaction when SQLite finalizes that database's journal.
const (
	superJournalInfix  = "-mj"
	superJournalSuffix = 9 // hex digits after the infix
	superJournalPrefix = "super-journal-"
)

// SplitSuperJournal reports whether name is the name SQLite gives the
// super-journal of a transaction over several databases, and returns the
// main database's name and the random suffix.
func SplitSuperJournal(name string) (db, suffix string, ok bool) {
	i := strings.LastIndex(name, superJournalInfix)
	if i <= 0 {
		return "", "", false
	}
	suffix = name[i+len(superJournalInfix):]
	if len(suffix) != superJournalSuffix {
		return "", "", false
	}
	for _, c := range suffix {
		if (c < '0' || c > '9') && (c < 'A' || c > 'F') {
			return "", "", false
		}
	}
	return name[:i], suffix, true
}

// SuperJournalPath returns the file in the data directory behind the
// super-journal "<db>-mj<suffix>" in the mount.
func (db *DB) SuperJournalPath(suffix string) string {
	return db.path(superJournalPrefix + suffix)
}

// RemoveSuperJournal deletes the super-journal "<db>-mj<suffix>", which
// is the commit point of a transaction over several databases.
func (db *DB) RemoveSuperJournal(suffix string) error {
	return os.Remove(db.SuperJournalPath(suffix))
}

// superJournalExists reports whether the super-journal SQLite recorded as
// path still exists. A super-journal in the mount is found in the data
// directory, since the mount may be down; one elsewhere (the main database
// was not in the mount) where SQLite put it.
func (db *DB) superJournalExists(path string) (bool, error) {
	if _, err := os.Stat(path); err == nil {
		return true, nil
	}
	name, suffix, ok := SplitSuperJournal(filepath.Base(path))
	if !ok {
		return false, nil
	}
	real := filepath.Join(filepath.Dir(db.dir), name, superJournalPrefix+suffix)
	if _, err := os.Stat(real); err == nil {
		return true, nil
	} else if !os.IsNotExist(err) {
		return false, fmt.Errorf("check super-journal %s: %w", real, err)
	}
	return false, nil
}

// removeStaleSuperJournals deletes the super-journals that no journal
// refers to any more, as SQLite does once it has rolled back every journal
// of a transaction: at start, recovery has settled every journal in the
// store, so only a journal outside the mount can still need one. dbs are
// the store's databases by name.
func removeStaleSuperJournals(dbs map[string]*DB, logger *slog.Logger) error {
	for _, db := range dbs {
		paths, err := filepath.Glob(db.path(superJournalPrefix + "*"))
		if err != nil {
			return err
		}
		for _, path := range paths {
			suffix := strings.TrimPrefix(filepath.Base(path), superJournalPrefix)
			inUse, err := superJournalInUse(path, db.name+superJournalInfix+suffix, dbs)
			if err != nil {
				return err
			}
			if inUse {
				continue
			}
			if err := os.Remove(path); err != nil {
				return err
			}
			logger.Info("removed the super-journal of a transaction over several databases that no journal needs any more",
				slog.String(LogKeyDB, db.name), slog.String(LogKeyPath, path))
		}
	}
	return nil
}

// superJournalInUse reports whether a journal listed in the super-journal
// at path still names it (by its name in the mount, mountName).
func superJournalInUse(path, mountName string, dbs map[string]*DB) (bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	for _, journal := range bytes.Split(b, []byte{0}) {
		if len(journal) == 0 {
			continue
		}
		real := string(journal)
		if name, ok := strings.CutSuffix(filepath.Base(real), "-journal"); ok {
			if db := dbs[name]; db != nil {
				if _, err := os.Stat(real); err != nil { // the mount is down: the store's own journal
					real = db.JournalPath()
				}
			}
		}
		jb, err := os.ReadFile(real)
		if os.IsNotExist(err) {
			continue
		} else if err != nil {
			return false, fmt.Errorf("read journal %s listed in super-journal %s: %w", real, path, err)
		}
		if super := readSuperJournalName(jb); super != "" && filepath.Base(super) == mountName {
			return true, nil
		}
	}
	return false, nil
}

// commitJournaled logs, as the next transaction, the change a journal j
// whose super-journal is gone describes: the database file tbl holds it,
// and j's pages and size take it back to the log's position, which is
// checked. It returns the file's table. db.mu held, or db not yet shared.
func (db *DB) commitJournaled(j *hotJournal, tbl *checksum.Table, pageSize uint32) (*checksum.Table, error) {
	if j.pageSize != pageSize {
		return nil, fmt.Errorf("journal page size %d differs from the database's %d", j.pageSize, pageSize)
	}
	pre := tbl.Clone()
	written := make([]uint32, 0, len(j.pages))
	for pgno, data := range j.pages {
		written = append(written, pgno)
		if pgno <= j.dbSize {
			pre.Set(pgno, data)
		}
	}
	pre.Truncate(j.dbSize)
	if got := pre.Sum(); got != db.pos.Checksum {
		return nil, &ChecksumMismatchError{DB: db.name, Path: db.path(DatabaseFile),
			TXID: uint64(db.pos.TXID), Want: db.pos.Checksum, Got: got}
	}
	db.pageSize, db.chk = pageSize, pre
	if err := db.commitTxn(tbl.PageN(), written, db.readDBPage, syncNow); err != nil {
		return nil, err
	}
	db.logger.Info("logged the transaction of a finished super-journal: SQLite had committed it over several databases before litefs stopped",
		slog.String(LogKeyTXID, db.pos.TXID.String()), slog.String("super_journal", j.super))
	return db.chk, nil
}
