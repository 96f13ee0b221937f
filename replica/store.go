// Package replica is the node's core: the Store of all databases, each DB
// with its file, LTX log and position, and the commit path that turns SQLite
// transactions into LTX files.
package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/litefs-project/litefs/ltx"
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
	// MovedAside lists where Open moved databases that did not match
	// their log.
	MovedAside []string
	// Metrics, if set before Open, records the node's metrics.
	Metrics *Metrics
	// OnError, if set, is called when a database fails in a way the caller
	// may want to stop for (a commit that could not be made durable).
	OnError func(db string, err error)
	// SyncReplicas, if above zero, makes every commit wait until that many
	// candidates hold it durably (lease.sync-replicas); zero: asynchronous
	// replication. SyncTimeout bounds the wait (zero: DefaultSyncTimeout);
	// SyncFallback says what then: SyncFallbackFail (the default) or
	// SyncFallbackAsync. Set before Open.
	SyncReplicas int
	SyncTimeout  time.Duration
	SyncFallback string

	syncOnce sync.Once
	sync     *syncTracker // nil unless SyncReplicas > 0

	// The stamps of this node's commits (see ltx.Stamp): the lease term it
	// writes under as primary, and, with asynchronous replication, the
	// last place in its publish order given out (the sync tracker keeps
	// its own).
	term atomic.Uint64
	seq  atomic.Uint64

	mu  sync.Mutex
	dbs map[string]*DB

	// The node's role and, on a replica, what it knows of the primary.
	roleMu       sync.Mutex
	primary      bool
	primaryHost  string             // hostname of the primary while connected; "" otherwise
	primaryProxy string             // the primary's proxy URL while connected; "" otherwise
	primaryErr   error              // why the stream to the primary last ended; nil while connected
	synced       bool               // a replica matched the primary's positions at least once
	primaryURL   string             // API URL of the primary this node follows
	primarySince time.Time          // when primaryHost or primaryURL last changed
	roleChanged  chan struct{}      // closed and replaced when the role or the primary changes
	primaryPos   map[string]ltx.Pos // positions the primary last reported
	caughtUpAt   time.Time          // when the replica last matched primaryPos
	caughtUp     bool               // whether it matches them now
	fence        time.Time          // on a primary, commits are refused from then on; zero: never
	changed      chan struct{}      // closed and replaced when any database changes

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
		primary:           true,
		changed:           make(chan struct{}),
		roleChanged:       make(chan struct{}),
		caughtUpAt:        time.Now(),
		primarySince:      time.Now(),
	}
}

// SetPrimary sets whether this node is the primary (the default) or a
// replica.
func (s *Store) SetPrimary(primary bool) {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	s.primary = primary
	s.roleChangedLocked()
}

// SetFence sets the time from which a primary refuses commits: a moment
// safely before its lease could expire without a renewal. Zero means never.
func (s *Store) SetFence(t time.Time) {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	s.fence = t
}

// checkCommit returns ErrReadOnly on a replica and ErrFenced on a primary
// past its fence.
func (s *Store) checkCommit() error {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	switch {
	case !s.primary:
		return ErrReadOnly
	case !s.fence.IsZero() && !time.Now().Before(s.fence):
		return fmt.Errorf("%w (fence passed %s ago)", ErrFenced, time.Since(s.fence).Round(time.Millisecond))
	}
	return nil
}

// CheckWrite returns nil if this node may commit now: ErrReadOnly on a
// replica, ErrFenced on a primary past its fence (stepping down, or handing
// off).
func (s *Store) CheckWrite() error { return s.checkCommit() }

// Promote makes the node the primary while mounted. The caller has stopped
// its replication client; databases continue from their own positions.
func (s *Store) Promote(fence time.Time) {
	s.roleMu.Lock()
	s.primary, s.fence, s.primaryHost, s.primaryURL, s.primaryPos = true, fence, "", "", nil
	s.primaryProxy, s.primaryErr = "", nil
	s.primarySince = time.Now()
	s.roleChangedLocked()
	s.roleMu.Unlock()
	s.resetSync()
	s.notify()
}

