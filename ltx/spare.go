package ltx

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// spareTarget is how many empty files a Log keeps ready for appends.
	spareTarget = 16
	// spareMax bounds the files a Log keeps for reuse, ready or not.
	spareMax = 4096
	// spareAge is how long a file retention gave back waits before it is
	// emptied for reuse: a reader that opened it before (a stream sending
	// it to a replica that is far behind) has finished by then. A reader
	// slower than that reads a short file, which fails its verification.
	spareAge = time.Minute
)

// spareSeq numbers spare files across the logs of a process.
var spareSeq atomic.Uint64

// spares keeps files ready for a Log's appends, which rename one into
// place rather than create a file: creating a file allocates an inode, and
// on ext4 that gets slow when many files were deleted in the last minutes
// (it skips recently freed inodes), which is what retention does at the
// rate of commits. So files that retention would delete are kept and
// reused instead, and new ones are created in the background when none is
// left; a commit's path neither creates nor deletes a file.
type spares struct {
	dir    string
	wake   chan struct{}
	done   chan struct{} // closed to stop the refill
	exited chan struct{} // closed when the refill has stopped

	// Guarded by the Log's mu.
	ready []string    // empty files
	used  []usedSpare // files retention gave back, oldest first
}

type usedSpare struct {
	path string
	at   time.Time // when retention gave it back
}

// UseSpares makes the log take its new files from spares kept in dir,
// which must be on the log's filesystem and is the caller's to clean at
// start (a crash leaves spares there). Close stops it.
func (l *Log) UseSpares(dir string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spares != nil {
		return
	}
	sp := &spares{dir: dir, wake: make(chan struct{}, 1), done: make(chan struct{}), exited: make(chan struct{})}
	l.spares = sp
	go l.refill(sp)
	sp.poke()
}

// SparesReady returns how many spares are ready for appends.
func (l *Log) SparesReady() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spares == nil {
		return 0
	}
	return len(l.spares.ready)
}

func (sp *spares) poke() {
	select {
	case sp.wake <- struct{}{}:
	default:
	}
}

// refill empties the files retention gave back once they are spareAge
// old, and creates new ones until spareTarget are ready, each time it is
// poked or a given-back file comes of age, until the log stops using
// spares.
func (l *Log) refill(sp *spares) {
	defer close(sp.exited)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-sp.done:
			return
		case <-sp.wake:
		case <-timer.C:
		}
		next, ok := l.refillOnce(sp)
		if !ok {
			return
		}
		if next > 0 {
			timer.Reset(next)
		}
	}
}

// refillOnce makes spares ready and returns how long until the next
// given-back file comes of age (0: none waits); false once the log no
// longer uses sp.
func (l *Log) refillOnce(sp *spares) (time.Duration, bool) {
	for {
		l.mu.Lock()
		if l.spares != sp {
			l.mu.Unlock()
			return 0, false
		}
		var path string
		var wait time.Duration
		if len(sp.used) > 0 {
			if age := time.Since(sp.used[0].at); age >= spareAge {
				path = sp.used[0].path
				sp.used = sp.used[1:]
			} else {
				wait = spareAge - age
			}
		}
		if path == "" && len(sp.ready) >= spareTarget {
			l.mu.Unlock()
			return wait, true
		}
		l.mu.Unlock()
		if path == "" {
			path = filepath.Join(sp.dir, fmt.Sprintf("spare-%d.ltx", spareSeq.Add(1)))
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
			if err != nil {
				return wait, true // appends create their own files meanwhile
			}
			_ = f.Close()
		} else if err := os.Truncate(path, 0); err != nil {
			_ = os.Remove(path)
			continue
		}
		l.mu.Lock()
		kept := l.spares == sp
		if kept {
			sp.ready = append(sp.ready, path)
		}
		l.mu.Unlock()
		if !kept {
			_ = os.Remove(path)
			return 0, false
		}
	}
}

// takeSpare renames a ready spare into place at path, which it never
// replaces, and opens it for writing; nil if none is ready (the caller
// creates the file). l.mu held.
func (l *Log) takeSpare(path string) *os.File {
	sp := l.spares
	if sp == nil {
		return nil
	}
	defer sp.poke()
	for len(sp.ready) > 0 {
		spare := sp.ready[0] // the oldest first
		sp.ready = sp.ready[1:]
		if err := unix.Renameat2(unix.AT_FDCWD, spare, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE); err != nil {
			_ = os.Remove(spare)
			switch {
			case errors.Is(err, unix.EEXIST):
				return nil // the caller's create reports it
			case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EXDEV), errors.Is(err, unix.ENOSYS):
				_ = l.stopSpares() // the filesystem cannot do it: create files
				return nil
			}
			continue
		}
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			_ = os.Remove(path)
			return nil
		}
		return f
	}
	return nil
}

// discard removes the log file at path, or keeps it as a spare to reuse.
// l.mu held.
func (l *Log) discard(path string) error {
	if sp := l.spares; sp != nil && len(sp.ready)+len(sp.used) < spareMax {
		spare := filepath.Join(sp.dir, fmt.Sprintf("spare-%d.ltx", spareSeq.Add(1)))
		if err := os.Rename(path, spare); err == nil {
			sp.used = append(sp.used, usedSpare{path: spare, at: time.Now()})
			sp.poke()
			return nil
		}
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return err
	}
	return nil
}

// stopSpares stops the refill and removes the spares; it returns a
// channel closed once the refill has stopped, to wait on without l.mu
// (nil if there were no spares). l.mu held.
func (l *Log) stopSpares() <-chan struct{} {
	sp := l.spares
	if sp == nil {
		return nil
	}
	l.spares = nil
	close(sp.done)
	for _, path := range sp.ready {
		_ = os.Remove(path)
	}
	for _, u := range sp.used {
		_ = os.Remove(u.path)
	}
	return sp.exited
}
