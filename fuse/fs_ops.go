package fuse

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"bazil.org/fuse"
	"bazil.org/fuse/fuseutil"
	"golang.org/x/sys/unix"

	"github.com/litefs-project/litefs/replica"
)

// handle serves one request.
func (fs *FS) handle(req fuse.Request) {
	switch r := req.(type) {
	case *fuse.LookupRequest:
		fs.lookup(r)
	case *fuse.GetattrRequest:
		fs.getattr(r)
	case *fuse.SetattrRequest:
		fs.setattr(r)
	case *fuse.OpenRequest:
		fs.open(r)
	case *fuse.CreateRequest:
		fs.create(r)
	case *fuse.ReadRequest:
		fs.read(r)
	case *fuse.WriteRequest:
		fs.write(r)
	case *fuse.FlushRequest:
		// Nothing to flush: writes reach the real file before they return.
		// ENOSYS makes the kernel stop sending flushes on close.
		r.RespondError(syscall.ENOSYS)
	case *fuse.ReleaseRequest:
		fs.release(r)
	case *fuse.FsyncRequest:
		fs.fsync(r)
	case *fuse.RemoveRequest:
		fs.remove(r)
	case *fuse.ForgetRequest:
		fs.forget(r.Node, r.N)
		r.Respond()
	case *fuse.BatchForgetRequest:
		for _, item := range r.Forget {
			fs.forget(item.NodeID, item.N)
		}
		r.Respond()
	case *fuse.StatfsRequest:
		fs.statfs(r)
	case *fuse.MkdirRequest:
		fs.unsupported(r, "subdirectories are not supported: keep databases at the top of the mount")
	case *fuse.RenameRequest:
		fs.unsupported(r, "renaming is not supported: to load a database under a new name use sqlite3 NEW.db \".restore OLD.db\" in the mount")
	case *fuse.LinkRequest:
		fs.unsupported(r, "hard links are not supported")
	case *fuse.SymlinkRequest:
		fs.unsupported(r, "symbolic links are not supported")
	case *fuse.MknodRequest:
		fs.unsupported(r, "special files are not supported")
	case *fuse.InterruptRequest:
		r.Respond()
	case *fuse.DestroyRequest:
		r.Respond()
	default:
		// Access, xattrs, poll, fallocate: ENOSYS tells the kernel not to ask
		// again (for access and xattrs), so these cost at most one round trip.
		req.RespondError(syscall.ENOSYS)
	}
}

func (fs *FS) unsupported(req fuse.Request, what string) {
	fs.Logger.Warn(what, slog.String("op", req.String()))
	req.RespondError(syscall.EPERM)
}

// errno turns an error from the store into the errno a caller sees, and
// logs what the caller should know.
func (fs *FS) errno(op string, n *node, err error) error {
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
		if n != nil && n.db != nil && replica.IsDiskFull(err) {
			n.db.DiskFull(err) // logged once per episode, with where
		}
		return errno
	case errors.Is(err, os.ErrNotExist), errors.Is(err, replica.ErrDatabaseNotFound):
		return syscall.ENOENT
	case errors.Is(err, replica.ErrDatabaseExists):
		return syscall.EEXIST
	case errors.Is(err, replica.ErrInvalidName):
		fs.Logger.Warn(op + ": " + err.Error() + "; database names may not start with '.' or end in -journal, -wal, -shm or -pos")
		return syscall.EINVAL
	case errors.Is(err, replica.ErrReadOnly):
		// SQLite opens every connection for writing first, so this is
		// common and logged at most every few seconds.
		if fs.readOnlyLog.Allow() {
			primary := fs.Store.PrimaryHostname()
			if primary == "" {
				primary = "(not connected)"
			}
			fs.Logger.Info(op+" refused: this node is a replica, its databases are read-only (SQLite reports "+
				"\"attempt to write a readonly database\"); send writes to the primary", slog.String("primary", primary))
		}
		return syscall.EROFS
	case errors.Is(err, replica.ErrFenced):
		if fs.readOnlyLog.Allow() {
			fs.Logger.Warn(op + " refused: " + err.Error() + "; the node steps down unless a renewal succeeds (is Consul reachable?)")
		}
		return syscall.EROFS
	case errors.Is(err, replica.ErrNotPageWrite):
		fs.Logger.Warn(op+" refused: "+err.Error()+
			"; only SQLite may write database files in the mount: to load an existing database file, run sqlite3 on the mount's database with \".restore /path/to/file.db\" (litefs import, for manual recovery, is planned)",
			slog.String(replica.LogKeyDB, n.db.Name()))
		return syscall.EINVAL
	default:
		attrs := []any{slog.Any(replica.LogKeyError, err)}
		if n != nil && n.db != nil {
			attrs = append(attrs, slog.String(replica.LogKeyDB, n.db.Name()))
		}
		fs.Logger.Error(op+" failed", attrs...)
		return syscall.EIO
	}
}

