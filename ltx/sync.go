package ltx

import (
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// syncHook, if set, is called after every sync the node makes of a file or
// directory in its data directory, with the synced file. Crash tests set
// it to record what a crash of the machine would keep.
var syncHook atomic.Pointer[func(f *os.File)]

// SetSyncHook sets the function called after every successful sync made
// through Sync or SyncDir; nil removes it.
func SetSyncHook(fn func(f *os.File)) {
	if fn == nil {
		syncHook.Store(nil)
		return
	}
	syncHook.Store(&fn)
}

// Sync makes f durable (fsync) and tells the sync hook.
func Sync(f *os.File) error {
	if err := f.Sync(); err != nil {
		return err
	}
	if fn := syncHook.Load(); fn != nil {
		(*fn)(f)
	}
	return nil
}

// SyncData makes f's data durable (fdatasync: metadata other than its size
// may stay behind) and tells the sync hook.
func SyncData(f *os.File) error {
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return err
	}
	if fn := syncHook.Load(); fn != nil {
		(*fn)(f)
	}
	return nil
}

// SyncFS makes files, all on one filesystem, durable with one syncfs(2)
// of that filesystem, and tells the sync hook of each.
func SyncFS(files []*os.File) error {
	if len(files) == 0 {
		return nil
	}
	if err := unix.Syncfs(int(files[0].Fd())); err != nil {
		return err
	}
	if fn := syncHook.Load(); fn != nil {
		for _, f := range files {
			(*fn)(f)
		}
	}
	return nil
}
