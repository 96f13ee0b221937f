package fuse

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"syscall"

	"bazil.org/fuse"
	"bazil.org/fuse/fuseutil"
	"golang.org/x/sys/unix"

	"github.com/litefs-project/litefs/replica"
)

func (fs *FS) getattr(r *fuse.GetattrRequest) {
	if r.Node == fuse.RootID {
		r.Respond(&fuse.GetattrResponse{Attr: fs.rootAttr()})
		return
	}
	n := fs.node(r.Node)
	if n == nil {
		r.RespondError(syscall.ENOENT)
		return
	}
	a, err := fs.attr(n)
	if err != nil {
		r.RespondError(fs.errno("getattr", n, err))
		return
	}
	r.Respond(&fuse.GetattrResponse{Attr: a})
}

func (fs *FS) setattr(r *fuse.SetattrRequest) {
	if r.Node == fuse.RootID {
		r.Respond(&fuse.SetattrResponse{Attr: fs.rootAttr()})
		return
	}
	n := fs.node(r.Node)
	if n == nil {
		r.RespondError(syscall.ENOENT)
		return
	}
	if r.Valid.Size() {
		if err := fs.truncate(n, int64(r.Size)); err != nil {
			r.RespondError(fs.errno("truncate "+n.name, n, err))
			return
		}
	}
	// Mode, owner and times are accepted and not kept: the mount's files
	// take their attributes from the data directory.
	a, err := fs.attr(n)
	if err != nil {
		r.RespondError(fs.errno("setattr", n, err))
		return
	}
	r.Respond(&fuse.SetattrResponse{Attr: a})
}

func (fs *FS) truncate(n *node, size int64) error {
	if err := fs.checkWritable(n); err != nil {
		return err
	}
	if st := n.stage(); st != nil {
		return st.f.Truncate(size)
	}
	switch n.kind {
	case kindDB:
		if err := n.db.Truncate(size); errors.Is(err, replica.ErrNotPageWrite) && n.db.Pos().TXID > 0 {
			return fmt.Errorf("%w: %w", errOverwrite, err)
		} else if err != nil {
			return err
		}
		return nil
	case kindJournal:
		return n.db.TruncateJournal(size)
	case kindWAL:
		return n.db.TruncateWAL(size)
	}
	return os.Truncate(n.realPath(), size)
}

// open answers ENOSYS for files: the kernel then treats every later open
// of a file as done, sends no open or release requests, and keeps the page
// cache across opens. SQLite opens a journal for every transaction in
// DELETE mode and to check for a hot journal before every read in PERSIST
// mode, so this takes round trips off both paths. Reads and writes name
// the node; companion files share one real file per node.
func (fs *FS) open(r *fuse.OpenRequest) {
	if r.Node == fuse.RootID {
		fs.openDir(r)
		return
	}
	if fs.NoOpen {
		r.RespondError(syscall.ENOSYS)
		return
	}
	n := fs.node(r.Node)
	if n == nil {
		r.RespondError(syscall.ENOENT)
		return
	}
	// The node itself opens databases for writing to take their locks.
	if !r.Flags.IsReadOnly() && !isSelf(r.Pid) {
		if err := fs.checkWritable(n); err != nil {
			// SQLite opens the database read-only instead, and a write
			// then fails with SQLITE_READONLY.
			r.RespondError(fs.errno("open "+n.name+" for writing", n, err))
			return
		}
	}
	if isSpecial(n.kind) {
		id := fs.addHandle(&handle{special: []byte(fs.specialContent(n))})
		r.Respond(&fuse.OpenResponse{Handle: id, Flags: fuse.OpenDirectIO})
		return
	}
	if n.stage() != nil {
		// Another open of a file being copied in: its release is not
		// the copy's close (see FS.release).
		r.Respond(&fuse.OpenResponse{Handle: fs.addHandle(&handle{}), Flags: fuse.OpenKeepCache | openNoFlush})
		return
	}
	r.Respond(&fuse.OpenResponse{Flags: fuse.OpenKeepCache | openNoFlush})
}

// isSelf reports whether the thread that made a request belongs to this
// process (the kernel reports the thread, not the process).
func isSelf(tid uint32) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
	return err == nil
}

// checkWritable refuses changes to special files, and to databases and
// their journals on a replica.
func (fs *FS) checkWritable(n *node) error {
	switch {
	case isSpecial(n.kind):
		return syscall.EPERM
	case (n.kind == kindDB || n.kind == kindJournal || n.kind == kindWAL || n.kind == kindSuperJournal) && !fs.Store.IsPrimary():
		return replica.ErrReadOnly
	}
	return nil
}

