// Package replica is the node's core: the Store of all databases, each DB
// with its file, LTX log and position, and the commit path that turns SQLite
// transactions into LTX files.
package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// Log keys used on every line where they apply.
const (
	LogKeyDB       = "db"
	LogKeyTXID     = "txid"
	LogKeyNode     = "node"
	LogKeyChecksum = "checksum"
	LogKeyError    = "err"
	LogKeyPath     = "path"
)

// DefaultRetention is how long LTX files are kept after they are written.
const DefaultRetention = 10 * time.Minute

// DefaultRetentionInterval is how often retention is enforced.
const DefaultRetentionInterval = 30 * time.Second

// ReservedSuffixes are the name endings SQLite and the mount use for a
// database's companion files; no database name may end with one.
var ReservedSuffixes = []string{"-journal", "-wal", "-shm", "-pos"}

// Store holds every database of the node under Dir/dbs.
type Store struct {
	// Dir is the data directory.
	Dir string
	// Retention is how long LTX files are kept; the newest is always kept.
	Retention time.Duration
	// RetentionInterval is how often retention runs.
	RetentionInterval time.Duration
	// Logger receives the store's logs.
	Logger *slog.Logger
	// OnError, if set, is called when a database fails in a way the caller
	// may want to stop for (a commit that could not be made durable).
	OnError func(db string, err error)

	mu  sync.Mutex
	dbs map[string]*DB

	ctx    context.Context
	cancel context.CancelCauseFunc
	g      errgroup.Group
}

// NewStore returns a store over the data directory dir with defaults set.
func NewStore(dir string) *Store {
	return &Store{
		Dir:               dir,
		Retention:         DefaultRetention,
		RetentionInterval: DefaultRetentionInterval,
		Logger:            slog.Default(),
		dbs:               make(map[string]*DB),
	}
}

// DBDir returns the directory of the databases.
func (s *Store) DBDir() string { return filepath.Join(s.Dir, "dbs") }

// Open opens every database in the data directory, recovering each from a
// crash, and starts retention. It fails, naming the database and file, if
// any database's file does not match its log.
func (s *Store) Open() error {
	s.ctx, s.cancel = context.WithCancelCause(context.Background())
	if err := os.MkdirAll(s.DBDir(), 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(s.DBDir())
	if err != nil {
		return err
	}
	for _, ent := range ents {
		if !ent.IsDir() {
			continue
		}
		db, err := s.openDB(ent.Name(), filepath.Join(s.DBDir(), ent.Name()))
		if err != nil {
			s.closeDBs()
			return err
		}
		s.dbs[db.name] = db
		s.Logger.Info("database opened", slog.String(LogKeyDB, db.name), slog.String("pos", db.pos.String()))
	}
	s.g.Go(s.retentionLoop)
	return nil
}

func (s *Store) openDB(name, dir string) (*DB, error) {
	db, err := openDB(name, dir, s.Logger)
	if err != nil {
		return nil, err
	}
	db.onError = func(err error) {
		if s.OnError != nil {
			s.OnError(name, err)
		}
	}
	return db, nil
}

// Close stops retention and closes every database. Safe to call twice.
func (s *Store) Close() error {
	if s.cancel != nil {
		s.cancel(errors.New("store closed"))
	}
	err := s.g.Wait()
	if cerr := s.closeDBs(); err == nil {
		err = cerr
	}
	return err
}

func (s *Store) closeDBs() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var first error
	for _, db := range s.dbs {
		if err := db.close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// DB returns the named database, or nil.
func (s *Store) DB(name string) *DB {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dbs[name]
}

// DBs returns every database, by name.
func (s *Store) DBs() []*DB {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := make([]*DB, 0, len(s.dbs))
	for _, db := range s.dbs {
		a = append(a, db)
	}
	sort.Slice(a, func(i, j int) bool { return a[i].name < a[j].name })
	return a
}

// ValidateName returns ErrInvalidName if name cannot be a database.
func ValidateName(name string) error {
	if name == "" || strings.HasPrefix(name, ".") || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	for _, suffix := range ReservedSuffixes {
		if strings.HasSuffix(name, suffix) {
			return fmt.Errorf("%w: %q ends with %s", ErrInvalidName, name, suffix)
		}
	}
	return nil
}

// CreateDB creates an empty database. It returns ErrDatabaseExists if the
// name is in use.
func (s *Store) CreateDB(name string) (*DB, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.dbs[name]; ok {
		return nil, ErrDatabaseExists
	}
	dir := filepath.Join(s.DBDir(), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	db, err := s.openDB(name, dir)
	if err != nil {
		return nil, err
	}
	s.dbs[name] = db
	s.Logger.Info("database created", slog.String(LogKeyDB, name))
	return db, nil
}

// DeleteDB removes a database, its companion files and its log.
func (s *Store) DeleteDB(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	db, ok := s.dbs[name]
	if !ok {
		return ErrDatabaseNotFound
	}
	if err := db.close(); err != nil {
		return err
	}
	delete(s.dbs, name)
	if err := os.RemoveAll(db.dir); err != nil {
		return fmt.Errorf("remove database %q: %w", name, err)
	}
	s.Logger.Info("database deleted", slog.String(LogKeyDB, name), slog.String("pos", db.pos.String()))
	return nil
}

func (s *Store) retentionLoop() error {
	t := time.NewTicker(s.RetentionInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return nil
		case <-t.C:
		}
		for _, db := range s.DBs() {
			n, err := db.log.Retain(time.Now().Add(-s.Retention))
			if err != nil {
				s.Logger.Warn("retention", slog.String(LogKeyDB, db.name), slog.Any(LogKeyError, err))
			} else if n > 0 {
				s.Logger.Debug("retention removed ltx files", slog.String(LogKeyDB, db.name), slog.Int("n", n))
			}
		}
	}
}
