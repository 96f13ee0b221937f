package fuse

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"bazil.org/fuse"
	"golang.org/x/sys/unix"
)

// SQLite's lock bytes: PENDING, then RESERVED, then the 510-byte SHARED
// range in the database file; in the WAL index (-shm), WRITE, CKPT, RECOVER
// and READ0..4 at 120..127.
const (
	pendingByte = 0x40000000
	lockBytes   = 512 // PENDING + RESERVED + SHARED range

	walLockStart = 120
	walLockBytes = 8 // WRITE, CKPT, RECOVER, READ0..4

	// walIndexHeaderSize covers the two copies of the WAL index header,
	// which every connection compares before it trusts the index.
	walIndexHeaderSize = 96
)

// LockDB takes SQLite's locks on the named database through the mount, as a
// writer holding EXCLUSIVE does, so no SQLite connection in any process can
// read or write it until unlock is called. It waits for current readers and
// writers to finish, or returns ctx's error.
//
// The locks are open file description locks on the mount: the kernel keeps
// them with SQLite's own POSIX locks, so they exclude each other.
func (fs *FS) LockDB(ctx context.Context, name string) (unlock func() error, err error) {
	return lockRange(ctx, filepath.Join(fs.Path, name), pendingByte, lockBytes)
}

// LockWAL takes the WAL index's locks on the named database through the
// mount (WRITE, CKPT, RECOVER and every READ slot), which no connection in
// WAL mode can read, write or checkpoint without. It waits for current
// transactions to end, or returns ctx's error.
//
// If the database has no WAL index yet, no connection uses it in WAL mode,
// but the first one may be opening: it takes a SHARED lock on the database
// file before it creates the index and reads the schema, and keeps that
// lock while it stays open. So LockWAL takes the database's locks if they
// are free, which keeps such a connection out, and otherwise tries again
// (by then the index may exist). Without this, a first reader on a
// replica could read a transaction half applied ("database disk image is
// malformed"). A primary applies nothing under readers: it locks nothing
// then, as its caller (an import) takes the database's locks itself.
func (fs *FS) LockWAL(ctx context.Context, name string) (unlock func() error, err error) {
	for {
		unlock, err = lockRange(ctx, filepath.Join(fs.Path, name+"-shm"), walLockStart, walLockBytes)
		if !errors.Is(err, os.ErrNotExist) {
			return unlock, err
		}
		if fs.Store.IsPrimary() {
			// Only a replica applies transactions under readers; on a
			// primary the caller (an import) takes the database's
			// locks next, and SQLite on the mount needs them free.
			return func() error { return nil }, nil
		}
		if unlock, err = tryLockRange(filepath.Join(fs.Path, name), pendingByte, lockBytes); err == nil || !errors.Is(err, errLocked) {
			return unlock, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("lock %s: %w", name, context.Cause(ctx))
		case <-time.After(time.Millisecond):
		}
	}
}

// errLocked is returned by tryLockRange when another holds the range.
var errLocked = errors.New("locked by another")

// tryLockRange takes a write lock on n bytes at start of the file at path,
// an open file description lock, if no one holds any of them; errLocked if
// someone does.
func tryLockRange(path string, start, n int64) (unlock func() error, err error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", filepath.Base(path), &os.PathError{Op: "open", Path: path, Err: err})
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: start, Len: n}
	for {
		err = unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		_ = unix.Close(fd)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return nil, errLocked
		}
		return nil, fmt.Errorf("lock %s: %w", filepath.Base(path), err)
	}
	return func() error { return unix.Close(fd) }, nil
}

// lockRange takes a write lock on n bytes at start of the file at path, an
// open file description lock, waiting for it until ctx ends. The file is
// opened with a raw system call: an *os.File would register it with Go's
// network poller, whose epoll calls then send this very filesystem poll
// requests from a thread the whole process depends on.
func lockRange(ctx context.Context, path string, start, n int64) (unlock func() error, err error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", filepath.Base(path), &os.PathError{Op: "open", Path: path, Err: err})
	}
	closeFD := func() error { return unix.Close(fd) } // releases the description's locks
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: start, Len: n}
	// A blocking wait, not polling: SQLite's connections poll for locks,
	// so a waiter that polls too loses to a busy writer or reader again
	// and again, while a blocked waiter gets the lock as soon as it is free.
	done := make(chan error, 1)
	go func() {
		for {
			err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLKW, &lk)
			if !errors.Is(err, unix.EINTR) {
				done <- err
				return
			}
		}
	}()
	select {
	case err := <-done:
		if err != nil {
			_ = closeFD()
			return nil, fmt.Errorf("lock %s: %w", filepath.Base(path), err)
		}
		return closeFD, nil
	case <-ctx.Done():
		// The wait cannot be interrupted: let it finish, then let go.
		go func() {
			<-done
			_ = closeFD()
		}()
		return nil, fmt.Errorf("lock %s: %w", filepath.Base(path), context.Cause(ctx))
	}
}