// resolve returns the live node for name, creating it if the name exists.
// fs.mu must be held.
func (fs *FS) resolve(name string) *node {
	if name == primaryFile || name == lagFile {
		return fs.resolveSpecial(name)
	}
	base, k := parseName(name)
	db := fs.Store.DB(base)
	if n := fs.names[name]; n != nil {
		if n.db == db && (k != kindPos || n.pos == posContent(n.db)) {
			return n
		}
		// The database was replaced (deleted, or moved aside on a replica),
		// or its position moved: a new node shows what is there now.
		fs.unlink(name)
	}
	if db == nil {
		return nil
	}
	n := &node{name: name, kind: k, db: db}
	if k == kindPos {
		n.pos = posContent(db)
	}
	if isCompanion(k) {
		if _, err := os.Lstat(n.realPath()); err != nil {
			return nil
		}
	}
	fs.addNode(n)
	return n
}

// resolveSpecial returns the node of .primary or .lag, which exist only on
// a replica (.primary only while it is connected). fs.mu must be held.
func (fs *FS) resolveSpecial(name string) *node {
	exists := !fs.Store.IsPrimary() && (name == lagFile || fs.Store.PrimaryHostname() != "")
	n := fs.names[name]
	if !exists {
		if n != nil {
			fs.unlink(name)
		}
		return nil
	}
	if n == nil {
		n = &node{name: name, kind: kindPrimary}
		if name == lagFile {
			n.kind = kindLag
		}
		fs.addNode(n)
	}
	return n
}

// specialContent returns the content of .primary, .lag or a -pos file.
func (fs *FS) specialContent(n *node) string {
	switch n.kind {
	case kindPrimary:
		return fs.Store.PrimaryHostname() + "\n"
	case kindLag:
		return fmt.Sprintf("%d\n", fs.Store.Lag().Milliseconds())
	default:
		return n.pos
	}
}

func isSpecial(k kind) bool { return k == kindPos || k == kindPrimary || k == kindLag }

// addNode registers a new node as the live node of its name. fs.mu held.
func (fs *FS) addNode(n *node) {
	n.id = fs.nextNode
	fs.nextNode++
	fs.nodes[n.id] = n
	fs.names[n.name] = n
}

// unlink marks the live node of name gone. fs.mu held.
func (fs *FS) unlink(name string) {
	if n := fs.names[name]; n != nil {
		n.gone = true
		delete(fs.names, name)
		if n.nlookup == 0 {
			delete(fs.nodes, n.id)
			n.closeFile()
		}
	}
}

func (fs *FS) forget(id fuse.NodeID, count uint64) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n := fs.nodes[id]
	if n == nil {
		return
	}
	if count >= n.nlookup {
		n.nlookup = 0
	} else {
		n.nlookup -= count
	}
	if n.nlookup == 0 && n.gone {
		delete(fs.nodes, id)
		n.closeFile()
	}
}

func (fs *FS) node(id fuse.NodeID) *node {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.nodes[id]
}

// attr returns the attributes of n.
func (fs *FS) attr(n *node) (fuse.Attr, error) {
	a := fuse.Attr{Inode: uint64(n.id), Nlink: 1, Mode: 0o644, Valid: fs.CacheTTL, BlockSize: 4096}
	if isSpecial(n.kind) {
		a.Mode, a.Size, a.Valid = 0o444, uint64(len(fs.specialContent(n))), 0
		a.Mtime = time.Now()
		return a, nil
	}
	fi, err := os.Stat(n.realPath())
	if err != nil {
		return a, err
	}
	a.Size = uint64(fi.Size())
	a.Blocks = (a.Size + 511) / 512
	a.Mtime, a.Ctime, a.Atime = fi.ModTime(), fi.ModTime(), fi.ModTime()
	return a, nil
}

func (fs *FS) rootAttr() fuse.Attr {
	return fuse.Attr{Inode: uint64(fuse.RootID), Mode: os.ModeDir | 0o755, Nlink: 2, Valid: fs.CacheTTL,
		Mtime: fs.started, Ctime: fs.started, Atime: fs.started}
}

func posContent(db *replica.DB) string { return db.Pos().String() + "\n" }

