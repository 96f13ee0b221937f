package fuse

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// SQLite's lock bytes: PENDING, then RESERVED, then the 510-byte SHARED range.
const (
	pendingByte = 0x40000000
	lockBytes   = 512 // PENDING + RESERVED + SHARED range
)

// LockDB takes SQLite's locks on the named database through the mount, as a
// writer holding EXCLUSIVE does, so no SQLite connection in any process can
// read or write it until unlock is called. It waits for current readers and
// writers to finish, or returns ctx's error.
//
// The locks are open file description locks on the mount: the kernel keeps
// them with SQLite's own POSIX locks, so they exclude each other.
func (fs *FS) LockDB(ctx context.Context, name string) (unlock func() error, err error) {
	f, err := os.OpenFile(filepath.Join(fs.Path, name), os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: pendingByte, Len: lockBytes}
	for {
		err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
		if err == nil {
			return f.Close, nil // closing the description releases its locks
		}
		if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) {
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("lock %s: %w", name, context.Cause(ctx))
		case <-time.After(time.Millisecond):
		}
	}
}
