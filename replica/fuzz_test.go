package replica

// Fuzz targets for the decoders that read bytes litefs did not write
// itself: replication stream frames, rollback journals and WAL files. The
// seeds below run in the normal test suite; `go test -fuzz` explores more.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func FuzzReadFrame(f *testing.F) {
	var buf bytes.Buffer
	writeFrame(&buf, frameHello, []byte(`{"hostname":"p"}`))
	writeFrame(&buf, frameChunk, bytes.Repeat([]byte{7}, 100))
	writeFrame(&buf, frameEnd, nil)
	f.Add(buf.Bytes())
	f.Add([]byte{frameChunk, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{'Z', 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bufio.NewReader(bytes.NewReader(b))
		for i := 0; i < 100; i++ {
			typ, payload, err := readFrame(r)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrBadFrame) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			// A frame that decodes re-encodes to the same bytes.
			var out bytes.Buffer
			if err := writeFrame(&out, typ, payload); err != nil {
				t.Fatal(err)
			}
			r2 := bufio.NewReader(&out)
			typ2, payload2, err := readFrame(r2)
			if err != nil || typ2 != typ || !bytes.Equal(payload, payload2) {
				t.Fatalf("round trip: %v", err)
			}
		}
	})
}

// validWAL returns a WAL with one committed transaction of two pages.
func validWAL(pageSize uint32) []byte {
	hdr := make([]byte, walHeaderSize)
	binary.BigEndian.PutUint32(hdr[0:], walMagicLE)
	binary.BigEndian.PutUint32(hdr[4:], 3007000)
	binary.BigEndian.PutUint32(hdr[8:], pageSize)
	binary.BigEndian.PutUint32(hdr[16:], 11)
	binary.BigEndian.PutUint32(hdr[20:], 22)
	ck := walChecksum(false, hdr[:24], [2]uint32{})
	binary.BigEndian.PutUint32(hdr[24:], ck[0])
	binary.BigEndian.PutUint32(hdr[28:], ck[1])
	wal := hdr
	for i, pgno := range []uint32{1, 2} {
		fh := make([]byte, walFrameHeaderSize)
		binary.BigEndian.PutUint32(fh[0:], pgno)
		if i == 1 {
			binary.BigEndian.PutUint32(fh[4:], 2)
		}
		copy(fh[8:16], hdr[16:24])
		page := bytes.Repeat([]byte{byte(pgno)}, int(pageSize))
		ck = walChecksum(false, fh[:8], ck)
		ck = walChecksum(false, page, ck)
		binary.BigEndian.PutUint32(fh[16:], ck[0])
		binary.BigEndian.PutUint32(fh[20:], ck[1])
		wal = append(append(wal, fh...), page...)
	}
	return wal
}

func TestReadWALTxns(t *testing.T) {
	wal := validWAL(512)
	hdr, ok := parseWALHeader(wal)
	if !ok {
		t.Fatal("header not valid")
	}
	txns, err := readWALTxns(bytes.NewReader(wal), int64(len(wal)), hdr, walHeaderSize, hdr.cksum)
	if err != nil || len(txns) != 1 || len(txns[0].frames) != 2 || txns[0].commit != 2 {
		t.Fatalf("txns %+v %v", txns, err)
	}
	// A flipped byte in the last page breaks the checksum chain: the
	// transaction is not committed.
	wal[len(wal)-1] ^= 1
	if txns, _ := readWALTxns(bytes.NewReader(wal), int64(len(wal)), hdr, walHeaderSize, hdr.cksum); len(txns) != 0 {
		t.Fatal("a damaged frame was accepted")
	}
}

func FuzzWAL(f *testing.F) {
	f.Add(validWAL(512))
	f.Add(validWAL(1024)[:700])
	f.Fuzz(func(t *testing.T, b []byte) {
		hdr, ok := parseWALHeader(b)
		if !ok {
			return
		}
		txns, err := readWALTxns(bytes.NewReader(b), int64(len(b)), hdr, walHeaderSize, hdr.cksum)
		if err != nil {
			t.Fatal(err)
		}
		end := int64(walHeaderSize)
		for _, txn := range txns {
			if txn.commit == 0 || len(txn.frames) == 0 || txn.end <= end || txn.end > int64(len(b)) {
				t.Fatalf("bad transaction %+v", txn)
			}
			end = txn.end
		}
	})
}

// validJournal returns a hot rollback journal holding the original pages
// 1 and 3 of a 3-page database of 512-byte pages.
func validJournal() []byte {
	const pageSize, sector = 512, 512
	j := make([]byte, sector)
	copy(j, journalMagic)
	binary.BigEndian.PutUint32(j[8:], 2)  // records
	binary.BigEndian.PutUint32(j[12:], 7) // checksum nonce
	binary.BigEndian.PutUint32(j[16:], 3) // original size in pages
	binary.BigEndian.PutUint32(j[20:], sector)
	binary.BigEndian.PutUint32(j[24:], pageSize)
	for _, pgno := range []uint32{1, 3} {
		page := bytes.Repeat([]byte{byte(pgno)}, pageSize)
		j = binary.BigEndian.AppendUint32(j, pgno)
		j = append(j, page...)
		j = binary.BigEndian.AppendUint32(j, journalRecordChecksum(7, page))
	}
	return j
}

func TestReadHotJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	os.WriteFile(path, validJournal(), 0o644)
	j, err := readHotJournal(path, 512)
	if err != nil || j == nil || j.dbSize != 3 || len(j.pages) != 2 || j.pages[3][0] != 3 {
		t.Fatalf("journal %+v %v", j, err)
	}
	b := validJournal()
	b[512+520+4+312] ^= 1 // a byte of the second record that its checksum covers
	os.WriteFile(path, b, 0o644)
	if j, err := readHotJournal(path, 512); err != nil || len(j.pages) != 1 {
		t.Fatalf("damaged record accepted: %+v %v", j, err)
	}
	os.WriteFile(path, make([]byte, 1024), 0o644) // zeroed header: not hot
	if j, err := readHotJournal(path, 512); err != nil || j != nil {
		t.Fatalf("zeroed journal: %+v %v", j, err)
	}
}

func FuzzHotJournal(f *testing.F) {
	f.Add(validJournal())
	f.Add(validJournal()[:600])
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "journal")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		j, err := readHotJournal(path, 512)
		if err != nil || j == nil {
			return
		}
		for pgno, data := range j.pages {
			if pgno == 0 || uint32(len(data)) != j.pageSize {
				t.Fatalf("page %d of %d bytes", pgno, len(data))
			}
		}
	})
}