func (fs *FS) read(r *fuse.ReadRequest) {
	if r.Dir {
		h := fs.handleOf(r.Handle)
		if h == nil {
			r.RespondError(syscall.EBADF)
			return
		}
		resp := &fuse.ReadResponse{Data: make([]byte, 0, r.Size)}
		fuseutil.HandleRead(r, resp, h.dir)
		r.Respond(resp)
		return
	}
	n := fs.node(r.Node)
	if n == nil {
		r.RespondError(syscall.ESTALE)
		return
	}
	if isSpecial(n.kind) {
		content := []byte(fs.specialContent(n))
		if h := fs.handleOf(r.Handle); h != nil && h.special != nil {
			content = h.special
		}
		resp := &fuse.ReadResponse{Data: make([]byte, 0, r.Size)}
		fuseutil.HandleRead(r, resp, content)
		r.Respond(resp)
		return
	}
	buf := make([]byte, r.Size)
	var (
		nr  int
		err error
	)
	if st := n.stage(); st != nil {
		nr, err = st.f.ReadAt(buf, r.Offset)
	} else if n.kind == kindDB {
		nr, err = n.db.ReadAt(buf, r.Offset)
	} else {
		var f *os.File
		if f, err = n.file(); err == nil {
			nr, err = f.ReadAt(buf, r.Offset)
		}
	}
	if err != nil && !errors.Is(err, io.EOF) {
		r.RespondError(fs.errno("read "+n.name, n, err))
		return
	}
	r.Respond(&fuse.ReadResponse{Data: buf[:nr]})
}

func (fs *FS) write(r *fuse.WriteRequest) {
	n := fs.node(r.Node)
	if n == nil {
		r.RespondError(syscall.ESTALE)
		return
	}
	var (
		nw  int
		err error
	)
	if err := fs.checkWritable(n); err != nil {
		r.RespondError(fs.errno("write "+n.name, n, err))
		return
	}
	if st := n.stage(); st != nil {
		if nw, err = fs.writeStaged(n, st, r.Data, r.Offset); err != nil {
			r.RespondError(fs.errno("write "+n.name, nil, err))
			return
		}
		r.Respond(&fuse.WriteResponse{Size: nw})
		return
	}
	var f *os.File
	if n.kind != kindDB {
		if f, err = n.file(); err != nil {
			r.RespondError(fs.errno("write "+n.name, n, err))
			return
		}
	}
	switch n.kind {
	case kindDB:
		if nw, err = n.db.WriteAt(r.Data, r.Offset); errors.Is(err, replica.ErrNotPageWrite) {
			switch {
			case n.db.Pos().TXID > 0:
				err = fmt.Errorf("%w: %w", errOverwrite, err)
			case fs.stageEmpty(n, r.Data, r.Offset, r.Pid):
				st := n.stage()
				if nw, err = fs.writeStaged(n, st, r.Data, r.Offset); err != nil {
					r.RespondError(fs.errno("write "+n.name, nil, err))
					return
				}
				r.Respond(&fuse.WriteResponse{Size: nw})
				return
			default:
				fs.discardIfEmpty(n)
			}
		}
	case kindJournal:
		nw, err = n.db.WriteJournalAt(f, r.Data, r.Offset)
	case kindWAL:
		nw, err = n.db.WriteWALAt(f, r.Data, r.Offset)
	default:
		nw, err = f.WriteAt(r.Data, r.Offset)
	}
	if err != nil {
		r.RespondError(fs.errno("write "+n.name, n, err))
		return
	}
	r.Respond(&fuse.WriteResponse{Size: nw})
}

// discardIfEmpty removes the database of n if a refused first write left
// it empty, so that a file copied into the mount leaves nothing behind.
func (fs *FS) discardIfEmpty(n *node) {
	removed, err := fs.Store.DiscardEmpty(n.db.Name())
	if err != nil {
		fs.Logger.Warn("remove refused database", slog.String(replica.LogKeyDB, n.db.Name()), slog.Any(replica.LogKeyError, err))
	}
	if !removed {
		return
	}
	fs.mu.Lock()
	fs.unlink(n.name)
	fs.mu.Unlock()
	go fs.invalidateEntries(append(fs.unlinkCompanions(n.name), n.name))
}

func (fs *FS) release(r *fuse.ReleaseRequest) {
	// Directory handles hold their listing, special files' handles their
	// content; created files hold nothing.
	fs.mu.Lock()
	delete(fs.handles, r.Handle)
	fs.mu.Unlock()
	if !r.Dir && r.Handle == 0 {
		// A staged file's close is seen here where no flush was sent;
		// handles other than 0 are opens made while it was staged.
		if n := fs.node(r.Node); n != nil {
			if err := fs.finishStaged(n, r.Pid, true); err != nil {
				r.RespondError(err)
				return
			}
		}
	}
	r.Respond()
}

func (fs *FS) fsync(r *fuse.FsyncRequest) {
	if r.Dir {
		if err := fs.syncDirs(); err != nil {
			r.RespondError(fs.errno("fsync directory", nil, err))
			return
		}
		r.Respond()
		return
	}
	n := fs.node(r.Node)
	if n == nil {
		r.RespondError(syscall.ESTALE)
		return
	}
	datasync := r.Flags&1 != 0
	var err error
	st := n.stage()
	switch {
	case isSpecial(n.kind):
	case st != nil:
		err = st.f.Sync()
	case n.kind == kindDB:
		err = n.db.Sync(datasync)
	case n.kind == kindWAL:
		var f *os.File
		if f, err = n.file(); err == nil {
			err = n.db.SyncWAL(f, datasync)
		}
	default:
		var f *os.File
		if f, err = n.file(); err == nil {
			if datasync {
				err = unix.Fdatasync(int(f.Fd()))
			} else {
				err = f.Sync()
			}
		}
	}
	if err != nil {
		r.RespondError(fs.errno("fsync "+n.name, n, err))
		return
	}
	r.Respond()
}