// Demote makes the node a replica while mounted. Commits are refused from
// the moment it is called; then each database is brought back to its last
// committed transaction with connections kept out by gate: a transaction
// whose commit was refused is rolled back (its journal played back, or its
// frames cut off the WAL). A database that does not match its own log is
// moved aside, and the primary sends it a snapshot.
func (s *Store) Demote(ctx context.Context, gate Gate) error {
	s.roleMu.Lock()
	s.primary, s.fence = false, time.Time{}
	s.roleChangedLocked()
	s.roleMu.Unlock()
	if t := s.syncTracker(); t != nil {
		t.abort(ErrReadOnly) // waiting commits are taken back at once
	}
	s.notify()
	var first error
	for _, db := range s.DBs() {
		err := db.resync(ctx, gate)
		if errors.Is(err, ErrChecksumMismatch) || errors.Is(err, ErrCorruptLTX) {
			s.Logger.Warn("database does not match its log after stepping down", slog.String(LogKeyDB, db.name), slog.Any(LogKeyError, err))
			if _, err = s.MoveAside(db.name, "it does not match its own log; the primary will send a snapshot"); err == nil && gate != nil {
				err = gate.Forget(db.name)
			}
		}
		if err != nil && first == nil {
			first = fmt.Errorf("step down %q: %w", db.name, err)
		}
	}
	return first
}

// IsPrimary reports whether this node takes writes.
func (s *Store) IsPrimary() bool {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	return s.primary
}

// PrimaryHostname returns the primary's hostname while a replica is
// connected to it, or "".
func (s *Store) PrimaryHostname() string {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	return s.primaryHost
}

// setConnected records that the stream to the primary is up: the
// primary's hostname and proxy URL from its hello.
func (s *Store) setConnected(host, proxyURL string) {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	if host == s.primaryHost && proxyURL == s.primaryProxy && s.primaryErr == nil {
		return
	}
	s.primaryHost, s.primaryProxy, s.primaryErr, s.primarySince = host, proxyURL, nil, time.Now()
	s.roleChangedLocked()
}

// setDisconnected records that the stream to the primary ended, or that a
// connection attempt failed, with err (nil: stopped on purpose).
func (s *Store) setDisconnected(err error) {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	if s.primaryHost == "" && errors.Is(err, s.primaryErr) && errors.Is(s.primaryErr, err) {
		return // the same failure again: nothing a waiter needs to hear
	}
	if s.primaryHost != "" {
		s.primarySince = time.Now()
	}
	s.primaryHost, s.primaryProxy, s.primaryErr = "", "", err
	s.caughtUp = false // disconnected: no longer known to be caught up
	s.roleChangedLocked()
}

// SetPrimaryURL records the API URL of the primary this node follows ("":
// none known).
func (s *Store) SetPrimaryURL(url string) {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	if url == s.primaryURL {
		return
	}
	s.primaryURL, s.primarySince, s.primaryErr = url, time.Now(), nil
	s.roleChangedLocked()
}

// syncTracker returns the tracker of synchronous replication, nil when
// SyncReplicas is zero.
func (s *Store) syncTracker() *syncTracker {
	s.syncOnce.Do(func() {
		if s.SyncReplicas > 0 {
			s.sync = newSyncTracker(s.SyncReplicas, s.SyncTimeout, s.SyncFallback, s.Logger, s.Metrics)
		}
	})
	return s.sync
}

// resetSync starts synchronous replication over for a new term as
// primary: what the node holds counts as acknowledged.
func (s *Store) resetSync() {
	s.seq.Store(0)
	t := s.syncTracker()
	if t == nil {
		return
	}
	pos := make(map[string]ltx.Pos)
	for _, db := range s.DBs() {
		pos[db.Name()] = db.Pos()
	}
	t.reset(pos, s.term.Load())
}

// SetTerm sets the lease term this node writes under as primary, before
// it becomes the primary (Promote, SetPrimary): its commits' stamps carry
// it (see ltx.Stamp).
func (s *Store) SetTerm(term uint64) {
	s.term.Store(term)
	s.resetSync()
}