// Invalidate makes every SQLite connection forget what it knows of the
// named database after the node changed its files underneath them: the
// kernel drops its cached pages and attributes of the database and its
// WAL, and the WAL index header is zeroed, so the next reader rebuilds the
// index from the WAL. The caller holds the locks (LockDB, LockWAL).
func (fs *FS) Invalidate(name string) error {
	fs.mu.Lock()
	var ids []fuse.NodeID
	for _, name := range []string{name, name + "-wal", name + "-shm"} {
		if n := fs.names[name]; n != nil {
			ids = append(ids, n.id)
		}
	}
	fs.mu.Unlock()
	for _, id := range ids {
		if err := fs.conn.InvalidateNode(id, 0, -1); err != nil && !errors.Is(err, fuse.ErrNotCached) {
			return fmt.Errorf("invalidate %s: %w", name, err)
		}
	}
	// A journal the node removed underneath the mount (stepping down drops
	// the journal of a transaction it refused or that had finished) must
	// not keep its node and the kernel's entry: SQLite would open it
	// read-only after its create was refused and write its journal header
	// through that descriptor ("disk I/O error: bad file descriptor").
	journal := name + "-journal"
	stale := false
	fs.mu.Lock()
	if n := fs.names[journal]; n != nil {
		if _, err := os.Lstat(n.realPath()); errors.Is(err, os.ErrNotExist) {
			fs.unlink(journal)
			stale = true
		}
	}
	fs.mu.Unlock()
	if stale {
		if err := fs.conn.InvalidateEntry(fuse.RootID, journal); err != nil && !errors.Is(err, fuse.ErrNotCached) {
			return fmt.Errorf("invalidate %s: %w", journal, err)
		}
	}
	// Through the mount, so that connections' mappings of the index see
	// it; with a raw descriptor, as in lockRange.
	fd, err := unix.Open(filepath.Join(fs.Path, name+"-shm"), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	} else if err != nil {
		return fmt.Errorf("reset wal index of %s: %w", name, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Size < walIndexHeaderSize+4 {
		return err
	}
	b := make([]byte, walIndexHeaderSize+4)
	if _, err := unix.Pread(fd, b, 0); err != nil {
		return fmt.Errorf("read wal index of %s: %w", name, err)
	}
	if _, err := unix.Pwrite(fd, nextWALIndexHeader(b), 0); err != nil {
		return fmt.Errorf("reset wal index of %s: %w", name, err)
	}
	return nil
}

// nextWALIndexHeader returns the WAL index header (both copies) that makes
// every connection drop its cache, given the index's first bytes b (the
// header and the checkpoint's backfill count). SQLite keeps its cache while
// the header is unchanged, so zeroing it is not enough: the first reader
// rebuilds it from the WAL, and for an empty WAL, which a replica's always
// is after an apply, the rebuilt header equals the one the others cached.
// For an empty, fully backfilled WAL the header is kept with its change
// counter moved on and its checksum redone, as a SQLite writer does at
// each commit; anything else is zeroed, and rebuilt from the WAL.
func nextWALIndexHeader(b []byte) []byte {
	const (
		iChange = 8  // u32: the change counter
		isInit  = 12 // u8
		mxFrame = 16 // u32: frames in the WAL
		cksum   = 40 // two u32: checksum of the 40 bytes before
		hdrLen  = 48 // one copy
	)
	e := binary.NativeEndian // the index is in the host's byte order
	h := b[:hdrLen]
	backfill := e.Uint32(b[walIndexHeaderSize:])
	if !bytes.Equal(h, b[hdrLen:2*hdrLen]) || h[isInit] == 0 || e.Uint32(h[mxFrame:]) != 0 || backfill != 0 ||
		walIndexChecksum(h[:cksum]) != [2]uint32{e.Uint32(h[cksum:]), e.Uint32(h[cksum+4:])} {
		return make([]byte, walIndexHeaderSize)
	}
	out := make([]byte, hdrLen, walIndexHeaderSize)
	copy(out, h)
	e.PutUint32(out[iChange:], e.Uint32(h[iChange:])+1)
	sum := walIndexChecksum(out[:cksum])
	e.PutUint32(out[cksum:], sum[0])
	e.PutUint32(out[cksum+4:], sum[1])
	return append(out, out...)
}

// walIndexChecksum is SQLite's WAL checksum over b in native byte order.
func walIndexChecksum(b []byte) [2]uint32 {
	var s1, s2 uint32
	for i := 0; i+8 <= len(b); i += 8 {
		s1 += binary.NativeEndian.Uint32(b[i:]) + s2
		s2 += binary.NativeEndian.Uint32(b[i+4:]) + s1
	}
	return [2]uint32{s1, s2}
}

// Forget drops the kernel's cached entries for a database and its
// companion files, after the node created or deleted it underneath the
// mount. It must not be called while holding a lock that a request
// handler may wait for: the kernel takes the directory's lock for it.
func (fs *FS) Forget(name string) error {
	for _, name := range []string{name, name + "-journal", name + "-wal", name + "-shm", name + "-pos"} {
		if err := fs.conn.InvalidateEntry(fuse.RootID, name); err != nil && !errors.Is(err, fuse.ErrNotCached) {
			return fmt.Errorf("invalidate %s: %w", name, err)
		}
	}
	return nil
}

// Lock implements replica.Gate: LockWAL for a database in WAL mode (whose
// connections hold SHARED on the database while open), LockDB otherwise.
func (fs *FS) Lock(ctx context.Context, name string, wal bool) (unlock func() error, err error) {
	if wal {
		return fs.LockWAL(ctx, name)
	}
	return fs.LockDB(ctx, name)
}

// LockWrites takes the first lock every writer needs, RESERVED on the
// database and WRITE in its WAL index, so that no SQLite connection can
// start a write transaction until unlock is called; readers go on. It
// waits for a write transaction in progress to end, or returns ctx's error.
func (fs *FS) LockWrites(ctx context.Context, name string) (unlock func() error, err error) {
	unlockDB, err := lockRange(ctx, filepath.Join(fs.Path, name), pendingByte+1, 1)
	if err != nil {
		return nil, err
	}
	unlockWAL, err := lockRange(ctx, filepath.Join(fs.Path, name+"-shm"), walLockStart, 1)
	if errors.Is(err, os.ErrNotExist) {
		return unlockDB, nil
	} else if err != nil {
		_ = unlockDB()
		return nil, err
	}
	return func() error {
		err := unlockWAL()
		if derr := unlockDB(); err == nil {
			err = derr
		}
		return err
	}, nil
}