func (fs *FS) lookup(r *fuse.LookupRequest) {
	if r.Node != fuse.RootID {
		r.RespondError(syscall.ENOENT)
		return
	}
	fs.mu.Lock()
	n := fs.resolve(r.Name)
	if n == nil {
		fs.mu.Unlock()
		// A cached negative entry: SQLite's check for a hot journal before
		// every read transaction then costs no round trip. A -pos file
		// appears when its database is created under another name, so its
		// absence is not cached.
		// Nor is the absence of a database, which a replica may receive at
		// any time, or of a special file.
		valid := fs.CacheTTL
		if base, k := parseName(r.Name); k == kindPos || fs.Store.DB(base) == nil {
			valid = 0
		}
		r.Respond(&fuse.LookupResponse{EntryValid: valid})
		return
	}
	n.nlookup++
	fs.mu.Unlock()
	a, err := fs.attr(n)
	if err != nil {
		r.RespondError(fs.errno("lookup", n, err))
		return
	}
	valid := fs.CacheTTL
	if isSpecial(n.kind) {
		valid = 0
	}
	r.Respond(&fuse.LookupResponse{Node: n.id, EntryValid: valid, Attr: a})
}

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
	switch n.kind {
	case kindDB:
		return n.db.Truncate(size)
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
	r.Respond(&fuse.OpenResponse{Flags: fuse.OpenKeepCache})
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

func (fs *FS) openDir(r *fuse.OpenRequest) {
	var buf []byte
	buf = fuse.AppendDirent(buf, fuse.Dirent{Inode: uint64(fuse.RootID), Name: ".", Type: fuse.DT_Dir})
	buf = fuse.AppendDirent(buf, fuse.Dirent{Inode: uint64(fuse.RootID), Name: "..", Type: fuse.DT_Dir})
	fs.mu.Lock()
	for _, db := range fs.Store.DBs() {
		// -pos files stay out of listings, so tools that copy or delete a
		// database with its companions (app.db*) do not trip over them;
		// they are found by name.
		for _, name := range []string{db.Name(), db.Name() + "-journal", db.Name() + "-wal", db.Name() + "-shm"} {
			if n := fs.resolve(name); n != nil {
				buf = fuse.AppendDirent(buf, fuse.Dirent{Inode: uint64(n.id), Name: name, Type: fuse.DT_File})
			}
		}
	}
	fs.mu.Unlock()
	r.Respond(&fuse.OpenResponse{Handle: fs.addHandle(&handle{dir: buf})})
}

func (fs *FS) addHandle(h *handle) fuse.HandleID {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	id := fs.nextFH
	fs.nextFH++
	fs.handles[id] = h
	return id
}

func (fs *FS) handleOf(id fuse.HandleID) *handle {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.handles[id]
}

func (fs *FS) create(r *fuse.CreateRequest) {
	if r.Node != fuse.RootID {
		r.RespondError(syscall.ENOENT)
		return
	}
	base, k := parseName(r.Name)
	if k == kindPos || r.Name == primaryFile || r.Name == lagFile {
		r.RespondError(syscall.EPERM)
		return
	}
	if (k == kindDB || k == kindJournal || k == kindSuperJournal) && !fs.Store.IsPrimary() {
		err := fs.errno("create "+r.Name, nil, replica.ErrReadOnly)
		if k == kindJournal || k == kindSuperJournal {
			// Only a connection opened while this node was the primary
			// gets here (others opened the database read-only). SQLite
			// reports a journal it may not create for lack of access as
			// SQLITE_READONLY ("attempt to write a readonly database");
			// EROFS would make it "unable to open database file".
			err = syscall.EACCES
		}
		r.RespondError(err)
		return
	}
	fs.mu.Lock()
	n := fs.resolve(r.Name)
	fs.mu.Unlock()
	if n != nil && r.Flags&fuse.OpenExclusive != 0 {
		r.RespondError(syscall.EEXIST)
		return
	}
	if n == nil {
		var err error
		if n, err = fs.createNode(base, k, r.Name); err != nil {
			r.RespondError(fs.errno("create "+r.Name, nil, err))
			return
		}
	}
	if r.Flags&fuse.OpenTruncate != 0 {
		if err := fs.truncate(n, 0); err != nil {
			r.RespondError(fs.errno("truncate "+n.name, n, err))
			return
		}
	}
	a, err := fs.attr(n)
	if err != nil {
		r.RespondError(fs.errno("create", n, err))
		return
	}
	fs.mu.Lock()
	n.nlookup++
	fs.mu.Unlock()
	if k == kindSuperJournal {
		fs.failpoint(FailpointSuperJournalCreated, r.Pid)
	}
	r.Respond(&fuse.CreateResponse{
		LookupResponse: fuse.LookupResponse{Node: n.id, EntryValid: fs.CacheTTL, Attr: a},
		OpenResponse:   fuse.OpenResponse{Flags: fuse.OpenKeepCache},
	})
}

// createNode creates a database, or a companion file of an existing one.
func (fs *FS) createNode(base string, k kind, name string) (*node, error) {
	if k == kindDB {
		db, err := fs.Store.CreateDB(name)
		if err != nil {
			return nil, err
		}
		fs.markDirDirty(fs.Store.DBDir())
		fs.mu.Lock()
		defer fs.mu.Unlock()
		n := &node{name: name, kind: k, db: db}
		fs.addNode(n)
		return n, nil
	}
	db := fs.Store.DB(base)
	if db == nil {
		return nil, syscall.ENOENT
	}
	n := &node{name: name, kind: k, db: db}
	f, err := os.OpenFile(n.realPath(), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	fs.markDirDirty(filepath.Dir(n.realPath()))
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if cur := fs.names[name]; cur != nil {
		return cur, nil // created concurrently
	}
	fs.addNode(n)
	return n, nil
}

func (fs *FS) markDirDirty(dir string) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.dirtyDir[dir] = struct{}{}
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
	if n.kind == kindDB {
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
			fs.discardIfEmpty(n)
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

// unlinkCompanions marks the companion files of a deleted database gone
// and returns their names, for the kernel to forget.
func (fs *FS) unlinkCompanions(db string) []string {
	fs.mu.Lock()
	var names []string
	for _, s := range suffixes {
		names = append(names, db+s.suffix)
		fs.unlink(db + s.suffix)
	}
	fs.mu.Unlock()
	fs.markDirDirty(fs.Store.DBDir())
	return names
}

func (fs *FS) release(r *fuse.ReleaseRequest) {
	// Directory handles hold their listing, special files' handles their
	// content; created files hold nothing.
	fs.mu.Lock()
	delete(fs.handles, r.Handle)
	fs.mu.Unlock()
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
	switch {
	case isSpecial(n.kind):
	case n.kind == kindDB:
		err = n.db.Sync(datasync)
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

// syncDirs syncs the data directories whose entries changed since the last
// directory sync, which is what syncing the mount's one directory means.
func (fs *FS) syncDirs() error {
	fs.mu.Lock()
	dirs := fs.dirtyDir
	fs.dirtyDir = make(map[string]struct{})
	fs.mu.Unlock()
	for dir := range dirs {
		d, err := os.Open(dir)
		if os.IsNotExist(err) {
			continue
		} else if err != nil {
			return err
		}
		err = d.Sync()
		_ = d.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func (fs *FS) remove(r *fuse.RemoveRequest) {
	if r.Node != fuse.RootID || r.Dir {
		r.RespondError(syscall.ENOENT)
		return
	}
	fs.mu.Lock()
	n := fs.resolve(r.Name)
	fs.mu.Unlock()
	if n == nil {
		r.RespondError(syscall.ENOENT)
		return
	}
	err := fs.checkWritable(n)
	if err != nil {
		r.RespondError(fs.errno("remove "+r.Name, n, err))
		return
	}
	switch n.kind {
	case kindDB:
		err = fs.Store.DeleteDB(n.db.Name())
		if err == nil {
			names := fs.unlinkCompanions(n.name)
			// The kernel may still cache the companion files' names. It
			// cannot take the invalidation while this unlink holds the
			// directory, so send it after responding.
			defer func() { go fs.invalidateEntries(names) }()
		}
	case kindJournal:
		if err = n.db.RemoveJournal(); err == nil {
			fs.failpoint(FailpointJournalFinalized, r.Pid)
		}
	case kindSuperJournal:
		_, suffix, _ := replica.SplitSuperJournal(n.name)
		if err = n.db.RemoveSuperJournal(suffix); err == nil {
			fs.failpoint(FailpointSuperJournalRemoved, r.Pid)
		}
	case kindWAL:
		err = n.db.RemoveWAL()
	default:
		err = os.Remove(n.realPath())
	}
	if err != nil {
		r.RespondError(fs.errno("remove "+r.Name, n, err))
		return
	}
	if n.kind != kindDB {
		fs.markDirDirty(filepath.Dir(n.realPath()))
	}
	fs.mu.Lock()
	fs.unlink(r.Name)
	fs.mu.Unlock()
	r.Respond()
}

// invalidateEntries tells the kernel to drop its cached entries for names.
func (fs *FS) invalidateEntries(names []string) {
	for _, name := range names {
		if err := fs.conn.InvalidateEntry(fuse.RootID, name); err != nil && !errors.Is(err, fuse.ErrNotCached) {
			fs.Logger.Warn("invalidate kernel entry", slog.String("name", name), slog.Any(replica.LogKeyError, err))
		}
	}
}

func (fs *FS) statfs(r *fuse.StatfsRequest) {
	var st unix.Statfs_t
	if err := unix.Statfs(fs.Store.Dir, &st); err != nil {
		r.RespondError(fs.errno("statfs", nil, err))
		return
	}
	r.Respond(&fuse.StatfsResponse{
		Blocks: st.Blocks, Bfree: st.Bfree, Bavail: st.Bavail, Files: st.Files, Ffree: st.Ffree,
		Bsize: uint32(st.Bsize), Namelen: 255, Frsize: uint32(st.Frsize),
	})
}
