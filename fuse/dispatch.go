package fuse

import (
	"errors"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"syscall"

	"bazil.org/fuse"

	"github.com/litefs-project/litefs/replica"
)

// handle serves one request.
func (fs *FS) handle(req fuse.Request) {
	if fs.OnRequest != nil {
		fs.OnRequest(strings.TrimSuffix(reflect.TypeOf(req).Elem().Name(), "Request"))
	}
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
		// Writes reach the real file before they return; a close matters
		// only for a file copied into the mount. Opens and creates ask the
		// kernel not to send flushes for anything else (never ENOSYS: the
		// kernel would then send none, for any file).
		fs.flush(r)
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
	case errors.Is(err, errOverwrite):
		fs.Logger.Warn(op+" refused: "+err.Error()+" ("+n.name+" is a live database): to replace it with a database file, run litefs import -name "+
			n.name+" FILE, which checks the file and makes it one transaction; to copy a file in with cp, use a new name",
			slog.String(replica.LogKeyDB, n.name))
		return syscall.EACCES
	case errors.Is(err, replica.ErrSyncTimeout):
		// SQLite maps a failed write or unlink of its commit to an I/O
		// error (SQLITE_IOERR) and rolls the transaction back.
		if fs.readOnlyLog.Allow() {
			fs.Logger.Warn(op + " failed: " + err.Error() + "; SQLite reports \"disk I/O error\" and rolls the transaction back (are the candidates up?)")
		}
		return syscall.EIO
	case errors.Is(err, replica.ErrNotPageWrite):
		fs.Logger.Warn(op+" refused: "+err.Error()+
			"; only SQLite writes database files in the mount, and a plain file copied in under a new name is imported when closed: "+
			"to load a database file, copy it in (cp FILE MNT/new.db) or run litefs import -name DB FILE",
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
