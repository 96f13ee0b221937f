package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// SQLite's write-ahead log format (sqlite.org/walformat.html): a 32-byte
// header, then frames of a 24-byte header and one page. A frame is valid
// while its salts match the header's and the cumulative checksum holds; a
// frame whose "database size after commit" is non-zero ends a transaction.
const (
	walHeaderSize      = 32
	walFrameHeaderSize = 24
	walMagicLE         = 0x377f0682
	walMagicBE         = 0x377f0683
)

// walHeader is the parsed WAL file header.
type walHeader struct {
	bigEndian    bool // checksums read words big-endian (magic 0x377f0683)
	pageSize     uint32
	salt1, salt2 uint32
	cksum        [2]uint32
}

func parseWALHeader(b []byte) (walHeader, bool) {
	if len(b) < walHeaderSize {
		return walHeader{}, false
	}
	magic := binary.BigEndian.Uint32(b[0:])
	if magic != walMagicLE && magic != walMagicBE {
		return walHeader{}, false
	}
	h := walHeader{
		bigEndian: magic == walMagicBE,
		pageSize:  binary.BigEndian.Uint32(b[8:]),
		salt1:     binary.BigEndian.Uint32(b[16:]),
		salt2:     binary.BigEndian.Uint32(b[20:]),
		cksum:     [2]uint32{binary.BigEndian.Uint32(b[24:]), binary.BigEndian.Uint32(b[28:])},
	}
	if h.pageSize == 1 {
		h.pageSize = 65536
	}
	if !validPageSize(h.pageSize) {
		return walHeader{}, false
	}
	if walChecksum(h.bigEndian, b[:24], [2]uint32{}) != h.cksum {
		return walHeader{}, false
	}
	return h, true
}

// walChecksum extends the WAL's cumulative checksum over b (a multiple of
// 8 bytes), reading words in the byte order the header's magic chose.
func walChecksum(bigEndian bool, b []byte, in [2]uint32) [2]uint32 {
	s1, s2 := in[0], in[1]
	order := binary.ByteOrder(binary.LittleEndian)
	if bigEndian {
		order = binary.BigEndian
	}
	for i := 0; i+8 <= len(b); i += 8 {
		s1 += order.Uint32(b[i:]) + s2
		s2 += order.Uint32(b[i+4:]) + s1
	}
	return [2]uint32{s1, s2}
}

// walFrame is one valid frame.
type walFrame struct {
	pgno   uint32
	commit uint32 // database size in pages after commit; 0 if not a commit frame
	offset int64  // of the frame header
}

// walTxn is one committed transaction in the WAL: its frames in order.
type walTxn struct {
	frames []walFrame
	commit uint32 // database size after it
	end    int64  // offset just after its commit frame
	cksum  [2]uint32
}

// readWALTxns reads the committed transactions from the WAL in r starting
// at offset start, whose cumulative checksum there is cksum, stopping at the
// first frame that is invalid or incomplete. Frames after the last commit
// frame belong to no committed transaction and are not returned.
func readWALTxns(r io.ReaderAt, size int64, hdr walHeader, start int64, cksum [2]uint32) ([]walTxn, error) {
	frameSize := int64(walFrameHeaderSize) + int64(hdr.pageSize)
	buf := make([]byte, frameSize)
	var (
		txns []walTxn
		cur  walTxn
	)
	for off := start; off+frameSize <= size; off += frameSize {
		if _, err := r.ReadAt(buf, off); errors.Is(err, io.EOF) {
			break // the frame is not all written yet
		} else if err != nil {
			return nil, fmt.Errorf("read wal frame at %d: %w", off, err)
		}
		pgno := binary.BigEndian.Uint32(buf[0:])
		commit := binary.BigEndian.Uint32(buf[4:])
		if pgno == 0 || binary.BigEndian.Uint32(buf[8:]) != hdr.salt1 || binary.BigEndian.Uint32(buf[12:]) != hdr.salt2 {
			break
		}
		next := walChecksum(hdr.bigEndian, buf[:8], cksum)
		next = walChecksum(hdr.bigEndian, buf[walFrameHeaderSize:], next)
		if next != [2]uint32{binary.BigEndian.Uint32(buf[16:]), binary.BigEndian.Uint32(buf[20:])} {
			break
		}
		cksum = next
		cur.frames = append(cur.frames, walFrame{pgno: pgno, commit: commit, offset: off})
		if commit != 0 {
			cur.commit, cur.end, cur.cksum = commit, off+frameSize, cksum
			txns = append(txns, cur)
			cur = walTxn{}
		}
	}
	return txns, nil
}
