// Package fuse serves a replica.Store as a FUSE filesystem: a flat
// directory of SQLite databases, their journals, and a read-only <db>-pos
// file each. Database reads come from the kernel's page cache; writes pass
// through to replica.DB, which turns each commit into an LTX file.
//
// The filesystem takes no lock requests, so the kernel handles SQLite's
// POSIX locks itself: locking costs no round trip, locks work across
// processes, and the node can take a database's locks through its own mount
// (see LockDB).
package fuse

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"bazil.org/fuse"
	"golang.org/x/sync/errgroup"

	"github.com/litefs-project/litefs/replica"
)

// DefaultCacheTTL is how long the kernel may cache names and attributes.
// All changes pass through the mount, which keeps the kernel's view right;
// anything changed underneath is invalidated explicitly.
const DefaultCacheTTL = time.Hour

// FS is the filesystem over one store, mounted at Path.
type FS struct {
	// Path is the mount point.
	Path string
	// Store holds the databases served.
	Store *replica.Store
	// AllowOther lets users other than the mounting user use the mount.
	AllowOther bool
	// CacheTTL is how long the kernel caches names and attributes.
	CacheTTL time.Duration
	// NoOpen declines the kernel's open requests, which saves round trips
	// but leaves the filesystem unable to refuse an open for writing. Set
	// it only on a node that can never be a replica.
	NoOpen bool
	// Logger receives the filesystem's logs.
	Logger *slog.Logger
	// Failpoint, if set, is called after each step of a commit that crash
	// tests stop at, once the step is on disk and before SQLite hears of
	// it (so the process cannot go on to the next step first), with the
	// step and the process that made the request:
	// FailpointSuperJournalCreated, FailpointSuperJournalRemoved,
	// FailpointJournalFinalized.
	Failpoint func(step string, pid uint32)
	// OnRequest, if set, is told the kind of every request served
	// ("Write", "Fsync", ...), for the metrics.
	OnRequest func(kind string)

	conn    *fuse.Conn
	started time.Time

	mu       sync.Mutex
	nextNode fuse.NodeID
	nodes    map[fuse.NodeID]*node
	names    map[string]*node // the live node of each name
	nextFH   fuse.HandleID
	handles  map[fuse.HandleID]*handle
	dirtyDir map[string]struct{} // directories with entries not yet synced

	g errgroup.Group

	readOnlyLog rateLimit
}

// rateLimit allows one event per interval.
type rateLimit struct {
	mu   sync.Mutex
	last time.Time
}

func (l *rateLimit) Allow() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if time.Since(l.last) < 10*time.Second {
		return false
	}
	l.last = time.Now()
	return true
}

// NewFS returns a filesystem over store to be mounted at path.
func NewFS(path string, store *replica.Store) *FS {
	return &FS{
		Path:     path,
		Store:    store,
		CacheTTL: DefaultCacheTTL,
		Logger:   slog.Default(),
		nextNode: fuse.RootID + 1,
		nodes:    make(map[fuse.NodeID]*node),
		names:    make(map[string]*node),
		nextFH:   1,
		handles:  make(map[fuse.HandleID]*handle),
		dirtyDir: make(map[string]struct{}),
	}
}

// Steps of a commit that Failpoint is called after.
const (
	FailpointSuperJournalCreated = "super-journal-created"
	FailpointSuperJournalRemoved = "super-journal-removed" // the commit point of a transaction over several databases
	FailpointJournalFinalized    = "journal-finalized"     // deleted (DELETE mode): this database's commit
)

func (fs *FS) failpoint(step string, pid uint32) {
	if fs.Failpoint != nil {
		fs.Failpoint(step, pid)
	}
}

// Mount mounts the filesystem and serves it in the background. A stale
// mount left at Path by a crashed process is cleaned first.
func (fs *FS) Mount() error {
	if err := cleanStaleMount(fs.Path, fs.Logger); err != nil {
		return err
	}
	opts := []fuse.MountOption{fuse.FSName("litefs"), fuse.Subtype("litefs"), fuse.AsyncRead()}
	if fs.AllowOther {
		opts = append(opts, fuse.AllowOther())
	}
	conn, err := fuse.Mount(fs.Path, opts...)
	if err != nil {
		return fmt.Errorf("mount %s: %w", fs.Path, err)
	}
	fs.conn, fs.started = conn, time.Now()
	fs.g.Go(fs.serve)
	return nil
}

// Unmount unmounts the filesystem and waits for the server to stop.
// Safe to call twice.
func (fs *FS) Unmount() error {
	if fs.conn == nil {
		return nil
	}
	var err error
	for i := 0; i < 50; i++ {
		if err = fuse.Unmount(fs.Path); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // busy: a process is still in the mount
	}
	detached := false
	if err != nil {
		fs.Logger.Warn("mount busy (a process has a file or its working directory in it); detaching it lazily",
			slog.String("path", fs.Path), slog.Any("err", err))
		err = syscall.Unmount(fs.Path, syscall.MNT_DETACH)
		detached = err == nil
	}
	done := make(chan error, 1)
	go func() { done <- fs.g.Wait() }()
	select {
	case werr := <-done:
		if err == nil {
			err = werr
		}
	case <-time.After(5 * time.Second):
		// A lazily detached mount is served until its last user leaves;
		// stop serving: those users get ENOTCONN.
		if !detached {
			fs.Logger.Warn("fuse server did not stop after unmount", slog.String("path", fs.Path))
		}
	}
	if cerr := fs.conn.Close(); err == nil {
		err = cerr
	}
	fs.conn = nil
	return err
}

// readers is how many goroutines read and serve requests. Each serves its
// request itself rather than handing it to another goroutine, which saves a
// wake-up on every round trip; several keep slow requests (fsync, commit)
// from holding up the others.
const readers = 8

func (fs *FS) serve() error {
	var g errgroup.Group
	for i := 0; i < readers; i++ {
		g.Go(func() error {
			for {
				req, err := fs.conn.ReadRequest()
				if errors.Is(err, io.EOF) {
					return nil
				} else if err != nil {
					return fmt.Errorf("read fuse request: %w", err)
				}
				fs.handle(req)
			}
		})
	}
	err := g.Wait()
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, n := range fs.nodes {
		n.closeFile()
	}
	return err
}

// cleanStaleMount unmounts mounts at path whose server is gone (the kernel
// answers ENOTCONN), however many are stacked there, and creates path if it
// does not exist. A mount that still answers belongs to a running process
// and is an error.
func cleanStaleMount(path string, logger *slog.Logger) error {
	for i := 0; i < 16 && mountedAt(path); i++ {
		// Reading the directory always reaches the server; a stat can be
		// answered from the kernel's cache.
		_, err := os.ReadDir(path)
		if err == nil {
			return fmt.Errorf("%s is already mounted and served by a running process: stop it first", path)
		}
		if !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ECONNABORTED) {
			return fmt.Errorf("check existing mount at %s: %w", path, err)
		}
		logger.Warn("found a stale mount left by a crashed process; unmounting it", slog.String("path", path))
		if err := syscall.Unmount(path, syscall.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount stale mount %s: %w (run: fusermount3 -uz %s)", path, err, path)
		}
	}
	if _, err := os.Stat(path); os.IsNotExist(err) {
		return os.MkdirAll(path, 0o755)
	} else if err != nil {
		return err
	}
	return nil
}

// mountedAt reports whether something is mounted at path.
func mountedAt(path string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 4 && unescapeMountPath(fields[4]) == path {
			return true
		}
	}
	return false
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