// Stamp returns the newest stamp of the transactions the node holds, over
// every database: the election compares it (see lease.Ahead). A replica
// holds every transaction of the primary's history stamped up to it,
// since the stream sends in stamp order when sync-replicas is set.
func (s *Store) Stamp() ltx.Stamp {
	var m ltx.Stamp
	for _, db := range s.DBs() {
		m = max(m, db.log.LastHeader().Stamp)
	}
	return m
}

// reserveStamp returns the stamp of a transaction about to be logged.
// With synchronous replication it reserves the transaction's place in the
// publish order, which the commit then fills (syncTracker.publish) or
// gives up (syncTracker.cancel).
func (s *Store) reserveStamp() ltx.Stamp {
	if t := s.syncTracker(); t != nil {
		return t.reserve()
	}
	return ltx.NewStamp(s.term.Load(), s.seq.Add(1))
}

// SyncMode returns, on a primary with SyncReplicas set, SyncModeSync or
// SyncModeAsync (fallen back, see SyncFallbackAsync); otherwise "".
func (s *Store) SyncMode() string {
	t := s.syncTracker()
	if t == nil || !s.IsPrimary() {
		return ""
	}
	return t.mode()
}

// Fence returns the time from which this primary refuses commits (zero:
// never, or not the primary).
func (s *Store) Fence() time.Time {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	if !s.primary {
		return time.Time{}
	}
	return s.fence
}

