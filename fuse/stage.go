package fuse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"

	"bazil.org/fuse"

	"github.com/litefs-project/litefs/replica"
)

// A plain file copied into the mount under a new name (cp, cat >, a
// download) is an import. SQLite never opens a database write-only and
// always writes whole pages; a file created write-only, or whose first
// write to a new, empty database is not a page but starts like a SQLite
// file, is staged: its writes go to a temporary file under the data
// directory's tmp, and the name shows that file until it is closed. At
// the copying process's first close (the kernel's flush from that process,
// or the release of its handle where flushes are not sent; other
// processes' opens and closes do not count) it is validated as litefs
// import validates a file and becomes the
// database in one transaction (replica.Store.Import), or it disappears,
// close(2) fails with EINVAL and the log says why and what to do. Nothing
// refused leaves an entry behind.
//
// A file written over a database with transactions is refused at once
// with EACCES (a live database is never half-overwritten), pointing to
// litefs import.

// sqliteMagic starts every SQLite database file.
var sqliteMagic = []byte("SQLite format 3\x00")

// openNoFlush is FOPEN_NOFLUSH: the kernel sends no flush when a file
// opened with it is closed. Only staged files need their close seen, so
// every other open and create says so; files the kernel opens without
// asking (see FS.open) still send a flush, answered at once.
const openNoFlush fuse.OpenResponseFlags = 1 << 5

// errOverwrite is returned for a plain write to a database that has
// transactions.
var errOverwrite = errors.New("a database with transactions is never overwritten by a plain file")

// staged is a file being copied into the mount, kept aside until closed.
type staged struct {
	f       *os.File // under the store's TempDir; removed once imported or refused
	owner   uint32   // the process that created it or wrote to it first
	written bool     // any byte written
}

// processOf returns the process (thread group) of the thread that made a
// request, or tid itself if it cannot be read: the kernel reports the
// thread, and a program may close a file from another thread than the one
// that opened it.
func processOf(tid uint32) uint32 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", tid))
	if err != nil {
		return tid
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Tgid:"); ok {
			if id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
				return uint32(id)
			}
		}
	}
	return tid
}

// stage returns the node's staged file, or nil if it is not one.
func (n *node) stage() *staged {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.staged
}

// takeStage returns the node's staged file and makes the node no longer
// staged, so that one close imports it.
func (n *node) takeStage() *staged {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.staged
	n.staged = nil
	return st
}

// createStaged creates the node of a new name written as a plain file:
// an empty database, as any create makes, whose writes are staged.
func (fs *FS) createStaged(name string, pid uint32) (*node, error) {
	f, err := os.CreateTemp(fs.Store.TempDir(), "cp-*.db")
	if err != nil {
		return nil, err
	}
	n, err := fs.createNode(name, kindDB, name)
	if err != nil {
		_ = f.Close()
		_ = os.Remove(f.Name())
		return nil, err
	}
	n.mu.Lock()
	n.staged = &staged{f: f, owner: processOf(pid)}
	n.mu.Unlock()
	fs.Logger.Info("a file is being copied into the mount: it becomes the database once closed, if it is one",
		slog.String(replica.LogKeyDB, name), slog.String("tmp", f.Name()))
	return n, nil
}

// stageEmpty turns the empty database of n into a staged file, as the
// first write to it (p at off) is not SQLite's. It reports whether it did;
// the database must be empty and the write the start of a SQLite file.
func (fs *FS) stageEmpty(n *node, p []byte, off int64, pid uint32) bool {
	if off != 0 || !looksSQLite(p) {
		return false
	}
	f, err := os.CreateTemp(fs.Store.TempDir(), "cp-*.db")
	if err != nil {
		return false
	}
	if removed, err := fs.Store.DiscardEmpty(n.db.Name()); !removed || err != nil {
		_ = f.Close()
		_ = os.Remove(f.Name())
		return false
	}
	n.mu.Lock()
	n.staged = &staged{f: f, owner: processOf(pid)}
	n.mu.Unlock()
	fs.Logger.Info("a file is being copied into the mount: it becomes the database once closed, if it is one",
		slog.String(replica.LogKeyDB, n.name), slog.String("tmp", f.Name()))
	return true
}

// looksSQLite reports whether p, written at offset 0, can start a SQLite
// database file.
func looksSQLite(p []byte) bool {
	k := min(len(p), len(sqliteMagic))
	return k > 0 && bytes.Equal(p[:k], sqliteMagic[:k])
}

