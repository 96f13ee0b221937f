package replica

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/litefs-project/litefs/checksum"
)

// Offsets in the 100-byte SQLite database header (sqlite.org/fileformat2.html).
const (
	hdrOffPageSize      = 16 // u16; 1 means 65536
	hdrOffWriteVersion  = 18 // u8; 1 rollback journal, 2 WAL
	hdrOffReadVersion   = 19 // u8; 1 rollback journal, 2 WAL
	hdrOffChangeCounter = 24 // u32
	hdrOffPageCount     = 28 // u32; valid while the change counter equals version-valid-for
	hdrOffSchemaCookie  = 40 // u32
	hdrOffVersionValid  = 92 // u32: the change counter the page count is valid for
	sqliteHeaderSize    = 100
)

// Journal modes as a database header declares them (bytes 18 and 19).
const (
	JournalModeRollback = "rollback"
	JournalModeWAL      = "wal"
)

// DatabaseInfo describes a SQLite database file that CopyDatabase read
// and validated.
type DatabaseInfo struct {
	PageSize uint32            // bytes per page
	PageN    uint32            // pages in the file
	Size     int64             // bytes in the file
	WAL      bool              // the header declares WAL mode
	Checksum checksum.Checksum // the rolling checksum of the pages
}

// JournalMode returns JournalModeWAL or JournalModeRollback.
func (i DatabaseInfo) JournalMode() string { return journalModeName(i.WAL) }

func journalModeName(wal bool) string {
	if wal {
		return JournalModeWAL
	}
	return JournalModeRollback
}

// fileHeader is what the first 100 bytes of a database file say.
type fileHeader struct {
	pageSize uint32
	pageN    uint32 // zero if the header's page count is not valid
	wal      bool
}

// parseFileHeader validates a SQLite database header. Errors wrap
// ErrInvalidDatabase and say what to do.
func parseFileHeader(b []byte) (fileHeader, error) {
	if len(b) < sqliteHeaderSize {
		return fileHeader{}, fmt.Errorf("%w: %d bytes is shorter than a SQLite header (100 bytes): the file is truncated or is not a database",
			ErrInvalidDatabase, len(b))
	}
	if !bytes.Equal(b[:len(sqliteHeader)], sqliteHeader) {
		return fileHeader{}, fmt.Errorf("%w: %w: the file does not start with \"SQLite format 3\" (a SQL dump must be loaded first: sqlite3 NEW.db < dump.sql)",
			ErrInvalidDatabase, ErrNotSQLite)
	}
	var h fileHeader
	raw := binary.BigEndian.Uint16(b[hdrOffPageSize:])
	h.pageSize = uint32(raw)
	if raw == 1 {
		h.pageSize = 65536
	}
	if !validPageSize(h.pageSize) {
		return fileHeader{}, fmt.Errorf("%w: the header's page size %d (offset 16) is not a power of two from 512 to 65536: the file is damaged; restore it from another copy",
			ErrInvalidDatabase, raw)
	}
	w, r := b[hdrOffWriteVersion], b[hdrOffReadVersion]
	switch {
	case w == 1 && r == 1:
	case w == 2 && r == 2:
		h.wal = true
	default:
		return fileHeader{}, fmt.Errorf("%w: the header's file format versions are %d/%d (offsets 18/19), want 1/1 (rollback journal) or 2/2 (WAL): set the journal mode with sqlite3 FILE 'PRAGMA journal_mode=DELETE' and try again",
			ErrInvalidDatabase, w, r)
	}
	if c := binary.BigEndian.Uint32(b[hdrOffChangeCounter:]); c == binary.BigEndian.Uint32(b[hdrOffVersionValid:]) {
		h.pageN = binary.BigEndian.Uint32(b[hdrOffPageCount:])
	}
	return h, nil
}

// CopyDatabase copies a SQLite database file from r to w, page by page and
// never holding more than one page, and validates it on the way: the header
// (magic, page size, journal mode), a whole number of pages, at least one,
// and as many as the header's page count says when that count is valid. It
// returns what it read, with the checksum of the copy. Errors about the
// content wrap ErrInvalidDatabase and say what was wrong and what to do;
// w may then hold part of the file.
func CopyDatabase(w io.Writer, r io.Reader) (DatabaseInfo, error) {
	hb := make([]byte, sqliteHeaderSize)
	n, err := io.ReadFull(r, hb)
	switch {
	case n == 0 && errors.Is(err, io.EOF):
		return DatabaseInfo{}, fmt.Errorf("%w: the file is empty", ErrInvalidDatabase)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return DatabaseInfo{}, fmt.Errorf("%w: %d bytes is shorter than a SQLite header (100 bytes): the file is truncated or is not a database",
			ErrInvalidDatabase, n)
	case err != nil:
		return DatabaseInfo{}, fmt.Errorf("read database header: %w", err)
	}
	h, err := parseFileHeader(hb)
	if err != nil {
		return DatabaseInfo{}, err
	}
	info := DatabaseInfo{PageSize: h.pageSize, WAL: h.wal}
	tbl := checksum.NewTable(h.pageSize)
	buf := make([]byte, h.pageSize)
	copy(buf, hb)
	have := len(hb) // bytes of the current page already in buf
	for pgno := uint32(1); ; pgno++ {
		n, err := io.ReadFull(r, buf[have:])
		n += have
		have = 0
		if n == 0 && errors.Is(err, io.EOF) {
			break
		}
		info.Size += int64(n)
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return info, fmt.Errorf("%w: %d bytes is not a whole number of %d-byte pages (page %d has %d bytes): the file is truncated or was copied while it was written; copy it again with sqlite3 SRC '.backup FILE'",
				ErrInvalidDatabase, info.Size, h.pageSize, pgno, n)
		} else if err != nil {
			return info, fmt.Errorf("read page %d: %w", pgno, err)
		}
		if pgno == 0 {
			return info, fmt.Errorf("%w: more than 4294967295 pages", ErrInvalidDatabase)
		}
		tbl.Set(pgno, buf)
		if _, err := w.Write(buf); err != nil {
			return info, fmt.Errorf("write page %d: %w", pgno, err)
		}
		info.PageN = pgno
	}
	if h.pageN != 0 && h.pageN != info.PageN {
		return info, fmt.Errorf("%w: the header says the database has %d pages (offset 28), the file has %d: the file is truncated or was copied while it was written; copy it again with sqlite3 SRC '.backup FILE'",
			ErrInvalidDatabase, h.pageN, info.PageN)
	}
	info.Checksum = tbl.Sum()
	return info, nil
}

// CheckImportSource refuses a file that is not a regular file, or whose
// last transactions are not in it: a hot journal beside it (a transaction
// to roll back) or a WAL with frames not checkpointed.
func CheckImportSource(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("import: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("import: %s is not a regular file", path)
	}
	if b, err := readPrefix(path+"-journal", 8); err == nil && isJournalMagic(b) {
		return fmt.Errorf("import: %s-journal holds an unfinished transaction (a hot journal): open the database once, for example with sqlite3 %s 'PRAGMA quick_check', which rolls it back, then import again", path, path)
	}
	if wi, err := os.Stat(path + "-wal"); err == nil && wi.Size() > 0 {
		return fmt.Errorf("import: %s-wal holds transactions that may not be in %s yet: checkpoint it with sqlite3 %s 'PRAGMA wal_checkpoint(TRUNCATE)' and import again", path, path, path)
	}
	return nil
}

// readPrefix reads the first n bytes of the file at path.
func readPrefix(path string, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, err
	}
	return b, nil
}