// Aside lists the database states kept aside in AsideDir, by name.
func (s *Store) Aside() ([]string, error) {
	ents, err := os.ReadDir(s.AsideDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var a []string
	for _, e := range ents {
		a = append(a, e.Name())
	}
	return a, nil
}

// PrimaryStatus is what a node knows of the primary.
type PrimaryStatus struct {
	Self      bool   // this node is the primary
	Hostname  string // the primary's hostname, while connected to it
	URL       string // the API URL of the primary this node follows
	Connected bool   // a replica's stream to the primary is up
	// ProxyURL is the primary's HTTP proxy as it advertised it when the
	// stream connected ("" while not connected, or if it runs none).
	ProxyURL string
	// Err is why the stream to the primary last ended or failed to
	// connect; nil while connected, or before the first attempt on the
	// primary followed now.
	Err error
	// Synced reports whether this replica has had every transaction the
	// primary reported, at least once since it started.
	Synced bool
	// Since is when Connected (or the primary followed) last changed.
	Since time.Time
	// Positions are the primary's positions as it last reported them.
	Positions map[string]ltx.Pos
}

// Primary returns what the node knows of the primary now; RoleChanged
// tells when that changes (positions aside: see Changed).
func (s *Store) Primary() PrimaryStatus {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	return PrimaryStatus{
		Self: s.primary, Hostname: s.primaryHost, URL: s.primaryURL,
		Connected: s.primaryHost != "", Since: s.primarySince,
		ProxyURL: s.primaryProxy, Err: s.primaryErr, Synced: s.synced,
		Positions: maps.Clone(s.primaryPos),
	}
}

// RoleChanged returns a channel closed at the next change of the node's
// role, of the primary it follows, or of its connection to it.
func (s *Store) RoleChanged() <-chan struct{} {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	return s.roleChanged
}

func (s *Store) roleChangedLocked() {
	close(s.roleChanged)
	s.roleChanged = make(chan struct{})
}

// setPrimaryPositions records the positions the primary reported and
// updates the lag.
func (s *Store) setPrimaryPositions(pos map[string]ltx.Pos) {
	s.roleMu.Lock()
	s.primaryPos = pos
	s.roleMu.Unlock()
	s.updateLag()
}

// notePrimaryPositions records the primary's positions as a stream
// starts (its hello), before its history check: it records that the
// replica is behind, if it is, but never that it caught up (a history
// that differs at the same TXIDs is replaced first).
func (s *Store) notePrimaryPositions(pos map[string]ltx.Pos) {
	behind := false
	for name, p := range pos {
		if db := s.DB(name); p.TXID > 0 && (db == nil || db.Pos().TXID < p.TXID) {
			behind = true
		}
	}
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	s.primaryPos = pos
	if behind {
		s.caughtUp = false
	}
}

// updateLag records whether every database has reached the position the
// primary last reported.
func (s *Store) updateLag() {
	s.roleMu.Lock()
	want := s.primaryPos
	s.roleMu.Unlock()
	if want == nil {
		return
	}
	caughtUp := true
	for name, pos := range want {
		if db := s.DB(name); db == nil || db.Pos().TXID < pos.TXID {
			caughtUp = false
		}
	}
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	s.caughtUp = caughtUp
	if caughtUp {
		s.caughtUpAt = time.Now()
		if !s.synced {
			s.synced = true
			s.roleChangedLocked()
		}
	}
}

// Lag returns zero on the primary and on a replica that has every
// transaction the primary last reported; otherwise how long ago the
// replica last had them (since it started, if it never had).
func (s *Store) Lag() time.Duration {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	if s.primary || s.caughtUp {
		return 0
	}
	return time.Since(s.caughtUpAt)
}

// Changed returns a channel closed at the next change of any database:
// a commit, an apply, a creation or a deletion.
func (s *Store) Changed() <-chan struct{} {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	return s.changed
}

func (s *Store) notify() {
	s.roleMu.Lock()
	defer s.roleMu.Unlock()
	close(s.changed)
	s.changed = make(chan struct{})
}

// TempDir returns a directory for files being received, on the data
// directory's filesystem so they can be renamed into place.
func (s *Store) TempDir() string { return filepath.Join(s.Dir, "tmp") }

// SpareDir returns where the databases' logs keep spare files for their
// appends (see ltx.Log.UseSpares).
func (s *Store) SpareDir() string { return filepath.Join(s.Dir, "spare") }

// AsideDir returns where discarded database states are kept.
func (s *Store) AsideDir() string { return filepath.Join(s.Dir, "aside") }

// MoveAside moves a database (its file and its LTX files) out of the store
// into a dated folder under AsideDir, logs where, and returns the folder.
func (s *Store) MoveAside(name, why string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	db, ok := s.dbs[name]
	if !ok {
		return "", ErrDatabaseNotFound
	}
	if err := db.close(); err != nil {
		return "", err
	}
	delete(s.dbs, name)
	dst, err := s.moveDirAside(name)
	if err != nil {
		return "", err
	}
	s.Logger.Warn("database moved aside: "+why+"; its file and ltx files are kept",
		slog.String(LogKeyDB, name), slog.String(LogKeyPath, dst), slog.String("pos", db.pos.String()))
	s.notify()
	return dst, nil
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
	// Files half received, and spare LTX files: none survives a restart.
	for _, dir := range []string{s.TempDir(), s.SpareDir()} {
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
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
		if err != nil && !s.IsPrimary() && errors.Is(err, ErrChecksumMismatch) {
			// A replica heals from its own log when the log reaches back
			// to a snapshot.
			dir := filepath.Join(s.DBDir(), ent.Name())
			if dst, ok, rerr := rebuildFromLog(ent.Name(), dir, s.AsideDir(), s.Logger); rerr != nil {
				err = fmt.Errorf("%w (rebuilding it from its log failed: %v)", err, rerr)
			} else if ok {
				s.Logger.Info("the damaged copy is kept", slog.String(LogKeyDB, ent.Name()), slog.String(LogKeyPath, dst))
				db, err = s.openDB(ent.Name(), dir)
			}
		}
		if err != nil && !s.IsPrimary() && (errors.Is(err, ErrChecksumMismatch) || errors.Is(err, ErrCorruptLTX)) {
			// A replica heals by itself: the primary sends a snapshot.
			if dst, aerr := s.moveDirAside(ent.Name()); aerr == nil {
				s.MovedAside = append(s.MovedAside, dst)
				s.Logger.Warn("database moved aside: it does not match its own log; the primary will send a snapshot",
					slog.String(LogKeyDB, ent.Name()), slog.String(LogKeyPath, dst), slog.Any(LogKeyError, err))
				continue
			}
		}
		if err != nil {
			s.closeDBs()
			return err
		}
		s.dbs[db.name] = db
		s.Logger.Info("database opened", slog.String(LogKeyDB, db.name), slog.String("pos", db.pos.String()))
	}
	for _, db := range s.dbs {
		if db.log.Unverified() {
			s.g.Go(func() error { s.verifyLog(db); return nil })
		}
	}
	if err := removeStaleSuperJournals(s.dbs, s.Logger); err != nil {
		s.closeDBs()
		return fmt.Errorf("remove stale super-journals: %w", err)
	}
	s.g.Go(s.retentionLoop)
	return nil
}

// verifyLog reads in full, in the background, the newest LTX file of a
// database opened with it checked by its ends only (the database's own
// checksum confirmed the position it gives), and says so loudly if it is
// damaged: the database is whole, but the file cannot be sent to a
// replica or rebuild the database.
func (s *Store) verifyLog(db *DB) {
	start := time.Now()
	if err := db.log.VerifyNewest(s.ctx); err != nil {
		if s.ctx.Err() == nil {
			s.Logger.Error("the newest ltx file of the database is damaged; the database itself matches its position",
				slog.String(LogKeyDB, db.name), slog.Any(LogKeyError, err))
		}
		return
	}
	s.Logger.Debug("newest ltx file verified", slog.String(LogKeyDB, db.name), slog.Duration("elapsed", time.Since(start)))
}

func (s *Store) openDB(name, dir string) (*DB, error) {
	db, err := openDB(name, dir, s.Logger)
	if err != nil {
		return nil, err
	}
	db.log.UseSpares(s.SpareDir())
	db.onError = func(err error) {
		if s.OnError != nil {
			s.OnError(name, err)
		}
	}
	db.onChange = s.notify
	db.canCommit = s.checkCommit
	db.metrics = s.Metrics
	db.sync = s.syncTracker()
	db.reserveStamp = s.reserveStamp
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

// moveDirAside renames a database's directory into a dated folder under
// AsideDir.
func (s *Store) moveDirAside(name string) (string, error) {
	s.Metrics.movedAsideOne()
	if err := os.MkdirAll(s.AsideDir(), 0o755); err != nil {
		return "", err
	}
	dst := filepath.Join(s.AsideDir(), fmt.Sprintf("%s.%s", name, time.Now().UTC().Format("20060102T150405.000000000Z")))
	if err := os.Rename(filepath.Join(s.DBDir(), name), dst); err != nil {
		return "", fmt.Errorf("move %q aside: %w", name, err)
	}
	return dst, nil
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
	if _, _, ok := SplitSuperJournal(name); ok {
		return fmt.Errorf("%w: %q is named like a SQLite super-journal", ErrInvalidName, name)
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
	s.notify()
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
	if s.sync != nil {
		s.sync.forget(name)
	}
	if err := os.RemoveAll(db.dir); err != nil {
		return fmt.Errorf("remove database %q: %w", name, err)
	}
	s.Logger.Info("database deleted", slog.String(LogKeyDB, name), slog.String("pos", db.pos.String()))
	s.notify()
	return nil
}

// DiscardEmpty deletes a database that holds nothing: no transaction and
// no bytes, as a file that was created in the mount and then refused
// leaves it. It reports whether it did.
func (s *Store) DiscardEmpty(name string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	db, ok := s.dbs[name]
	if !ok {
		return false, nil
	}
	if !db.closeIfEmpty() {
		return false, nil
	}
	delete(s.dbs, name)
	if err := os.RemoveAll(db.dir); err != nil {
		return true, fmt.Errorf("remove database %q: %w", name, err)
	}
	s.Logger.Info("removed an empty database, never written through SQLite", slog.String(LogKeyDB, name))
	s.notify()
	return true, nil
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
			n, err := db.retain(time.Now().Add(-s.Retention))
			if err != nil {
				s.Logger.Warn("retention", slog.String(LogKeyDB, db.name), slog.Any(LogKeyError, err))
			} else if n > 0 {
				s.Logger.Debug("retention removed ltx files", slog.String(LogKeyDB, db.name), slog.Int("n", n))
			}
		}
	}
}
