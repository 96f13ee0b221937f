// Package checksum computes the rolling checksum of a SQLite database: the
// XOR of a CRC64-ISO over each page's number and contents, excluding the lock
// page. It keeps one entry per page so that a commit only pays for the pages
// it changed, and it can recompute the whole thing from a file to verify.
//
// The definition matches the LTX format's: a page checksum is
// CRC64-ISO(big-endian uint32 pgno || page data) with the top bit set, and a
// database checksum is the XOR of its page checksums with the top bit set.
// An empty database has the zero checksum.
package checksum

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"os"
	"runtime"
)

// Checksum is a rolling database checksum or a single page's checksum.
type Checksum uint64

// Flag is set on every non-zero checksum so that a real checksum is never zero.
const Flag Checksum = 1 << 63

// PendingByte is the offset of SQLite's lock byte range; the page holding it
// (the lock page) is never written by SQLite and never checksummed.
const PendingByte = 0x40000000

var table = crc64.MakeTable(crc64.ISO)

// String returns the checksum as 16 hex digits.
func (c Checksum) String() string { return fmt.Sprintf("%016x", uint64(c)) }

// LockPgno returns the page number of the lock page for pageSize.
func LockPgno(pageSize uint32) uint32 { return PendingByte/pageSize + 1 }

// Page returns the checksum of one page.
func Page(pgno uint32, data []byte) Checksum {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], pgno)
	h := crc64.Update(0, table, b[:])
	h = crc64.Update(h, table, data)
	return Flag | Checksum(h)
}

// Table holds the checksum of every page of one database and their XOR.
// The zero value is an empty database. It is not safe for concurrent use.
type Table struct {
	pageSize uint32
	pages    []Checksum // index pgno-1; zero for the lock page
	sum      Checksum   // XOR of pages, without Flag
}

// NewTable returns an empty table for pages of pageSize bytes.
func NewTable(pageSize uint32) *Table { return &Table{pageSize: pageSize} }

// PageSize returns the page size the table was built for.
func (t *Table) PageSize() uint32 { return t.pageSize }

// PageN returns the number of pages in the database.
func (t *Table) PageN() uint32 { return uint32(len(t.pages)) }

// Sum returns the database checksum; zero for an empty database.
func (t *Table) Sum() Checksum {
	if len(t.pages) == 0 {
		return 0
	}
	return Flag | t.sum
}

// PageChecksum returns the stored checksum of pgno, or zero if the page is
// beyond the end of the database or is the lock page.
func (t *Table) PageChecksum(pgno uint32) Checksum {
	if pgno == 0 || pgno > uint32(len(t.pages)) {
		return 0
	}
	return t.pages[pgno-1]
}

// Set records the contents of page pgno, growing the database if needed.
// Pages between the old end and pgno are recorded as zero-filled pages
// until they are set. The lock page is ignored.
func (t *Table) Set(pgno uint32, data []byte) {
	t.SetChecksum(pgno, Page(pgno, data))
}

// SetChecksum records a page checksum computed elsewhere.
func (t *Table) SetChecksum(pgno uint32, c Checksum) {
	if pgno == LockPgno(t.pageSize) {
		c = 0
	}
	if n := uint32(len(t.pages)); pgno > n {
		// Pages skipped read as zeros; the page set needs no checksum
		// of zeros first (appending page after page, as a full read
		// does, would otherwise checksum every page twice).
		t.grow(pgno - 1)
		t.pages = append(t.pages, 0)
	}
	t.sum ^= t.pages[pgno-1] ^ c
	t.pages[pgno-1] = c
}

func (t *Table) grow(pageN uint32) {
	zero := make([]byte, t.pageSize)
	lock := LockPgno(t.pageSize)
	for pgno := uint32(len(t.pages)) + 1; pgno <= pageN; pgno++ {
		var c Checksum
		if pgno != lock {
			c = Page(pgno, zero)
		}
		t.pages = append(t.pages, c)
		t.sum ^= c
	}
}

// Truncate sets the database size to pageN pages, dropping pages beyond it
// or adding zero-filled pages up to it.
func (t *Table) Truncate(pageN uint32) {
	if pageN > uint32(len(t.pages)) {
		t.grow(pageN)
		return
	}
	for _, c := range t.pages[pageN:] {
		t.sum ^= c
	}
	t.pages = t.pages[:pageN]
}