// writeStaged writes to a staged file. A first write that cannot start a
// SQLite file is refused at once, and the name disappears.
func (fs *FS) writeStaged(n *node, st *staged, p []byte, off int64) (int, error) {
	if off == 0 && !looksSQLite(p) {
		if st := n.takeStage(); st != nil {
			_, _ = fs.Store.DiscardEmpty(n.name)
			fs.dropStaged(n, st)
			go fs.invalidateEntries(append(fs.unlinkCompanions(n.name), n.name))
		}
		fs.Logger.Warn("copy into the mount refused: the file does not start with \"SQLite format 3\", so it is not a SQLite database; "+
			"only databases are kept in the mount, and nothing was left behind",
			slog.String(replica.LogKeyDB, n.name))
		return 0, syscall.EINVAL
	}
	nw, err := st.f.WriteAt(p, off)
	if nw > 0 {
		n.mu.Lock()
		st.written = true
		n.mu.Unlock()
	}
	return nw, err
}

// dropStaged removes a staged file and its name, if the name is still
// the staged file's.
func (fs *FS) dropStaged(n *node, st *staged) {
	_ = st.f.Close()
	_ = os.Remove(st.f.Name())
	fs.mu.Lock()
	if fs.names[n.name] == n {
		fs.unlink(n.name)
	}
	fs.mu.Unlock()
}

// finishStaged makes a closed staged file the database, or removes it; it
// returns the errno close(2) then reports. Called for every flush (by
// thread pid) and release (last set: no descriptor is left); a node that
// is not staged (or no longer) returns nil. A flush from another process
// than the one copying the file (a reader that opened it meanwhile) is
// not its close.
//
// A close before anything was written (touch; a shell that opens the file
// and moves the descriptor with dup2 before writing to it) leaves the
// empty database that the create made, which its first write stages again.
func (fs *FS) finishStaged(n *node, pid uint32, last bool) error {
	n.mu.Lock()
	st := n.staged
	if st != nil && !last && st.owner != processOf(pid) {
		st = nil
	}
	if st != nil {
		n.staged = nil
	}
	n.mu.Unlock()
	if st == nil {
		return nil
	}
	n.mu.Lock()
	written := st.written
	n.mu.Unlock()
	if !written {
		_ = st.f.Close()
		_ = os.Remove(st.f.Name())
		return nil
	}
	// From here the name is the store's again: the kernel must look it up.
	fs.mu.Lock()
	if fs.names[n.name] == n {
		fs.unlink(n.name)
	}
	fs.mu.Unlock()
	defer fs.invalidateEntries([]string{n.name})
	defer fs.dropStaged(n, st)

	fi, err := st.f.Stat()
	if err != nil {
		return fs.errno("copy into the mount "+n.name, nil, err)
	}
	// The empty database the name had (if the create made it).
	if _, err := fs.Store.DiscardEmpty(n.name); err != nil {
		return fs.errno("copy into the mount "+n.name, nil, err)
	}
	if db := fs.Store.DB(n.name); db != nil && db.Pos().TXID > 0 {
		// Created meanwhile (by SQLite or litefs import).
		fs.Logger.Warn("copy into the mount refused: "+n.name+" was created while the file was being copied; "+
			"to replace a database, run litefs import -name "+n.name+" FILE; the copy was discarded",
			slog.String(replica.LogKeyDB, n.name))
		return syscall.EACCES
	}
	res, err := fs.Store.Import(context.Background(), n.name, io.NewSectionReader(st.f, 0, fi.Size()), replica.ImportOptions{Gate: fs})
	switch {
	case err == nil:
		fs.markDirDirty(fs.Store.DBDir())
		fs.Logger.Info("a file copied into the mount became the database, as litefs import does",
			slog.String(replica.LogKeyDB, n.name), slog.String("pos", res.Position), slog.Int64("bytes", res.Size))
		return nil
	case errors.Is(err, replica.ErrInvalidDatabase), errors.Is(err, replica.ErrNotSQLite):
		fs.Logger.Warn(fmt.Sprintf("copy into the mount refused: %v; the copy was discarded and nothing was left behind. "+
			"Check the source with sqlite3 FILE 'PRAGMA integrity_check' (checkpoint a WAL-mode source first with "+
			"sqlite3 FILE 'PRAGMA wal_checkpoint(TRUNCATE)'), or send it with litefs import -name %s FILE", err, n.name),
			slog.String(replica.LogKeyDB, n.name))
		return syscall.EINVAL
	case errors.Is(err, replica.ErrNotPrimary):
		fs.Logger.Warn(fmt.Sprintf("copy into the mount refused: %v; the copy was discarded: copy it into the primary's mount, or run litefs import -name %s FILE", err, n.name),
			slog.String(replica.LogKeyDB, n.name))
		return syscall.EROFS
	}
	return fs.errno("copy into the mount "+n.name, nil, err)
}

// flush answers the kernel's flush at each close(2) of a file it sends
// them for: a staged file is imported at its first close.
func (fs *FS) flush(r *fuse.FlushRequest) {
	n := fs.node(r.Node)
	if n == nil {
		r.Respond()
		return
	}
	if err := fs.finishStaged(n, r.Pid, false); err != nil {
		r.RespondError(err)
		return
	}
	r.Respond()
}
