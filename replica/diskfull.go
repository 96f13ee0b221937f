package replica

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/litefs-project/litefs/checksum"
)

// IsDiskFull reports whether err says the filesystem has no space left
// (ENOSPC) or the user's quota is used up (EDQUOT).
func IsDiskFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// diskFullRepeat is how often a disk that stays full is logged again.
const diskFullRepeat = time.Minute

// diskRoomMax bounds the free space that ends an episode of a full disk;
// on a filesystem smaller than 8 times that, an eighth of it does.
const diskRoomMax = 1 << 20

// diskFull follows episodes of a full disk, for one database on a primary
// or for the replication stream of a replica. The first failure of an
// episode is logged, with where the disk is full; while it lasts, failures
// are logged again at most every diskFullRepeat; its end is logged once.
// An episode ends at the first success with room to spare on the
// filesystem, not at a success that only squeezed into what was left: a
// disk that hovers at full is one episode.
type diskFull struct {
	active atomic.Bool // an episode is under way; read without mu on hot paths

	mu       sync.Mutex
	since    time.Time // start of the episode
	logged   time.Time // last line about it
	failures int       // failures in the episode
}

// fail records a failure for lack of space in dir (the directory whose
// filesystem is full) and logs it if it starts an episode, or if the last
// line is older than diskFullRepeat. msg says what is affected and what
// happens next.
func (d *diskFull) fail(logger *slog.Logger, dir string, err error, msg string, attrs ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	start := !d.active.Load()
	if start {
		d.active.Store(true)
		d.since, d.failures = now, 0
	}
	d.failures++
	if !start && now.Sub(d.logged) < diskFullRepeat {
		return
	}
	d.logged = now
	attrs = append(attrs, slog.String(LogKeyPath, failedPath(err, dir)), slog.String("dir", dir))
	if free, size, ok := diskSpace(dir); ok {
		attrs = append(attrs, slog.Int64("free_bytes", free), slog.Int64("fs_bytes", size))
	}
	attrs = append(attrs, slog.Any(LogKeyError, err))
	if start {
		logger.Error("disk is full: "+msg, attrs...)
		return
	}
	attrs = append(attrs, slog.Duration("for", now.Sub(d.since).Round(time.Second)), slog.Int("failures", d.failures))
	logger.Warn("disk still full: "+msg, attrs...)
}

// ok records a success; if it ends an episode (the filesystem of dir has
// room to spare), it logs msg.
func (d *diskFull) ok(logger *slog.Logger, dir string, msg string, attrs ...any) {
	if !d.active.Load() {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.active.Load() {
		return
	}
	free, size, known := diskSpace(dir)
	if known && free < min(diskRoomMax, size/8) {
		return
	}
	d.active.Store(false)
	d.logged = time.Time{}
	attrs = append(attrs, slog.String("dir", dir), slog.Duration("after", time.Since(d.since).Round(time.Millisecond)),
		slog.Int("failures", d.failures))
	if known {
		attrs = append(attrs, slog.Int64("free_bytes", free))
	}
	logger.Info("disk has room again: "+msg, attrs...)
}

// diskSpace returns the bytes available to this process on the filesystem
// holding path, and the filesystem's size.
func diskSpace(path string) (free, size int64, ok bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, 0, false
	}
	return int64(st.Bavail) * st.Bsize, int64(st.Blocks) * st.Bsize, true
}

// failedPath returns the file an error names, or dir.
func failedPath(err error, dir string) string {
	var perr *fs.PathError
	if errors.As(err, &perr) {
		return perr.Path
	}
	return dir
}

// dataDir returns the data directory the database lives in (the store keeps
// each database in <data dir>/dbs/<name>).
func (db *DB) dataDir() string { return filepath.Dir(filepath.Dir(db.dir)) }

// DiskFull records that a write for SQLite to the database or one of its
// companion files failed for lack of space (IsDiskFull(err)): SQLite
// reports SQLITE_FULL, "database or disk is full". The first failure of an
// episode is logged with where the disk is full.
func (db *DB) DiskFull(err error) {
	db.full.fail(db.logger, db.dataDir(), err,
		"no space left in the data directory; commits fail with SQLITE_FULL (\"database or disk is full\") until space is freed, then resume by themselves")
}

// diskRoomAgain ends an episode of a full disk after a commit went
// through, if the disk has room to spare.
func (db *DB) diskRoomAgain() {
	db.full.ok(db.logger, db.dataDir(), "commits resume", slog.String(LogKeyTXID, db.pos.TXID.String()))
}

// checkRoom refuses, with ENOSPC, a page write of a rollback-journal
// transaction when the filesystem has no room left for the LTX file its
// commit will write. SQLite then reports SQLITE_FULL and rolls the
// transaction back from its journal, as it does on a plain full disk;
// otherwise the commit would fail only when SQLite deletes or truncates its
// journal, which it reports as "disk I/O error" and plays back only at the
// next access. A page written back as it was committed (a rollback) adds
// nothing to the LTX file and always goes through. WAL transactions need no
// check: the LTX file is written when the commit frame is, and a failure
// there is already SQLITE_FULL. db.mu held.
func (db *DB) checkRoom(pgno uint32, p []byte, off int64) error {
	if db.wal.valid || db.chk == nil {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(db.f.Fd()), &st); err != nil {
		return nil // cannot tell: let the write try
	}
	free := int64(st.Bavail) * st.Bsize
	pages := len(db.dirty)
	if _, ok := db.dirty[pgno]; !ok {
		pages++
	}
	if db.pos.TXID == 0 {
		pages = max(pages, int(db.chk.PageN())) // the first commit holds every page
	}
	need := roundUp(ltxSizeBound(pages, len(p)), st.Bsize)
	if free >= need+roundUp(int64(len(p)), st.Bsize) {
		return nil // room even if the file grows
	}
	if pgno <= db.chk.PageN() && checksum.Page(pgno, p) == db.chk.PageChecksum(pgno) {
		return nil
	}
	if size, err := db.Size(); err == nil && off+int64(len(p)) > size {
		need += roundUp(off+int64(len(p))-size, st.Bsize) // the file grows
	}
	if free >= need {
		return nil
	}
	return fmt.Errorf("write page %d: %s has %d bytes free, the transaction's ltx file needs about %d: %w",
		pgno, db.dataDir(), free, need, syscall.ENOSPC)
}

// ltxSizeBound bounds the size of an LTX file of pages pages of pageSize
// bytes, as the codec lays it out: a 100-byte header, for each page a
// 6-byte header, a 4-byte size and an LZ4 block (at worst a little larger
// than the page), the page index (at most 30 bytes an entry) and a
// 16-byte trailer.
func ltxSizeBound(pages, pageSize int) int64 {
	perPage := 6 + 4 + pageSize + pageSize/255 + 16 + 30
	return int64(100 + 16 + 64 + pages*perPage)
}

func roundUp(n, block int64) int64 {
	if block <= 0 {
		return n
	}
	return (n + block - 1) / block * block
}

// reserve allocates disk space for f up to size bytes without changing its
// size, so that writing pages up to size cannot fail for lack of space
// halfway through. A filesystem that cannot preallocate is left to fail
// at the write, if it must.
func reserve(f *os.File, size int64) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if size <= fi.Size() {
		return nil
	}
	err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, fi.Size(), size-fi.Size())
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) {
		return nil
	} else if err != nil {
		return &fs.PathError{Op: "fallocate", Path: f.Name(), Err: err}
	}
	return nil
}