// Clone returns an independent copy of t.
func (t *Table) Clone() *Table {
	return &Table{pageSize: t.pageSize, pages: append([]Checksum(nil), t.pages...), sum: t.sum}
}

// Read builds a table from a whole database read from r. A trailing partial
// page is an error: a database file is always a whole number of pages.
func Read(r io.Reader, pageSize uint32) (*Table, error) {
	t := NewTable(pageSize)
	buf := make([]byte, pageSize)
	for pgno := uint32(1); ; pgno++ {
		n, err := io.ReadFull(r, buf)
		if err == io.EOF {
			return t, nil
		} else if err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("database ends with a partial page %d (%d of %d bytes)", pgno, n, pageSize)
		} else if err != nil {
			return nil, err
		}
		t.Set(pgno, buf)
	}
}

// File recomputes the checksum table of the database file at path.
func File(path string, pageSize uint32) (*Table, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadFile(f, pageSize)
}

// readBlock is how much of a file ReadFile reads at a time.
const readBlock = 1 << 20

// ReadFile builds a table from the whole database file f, as Read does,
// as fast as the disk and the CPUs allow: the file is cut in one range per
// CPU (up to 8), each read in large blocks and checksummed in parallel.
// It does not move f's offset.
func ReadFile(f *os.File, pageSize uint32) (*Table, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := fi.Size()
	if pageSize == 0 {
		return nil, fmt.Errorf("page size 0")
	}
	ps := int64(pageSize)
	if size%ps != 0 {
		return nil, fmt.Errorf("database ends with a partial page %d (%d of %d bytes)", size/ps+1, size%ps, pageSize)
	}
	pageN := size / ps
	t := NewTable(pageSize)
	t.pages = make([]Checksum, pageN)
	workers := int64(min(runtime.GOMAXPROCS(0), 8))
	per := max((pageN+workers-1)/workers, 1)
	errs := make(chan error, workers)
	n := 0
	for first := int64(0); first < pageN; first += per {
		last := min(first+per, pageN)
		n++
		go func() { errs <- t.readRange(f, first, last) }()
	}
	for ; n > 0; n-- {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		return nil, err
	}
	for _, c := range t.pages {
		t.sum ^= c
	}
	return t, nil
}

// readRange checksums pages first+1 to last (indexes first to last-1).
func (t *Table) readRange(f *os.File, first, last int64) error {
	ps := int64(t.pageSize)
	lock := int64(LockPgno(t.pageSize))
	buf := make([]byte, max(ps, readBlock/ps*ps))
	for i := first; i < last; {
		n := min(int64(len(buf)), (last-i)*ps)
		if _, err := f.ReadAt(buf[:n], i*ps); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("database file shrank while read: %w", io.ErrUnexpectedEOF)
			}
			return err
		}
		for off := int64(0); off < n; off, i = off+ps, i+1 {
			if i+1 != lock {
				t.pages[i] = Page(uint32(i+1), buf[off:off+ps])
			}
		}
	}
	return nil
}

// PageSum is a page number and the checksum of its new contents.
type PageSum struct {
	Pgno uint32
	Sum  Checksum
}

// Peek returns the database checksum t would have after Apply(pageN, set),
// without changing t. Every page beyond the current end up to pageN must be
// in set.
func (t *Table) Peek(pageN uint32, set []PageSum) Checksum {
	if pageN == 0 {
		return 0
	}
	s := t.sum
	lock := LockPgno(t.pageSize)
	for _, p := range set {
		if p.Pgno > pageN || p.Pgno == lock {
			continue
		}
		s ^= t.PageChecksum(p.Pgno) ^ p.Sum
	}
	for pgno := pageN + 1; pgno <= uint32(len(t.pages)); pgno++ {
		s ^= t.pages[pgno-1]
	}
	return Flag | s
}

// Apply resizes the database to pageN pages and records the page checksums
// in set (pages beyond pageN are ignored).
func (t *Table) Apply(pageN uint32, set []PageSum) {
	t.Truncate(pageN)
	for _, p := range set {
		if p.Pgno <= pageN {
			t.SetChecksum(p.Pgno, p.Sum)
		}
	}
}
