package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc64"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
)

// A database closed cleanly leaves its checksum table beside it, so that
// the next start need not read the whole file to verify its position. The
// record names the file it describes by what the kernel changes on every
// write: inode, size, modification and change times. The change time
// (ctime) cannot be set by any user, so a file written, truncated, copied
// over or replaced behind the node's back no longer matches, and the start
// reads the file in full, as without a record. The record is removed once
// the database is open: a node that stops without closing (a crash)
// leaves none.
//
// Changes by another process while the node runs are caught at close:
// the file's change time is then later than the node's last write, and no
// record is kept. What a record cannot see is a change below the filesystem (a disk that
// returns other bytes than it was given); the full read at a start after
// a crash, and SQLite's own checks, are what find those.

// ChecksumsFile is the name of the record in a database's directory.
const ChecksumsFile = "checksums"

var checksumsMagic = [8]byte{'L', 'F', 'S', 'C', 'H', 'K', '1', '\n'}

// checksumsHeaderSize: magic, TXID, checksum, page size, page count, then
// the file's inode, device, size, mtime and ctime.
const checksumsHeaderSize = 8 + 8 + 8 + 4 + 4 + 5*8

// fileIdentity is what the kernel changes when a file is written.
type fileIdentity struct {
	ino, dev     uint64
	size         int64
	mtime, ctime int64 // nanoseconds since the epoch
}

func identify(f *os.File) (fileIdentity, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fileIdentity{}, err
	}
	return fileIdentity{ino: st.Ino, dev: uint64(st.Dev), size: st.Size,
		mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}, nil
}

// saveChecksums writes the record of a database about to close, if its
// file holds exactly its position: no transaction in progress, no WAL
// frames over it. It waits, briefly, until the file's last change is older
// than the kernel's clock resolution, so that any later write gives it a
// change time the record does not have. db.mu held.
func (db *DB) saveChecksums() error {
	skip := func(why string) error {
		db.logger.Debug("no checksum record kept; the next start reads the whole database", slog.String("reason", why))
		return nil
	}
	switch {
	case db.pos.TXID == 0 || db.pageSize == 0:
		return nil
	case db.wal.valid && db.wal.end > walHeaderSize:
		return skip("the wal holds committed frames")
	case !db.isWAL() && (len(db.dirty) > 0 || db.resized):
		// (In WAL mode, pages written to the file are a checkpoint's,
		// committed ones.)
		return skip("a transaction was in progress")
	case db.log.Pos() != db.pos || db.chk.Sum() != db.pos.Checksum:
		return skip("the log is not at the position")
	}
	if _, err := os.Stat(db.JournalPath()); err == nil {
		return skip("a rollback journal exists")
	}
	id, err := identify(db.f)
	if err != nil {
		return err
	}
	if id.size != int64(db.chk.PageN())*int64(db.pageSize) {
		return skip("the file's size is not the position's")
	}
	// Changed since this node last wrote it (the kernel's change time is
	// at most the time of the write): someone else wrote it, and only a
	// full read can say what it holds. (So can a checkpoint or a recovery
	// that this node ran without moving the position: the next start
	// then reads the file in full, which costs time only.)
	if id.ctime > db.ownWrite {
		db.logger.Info("the database file changed after this node last wrote it; the next start reads it in full",
			slog.Time("changed", time.Unix(0, id.ctime)), slog.Time("written", time.Unix(0, db.ownWrite)))
		return nil
	}
	const settle = 50 * time.Millisecond
	if d := time.Until(time.Unix(0, id.ctime).Add(settle)); d > 0 {
		time.Sleep(min(d, settle))
	}
	if err := db.f.Sync(); err != nil {
		return err
	}
	if id, err = identify(db.f); err != nil {
		return err
	}
	b := make([]byte, 0, checksumsHeaderSize+8*int(db.chk.PageN())+8)
	b = append(b, checksumsMagic[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(db.pos.TXID))
	b = binary.BigEndian.AppendUint64(b, uint64(db.pos.Checksum))
	b = binary.BigEndian.AppendUint32(b, db.pageSize)
	b = binary.BigEndian.AppendUint32(b, db.chk.PageN())
	for _, v := range []uint64{id.ino, id.dev, uint64(id.size), uint64(id.mtime), uint64(id.ctime)} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	for pgno := uint32(1); pgno <= db.chk.PageN(); pgno++ {
		b = binary.BigEndian.AppendUint64(b, uint64(db.chk.PageChecksum(pgno)))
	}
	b = binary.BigEndian.AppendUint64(b, crc64.Checksum(b, crcISO))
	tmp := db.path(ChecksumsFile + ".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	f, err := os.Open(tmp)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, db.path(ChecksumsFile)); err != nil {
		return err
	}
	return ltx.SyncDir(db.dir)
}

var crcISO = crc64.MakeTable(crc64.ISO)

// removeChecksums removes the record of the database in dir, once it is
// open: from then on the file changes.
func removeChecksums(dir string) error {
	for _, name := range []string{ChecksumsFile, ChecksumsFile + ".tmp"} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

// loadChecksums reads the record of the database in dir, and
// returns its table if it describes f as it is now and the log's position;
// nil otherwise, saying why at debug level.
func loadChecksums(dir string, f *os.File, pos ltx.Pos, logger *slog.Logger) *checksum.Table {
	b, err := os.ReadFile(filepath.Join(dir, ChecksumsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	tbl, err := parseChecksums(b, f, pos)
	if err != nil {
		logger.Info("reading the whole database to verify its position", slog.String("reason", err.Error()))
		return nil
	}
	return tbl
}

func parseChecksums(b []byte, f *os.File, pos ltx.Pos) (*checksum.Table, error) {
	if len(b) < checksumsHeaderSize+8 || [8]byte(b[:8]) != checksumsMagic {
		return nil, errors.New("checksum record unreadable")
	}
	body, sum := b[:len(b)-8], binary.BigEndian.Uint64(b[len(b)-8:])
	if crc64.Checksum(body, crcISO) != sum {
		return nil, errors.New("checksum record damaged")
	}
	u64 := func(off int) uint64 { return binary.BigEndian.Uint64(b[off:]) }
	rec := ltx.Pos{TXID: ltx.TXID(u64(8)), Checksum: checksum.Checksum(u64(16))}
	pageSize, pageN := binary.BigEndian.Uint32(b[24:]), binary.BigEndian.Uint32(b[28:])
	if rec != pos {
		return nil, fmt.Errorf("checksum record is of position %s, the log is at %s", rec, pos)
	}
	if len(body) != checksumsHeaderSize+8*int(pageN) {
		return nil, errors.New("checksum record has the wrong length")
	}
	want := fileIdentity{ino: u64(32), dev: u64(40), size: int64(u64(48)), mtime: int64(u64(56)), ctime: int64(u64(64))}
	got, err := identify(f)
	if err != nil {
		return nil, err
	}
	if got != want {
		return nil, errors.New("the database file changed since the node stopped (inode, size, or modification or change time differ)")
	}
	sums := make([]checksum.Checksum, pageN)
	for i := range sums {
		sums[i] = checksum.Checksum(u64(checksumsHeaderSize + 8*i))
	}
	tbl := checksum.NewTable(pageSize)
	for i, c := range sums {
		tbl.SetChecksum(uint32(i+1), c)
	}
	if tbl.Sum() != pos.Checksum || int64(pageN)*int64(pageSize) != got.size {
		return nil, errors.New("checksum record does not add up to the position")
	}
	return tbl, nil
}
