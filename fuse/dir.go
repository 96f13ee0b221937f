package fuse

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"bazil.org/fuse"
	"golang.org/x/sys/unix"

	"github.com/litefs-project/litefs/replica"
)

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
		if k == kindDB && r.Flags.IsWriteOnly() {
			// SQLite never opens a database write-only: a file being
			// copied in, staged until it is closed.
			n, err = fs.createStaged(r.Name, r.Pid)
		} else {
			n, err = fs.createNode(base, k, r.Name)
		}
		if err != nil {
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
	// A new database may turn out to be a file copied in (see stage.go),
	// whose close must be seen; SQLite's journals need no flush.
	flags := fuse.OpenKeepCache
	if k != kindDB {
		flags |= openNoFlush
	}
	r.Respond(&fuse.CreateResponse{
		LookupResponse: fuse.LookupResponse{Node: n.id, EntryValid: fs.CacheTTL, Attr: a},
		OpenResponse:   fuse.OpenResponse{Flags: flags},
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
	if st := n.takeStage(); st != nil {
		// A copy removed before it was closed: nothing to import.
		fs.dropStaged(n, st)
		r.Respond()
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
