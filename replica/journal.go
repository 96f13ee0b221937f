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

// journalMagic starts every valid rollback journal header.
var journalMagic = []byte{0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7}

// journalHeader is the fixed part of a rollback journal segment header.
type journalHeader struct {
	nRec       uint32 // records in the segment; 0xffffffff: up to the end of the file
	cksumInit  uint32 // nonce of the record checksums
	dbSize     uint32 // database size in pages before the transaction
	sectorSize uint32 // the header occupies one sector
	pageSize   uint32
}

const journalHeaderLen = 28

// isJournalMagic reports whether b is a rollback journal's magic number.
// PERSIST mode ends a transaction by overwriting it.
func isJournalMagic(b []byte) bool { return bytes.Equal(b, journalMagic) }

func parseJournalHeader(b []byte) (journalHeader, bool) {
	if len(b) < journalHeaderLen || !bytes.Equal(b[:8], journalMagic) {
		return journalHeader{}, false
	}
	return journalHeader{
		nRec:       binary.BigEndian.Uint32(b[8:]),
		cksumInit:  binary.BigEndian.Uint32(b[12:]),
		dbSize:     binary.BigEndian.Uint32(b[16:]),
		sectorSize: binary.BigEndian.Uint32(b[20:]),
		pageSize:   binary.BigEndian.Uint32(b[24:]),
	}, true
}

// journalRecordChecksum is SQLite's record checksum: the nonce plus every
// 200th byte of the page counting down from pageSize-200.
func journalRecordChecksum(init uint32, data []byte) uint32 {
	c := init
	for i := len(data) - 200; i > 0; i -= 200 {
		c += uint32(data[i])
	}
	return c
}

// hotJournal is the content of a rollback journal needed to undo a
// transaction: the original pages and the original size.
type hotJournal struct {
	dbSize   uint32            // pages
	pageSize uint32            // bytes
	pages    map[uint32][]byte // original page contents; first record wins
	// super is the path of the super-journal of a transaction over several
	// databases, as SQLite named it (a path in the mount), or "". While it
	// exists the transaction may be rolled back; once it is gone, SQLite
	// had committed every database and the journal is not hot.
	super string
}

// readHotJournal reads the rollback journal at path. It returns nil when the
// journal is absent, empty or has no valid header (nothing to roll back).
// Records are read segment by segment until a header or record checksum
// fails, as SQLite does when it plays back a hot journal.
func readHotJournal(path string, dbPageSize uint32) (*hotJournal, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	first, ok := parseJournalHeader(b)
	if !ok {
		return nil, nil
	}
	j := &hotJournal{dbSize: first.dbSize, pageSize: first.pageSize, pages: make(map[uint32][]byte),
		super: readSuperJournalName(b)}
	if j.pageSize == 0 {
		j.pageSize = dbPageSize
	}
	if !validPageSize(j.pageSize) {
		return nil, fmt.Errorf("journal %s: invalid page size %d", path, j.pageSize)
	}
	lock := checksum.LockPgno(j.pageSize)
	recLen := int64(j.pageSize) + 8
	off := int64(0)
	for {
		hdr, ok := parseJournalHeader(b[off:])
		if !ok {
			break
		}
		sector := int64(hdr.sectorSize)
		if sector < 512 || sector > 65536 || sector&(sector-1) != 0 {
			sector = 512
		}
		off += sector
		n := int64(hdr.nRec)
		if hdr.nRec == 0xffffffff {
			n = (int64(len(b)) - off) / recLen
		}
		for i := int64(0); i < n; i++ {
			if off+recLen > int64(len(b)) {
				return j, nil // torn tail: SQLite stops here too
			}
			pgno := binary.BigEndian.Uint32(b[off:])
			data := b[off+4 : off+4+int64(j.pageSize)]
			sum := binary.BigEndian.Uint32(b[off+4+int64(j.pageSize):])
			if pgno == 0 || pgno == lock || sum != journalRecordChecksum(hdr.cksumInit, data) {
				// The lock page's number marks the super-journal's name,
				// written after the last record; SQLite stops there too.
				return j, nil
			}
			if _, seen := j.pages[pgno]; !seen {
				j.pages[pgno] = data
			}
			off += recLen
		}
		if hdr.nRec == 0 || hdr.nRec == 0xffffffff {
			break
		}
		// The next segment header starts on a sector boundary.
		if rem := off % sector; rem != 0 {
			off += sector - rem
		}
		if off >= int64(len(b)) {
			break
		}
	}
	return j, nil
}

// readSuperJournalName returns the super-journal path SQLite records at the
// end of the journal b of a transaction over several databases, or "":
// the name, its length and the sum of its bytes, then the journal magic.
func readSuperJournalName(b []byte) string {
	if len(b) < 16 || !bytes.Equal(b[len(b)-8:], journalMagic) {
		return ""
	}
	n := int(binary.BigEndian.Uint32(b[len(b)-16:]))
	sum := binary.BigEndian.Uint32(b[len(b)-12:])
	if n == 0 || n > len(b)-16 {
		return ""
	}
	name := b[len(b)-16-n : len(b)-16]
	// SQLite sums the bytes as C chars: signed on some platforms.
	var signed, unsigned uint32
	for _, c := range name {
		signed += uint32(int32(int8(c)))
		unsigned += uint32(c)
	}
	if (sum != signed && sum != unsigned) || bytes.IndexByte(name, 0) >= 0 {
		return ""
	}
	return string(name)
}

// rollback writes the original pages back into f and truncates it to the
// original size, then syncs it.
func (j *hotJournal) rollback(f *os.File) error {
	for pgno, data := range j.pages {
		if pgno > j.dbSize {
			continue
		}
		if _, err := f.WriteAt(data, int64(pgno-1)*int64(j.pageSize)); err != nil {
			return fmt.Errorf("restore page %d: %w", pgno, err)
		}
	}
	if err := f.Truncate(int64(j.dbSize) * int64(j.pageSize)); err != nil {
		return fmt.Errorf("truncate to %d pages: %w", j.dbSize, err)
	}
	return f.Sync()
}

func validPageSize(n uint32) bool {
	return n >= 512 && n <= 65536 && n&(n-1) == 0
}

// sqliteHeader is the 100-byte SQLite database header's magic string.
var sqliteHeader = []byte("SQLite format 3\x00")

// headerPageSize returns the page size declared by a database header, or 0
// if b does not start with a valid header.
func headerPageSize(b []byte) uint32 {
	if len(b) < 100 || !bytes.Equal(b[:16], sqliteHeader) {
		return 0
	}
	n := uint32(binary.BigEndian.Uint16(b[16:18]))
	if n == 1 {
		n = 65536
	}
	if !validPageSize(n) {
		return 0
	}
	return n
}

// readPageSize reads the page size from the header of the database in f;
// 0 if the file is empty.
func readPageSize(f io.ReaderAt) (uint32, error) {
	b := make([]byte, 100)
	if n, err := f.ReadAt(b, 0); n == 0 && errors.Is(err, io.EOF) {
		return 0, nil
	} else if err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	} else if n < 100 {
		return 0, fmt.Errorf("database header is %d bytes, want 100", n)
	}
	sz := headerPageSize(b)
	if sz == 0 {
		return 0, ErrNotSQLite
	}
	return sz, nil
}
