package ltx_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	sltx "github.com/superfly/ltx"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
)

func page(b byte, size int) []byte { return bytes.Repeat([]byte{b}, size) }

func TestChecksum_MatchesCodec(t *testing.T) {
	for _, pgno := range []uint32{1, 2, 1000} {
		data := page(byte(pgno), 4096)
		if got, want := uint64(checksum.Page(pgno, data)), uint64(sltx.ChecksumPage(pgno, data)); got != want {
			t.Errorf("pgno %d: checksum %x, ltx library %x", pgno, got, want)
		}
	}
}

func TestLog_AppendReopen(t *testing.T) {
	dir := t.TempDir()
	l, err := ltx.OpenLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	tbl := checksum.NewTable(512)
	tbl.Set(1, page(1, 512))
	tbl.Set(2, page(2, 512))
	snap := ltx.Header{PageSize: 512, Commit: 2, MinTXID: 1, MaxTXID: 1, Timestamp: time.Now().UnixMilli()}
	if err := l.Append(snap, []ltx.Page{{1, page(1, 512)}, {2, page(2, 512)}}, tbl.Sum()); err != nil {
		t.Fatal(err)
	}
	pre := tbl.Sum()
	d1Post := pre
	tbl.Set(2, page(3, 512))
	next := ltx.Header{PageSize: 512, Commit: 2, MinTXID: 2, MaxTXID: 2, PreApplyChecksum: pre}
	if err := l.Append(next, []ltx.Page{{2, page(3, 512)}}, tbl.Sum()); err != nil {
		t.Fatal(err)
	}
	t.Run("ErrNotContiguous", func(t *testing.T) {
		bad := ltx.Header{PageSize: 512, Commit: 2, MinTXID: 4, MaxTXID: 4, PreApplyChecksum: tbl.Sum()}
		if err := l.Append(bad, []ltx.Page{{2, page(3, 512)}}, tbl.Sum()); err == nil {
			t.Fatal("expected error")
		}
	})

	l2, err := ltx.OpenLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := l2.Pos(), (ltx.Pos{TXID: 2, Checksum: tbl.Sum()}); got != want {
		t.Fatalf("pos %v, want %v", got, want)
	}
	d, err := ltx.ReadFile(l2.Path(2, 2))
	if err != nil {
		t.Fatal(err)
	}
	if d.Header.PreApplyChecksum != pre || len(d.Pages) != 1 || !bytes.Equal(d.Pages[0].Data, page(3, 512)) {
		t.Fatalf("decoded %+v", d.Header)
	}

	t.Run("ErrCorrupt", func(t *testing.T) {
		path := l2.Path(2, 2)
		b, _ := os.ReadFile(path)
		b[len(b)-20] ^= 0xff
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		l, err := ltx.OpenLog(dir)
		var ce *ltx.CorruptError
		if !errors.As(err, &ce) || !errors.Is(err, ltx.ErrCorrupt) || ce.Path != path {
			t.Fatalf("want CorruptError naming %s, got %v", path, err)
		}
		// The log returned with the error ends before the damaged file.
		if l == nil || l.Pos() != (ltx.Pos{TXID: 1, Checksum: d1Post}) {
			t.Fatalf("log beside the error: %v", l)
		}
		after, _ := os.ReadFile(path)
		if !bytes.Equal(after, b) {
			t.Fatal("corrupt file was modified")
		}
	})

	t.Run("TempRemoved", func(t *testing.T) {
		dir := t.TempDir()
		tmp := filepath.Join(dir, ltx.FormatFilename(1, 1)+".tmp")
		os.WriteFile(tmp, []byte("partial"), 0o644)
		l, err := ltx.OpenLog(dir)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(tmp); !os.IsNotExist(err) || !l.Pos().IsZero() {
			t.Fatal("temp file left or pos not zero")
		}
	})
}

// TestLog_AppendChecked refuses a file once it is written (a commit refused
// after its file was durable): the log stays where it was, on disk too.
func TestLog_AppendChecked(t *testing.T) {
	dir := t.TempDir()
	l, err := ltx.OpenLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	tbl := checksum.NewTable(512)
	tbl.Set(1, page(1, 512))
	snap := ltx.Header{PageSize: 512, Commit: 1, MinTXID: 1, MaxTXID: 1}
	if err := l.AppendChecked(snap, []ltx.Page{{1, page(1, 512)}}, tbl.Sum(), func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	before := l.Pos()
	tbl.Set(1, page(2, 512))
	next := ltx.Header{PageSize: 512, Commit: 1, MinTXID: 2, MaxTXID: 2, PreApplyChecksum: before.Checksum}
	refused := errors.New("refused")
	checked := false
	err = l.AppendChecked(next, []ltx.Page{{1, page(2, 512)}}, tbl.Sum(), func() error {
		if _, err := os.Stat(l.Path(2, 2)); err != nil {
			t.Errorf("the file is not written when check runs: %v", err)
		}
		checked = true
		return refused
	})
	if !errors.Is(err, refused) || !checked {
		t.Fatalf("AppendChecked: %v (checked %t), want the check's error", err, checked)
	}
	if l.Pos() != before || len(l.Files()) != 1 {
		t.Fatalf("after a refused append: pos %v, %d files; want %v, 1", l.Pos(), len(l.Files()), before)
	}
	if _, err := os.Stat(l.Path(2, 2)); !os.IsNotExist(err) {
		t.Fatalf("the refused file is still there: %v", err)
	}
	if l2, err := ltx.OpenLog(dir); err != nil || l2.Pos() != before {
		t.Fatalf("reopened: %v %v", l2, err)
	}
	// The next commit continues from there.
	if err := l.Append(next, []ltx.Page{{1, page(2, 512)}}, tbl.Sum()); err != nil {
		t.Fatal(err)
	}
}

func TestParsePos(t *testing.T) {
	p := ltx.Pos{TXID: 0x2a, Checksum: 0x8000000000000001}
	got, err := ltx.ParsePos(p.String() + "\n")
	if err != nil || got != p {
		t.Fatalf("round trip %v %v", got, err)
	}
	for _, bad := range []string{"", "1/2", "000000000000002a-8000000000000001"} {
		if _, err := ltx.ParsePos(bad); err == nil {
			t.Errorf("%q: expected error", bad)
		}
	}
}

// TestLog_Spares: appends take their files from the spares, retention gives
// files back for reuse once they are old enough, and the log reads the same
// either way; Close removes the spares.
func TestLog_Spares(t *testing.T) {
	dir, spareDir := t.TempDir(), t.TempDir()
	l, err := ltx.OpenLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	l.UseSpares(spareDir)
	inodes := make(map[uint64]bool) // of the spares made in the background
	for deadline := time.Now().Add(5 * time.Second); l.SparesReady() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("no spares made within 5s")
		}
		time.Sleep(time.Millisecond)
	}
	{
		ents, _ := os.ReadDir(spareDir)
		for _, ent := range ents {
			if fi, err := ent.Info(); err == nil {
				inodes[fi.Sys().(*syscall.Stat_t).Ino] = true
			}
		}
	}
	tbl := checksum.NewTable(512)
	var pos ltx.Pos
	for txid := ltx.TXID(1); txid <= 40; txid++ {
		data := page(byte(txid), 512)
		hdr := ltx.Header{PageSize: 512, Commit: 1, MinTXID: txid, MaxTXID: txid, Timestamp: time.Now().UnixMilli(), PreApplyChecksum: pos.Checksum}
		tbl.Set(1, data)
		if err := l.AppendDeferred(hdr, []ltx.Page{{Pgno: 1, Data: data}}, tbl.Sum(), nil); err != nil {
			t.Fatal(err)
		}
		pos = ltx.Pos{TXID: txid, Checksum: tbl.Sum()}
		if txid == 1 {
			fi, err := os.Stat(l.Path(1, 1))
			if err != nil {
				t.Fatal(err)
			}
			if !inodes[fi.Sys().(*syscall.Stat_t).Ino] {
				t.Fatal("the first append created a file instead of taking a spare")
			}
		}
		if txid == 20 {
			// Retention gives files back.
			if n, err := l.Retain(time.Now().Add(time.Hour)); err != nil || n != 19 {
				t.Fatalf("retain: %d, %v", n, err)
			}
		}
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	spares, _ := os.ReadDir(spareDir)
	if len(spares) == 0 {
		t.Fatal("no spares kept")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if spares, _ := os.ReadDir(spareDir); len(spares) != 0 {
		t.Fatalf("%d spares left after close", len(spares))
	}
	// Every file reads back whole.
	l2, err := ltx.OpenLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := l2.Pos(); got != pos {
		t.Fatalf("reopened at %v, want %v", got, pos)
	}
	for _, f := range l2.Files() {
		if _, err := ltx.VerifyFile(l2.Path(f.MinTXID, f.MaxTXID)); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(l2.Files()); n != 21 {
		t.Fatalf("%d files, want 21", n)
	}
}

// encodeSnapshot encodes a snapshot of n pages of pageSize (the lock page
// left out) and returns it with the table of its pages.
func encodeSnapshot(t *testing.T, pageSize, n uint32) ([]byte, *checksum.Table) {
	t.Helper()
	tbl := checksum.NewTable(pageSize)
	var pages []ltx.Page
	for pgno := uint32(1); pgno <= n; pgno++ {
		if pgno == checksum.LockPgno(pageSize) {
			continue
		}
		data := make([]byte, pageSize)
		for i := range data {
			data[i] = byte(int(pgno)*7 + i*i) // some compressible, some not
		}
		tbl.Set(pgno, data)
		pages = append(pages, ltx.Page{Pgno: pgno, Data: data})
	}
	tbl.Truncate(n)
	var buf bytes.Buffer
	hdr := ltx.Header{PageSize: pageSize, Commit: n, MinTXID: 1, MaxTXID: 9, Timestamp: 1}
	if err := ltx.Encode(&buf, hdr, pages, tbl.Sum()); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), tbl
}

// readSnapshot reads b with a SnapshotReader into a table.
func readSnapshot(b []byte) (*checksum.Table, checksum.Checksum, error) {
	d, err := ltx.NewSnapshotReader(bytes.NewReader(b))
	if err != nil {
		return nil, 0, err
	}
	tbl := checksum.NewTable(d.Header().PageSize)
	buf := make([]byte, d.Header().PageSize)
	for {
		pgno, c, err := d.Next(buf)
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, 0, err
		}
		if c != checksum.Page(pgno, buf) {
			return nil, 0, fmt.Errorf("page %d: checksum %s returned, page has %s", pgno, c, checksum.Page(pgno, buf))
		}
		tbl.SetChecksum(pgno, c)
	}
	post, err := d.Close()
	return tbl, post, err
}

func TestSnapshotReader(t *testing.T) {
	for _, tc := range []struct{ pageSize, n uint32 }{{512, 1}, {4096, 300}, {65536, 3}} {
		b, want := encodeSnapshot(t, tc.pageSize, tc.n)
		tbl, post, err := readSnapshot(b)
		if err != nil {
			t.Fatalf("%d pages of %d: %v", tc.n, tc.pageSize, err)
		}
		if post != want.Sum() || tbl.Sum() != want.Sum() || tbl.PageN() != tc.n {
			t.Errorf("%d pages of %d: post %s, table %s (%d pages), want %s", tc.n, tc.pageSize, post, tbl.Sum(), tbl.PageN(), want.Sum())
		}
	}

	b, _ := encodeSnapshot(t, 4096, 50)
	t.Run("Truncated", func(t *testing.T) {
		for _, n := range []int{0, 50, 100, 5000, len(b) / 2, len(b) - 17, len(b) - 1} {
			if _, _, err := readSnapshot(b[:n]); err == nil {
				t.Errorf("cut at %d of %d bytes: no error", n, len(b))
			}
		}
	})
	t.Run("Corrupt", func(t *testing.T) {
		for _, off := range []int{10, 100, 103, 120, 3000, len(b) / 2, len(b) - 30, len(b) - 12, len(b) - 1} {
			bad := bytes.Clone(b)
			bad[off] ^= 0x01
			if _, _, err := readSnapshot(bad); err == nil {
				t.Errorf("byte %d of %d flipped: no error", off, len(b))
			}
		}
		if _, _, err := readSnapshot(append(bytes.Clone(b), 0)); err == nil {
			t.Error("byte appended: no error")
		}
	})
	t.Run("NotSnapshot", func(t *testing.T) {
		var buf bytes.Buffer
		hdr := ltx.Header{PageSize: 512, Commit: 2, MinTXID: 2, MaxTXID: 2, PreApplyChecksum: checksum.Flag | 1}
		if err := ltx.Encode(&buf, hdr, []ltx.Page{{Pgno: 2, Data: page(1, 512)}}, checksum.Flag|2); err != nil {
			t.Fatal(err)
		}
		if _, _, err := readSnapshot(buf.Bytes()); err == nil {
			t.Error("no error")
		}
	})
}

// TestSnapshotWriter writes snapshots of compressible, incompressible and
// mixed pages, which the codec's decoder and SnapshotReader both read back
// whole.
func TestSnapshotWriter(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed=%d", seed)
	rng := rand.New(rand.NewSource(seed))
	for _, kind := range []string{"Compressible", "Random", "Mixed"} {
		t.Run(kind, func(t *testing.T) {
			const pageSize, n = 4096, 300
			tbl := checksum.NewTable(pageSize)
			var pages []ltx.Page
			for pgno := uint32(1); pgno <= n; pgno++ {
				data := make([]byte, pageSize)
				if kind == "Random" || (kind == "Mixed" && (pgno/50)%2 == 1) {
					rng.Read(data)
				} else {
					copy(data, fmt.Sprintf("page %d", pgno))
				}
				tbl.Set(pgno, data)
				pages = append(pages, ltx.Page{Pgno: pgno, Data: data})
			}
			hdr := ltx.Header{PageSize: pageSize, Commit: n, MinTXID: 1, MaxTXID: 5, Timestamp: 1}
			var buf bytes.Buffer
			w, err := ltx.NewSnapshotWriter(&buf, hdr)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range pages {
				if err := w.Page(p.Pgno, p.Data); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(tbl.Sum()); err != nil {
				t.Fatal(err)
			}
			d, err := ltx.Decode(bytes.NewReader(buf.Bytes()))
			if err != nil {
				t.Fatalf("codec: %v", err)
			}
			if d.PostApplyChecksum != tbl.Sum() || len(d.Pages) != n {
				t.Fatalf("codec: %d pages, post %s, want %s", len(d.Pages), d.PostApplyChecksum, tbl.Sum())
			}
			for i, p := range d.Pages {
				if !bytes.Equal(p.Data, pages[i].Data) {
					t.Fatalf("codec: page %d differs", p.Pgno)
				}
			}
			got, post, err := readSnapshot(buf.Bytes())
			if err != nil || post != tbl.Sum() || got.Sum() != tbl.Sum() {
				t.Fatalf("SnapshotReader: %v, post %s, want %s", err, post, tbl.Sum())
			}
			if kind == "Compressible" && buf.Len() > n*pageSize/4 {
				t.Errorf("compressible pages take %d bytes", buf.Len())
			}
		})
	}
	t.Run("OutOfOrder", func(t *testing.T) {
		w, err := ltx.NewSnapshotWriter(io.Discard, ltx.Header{PageSize: 512, Commit: 3, MinTXID: 1, MaxTXID: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Page(2, page(1, 512)); err == nil {
			t.Error("page 2 first: no error")
		}
		if err := w.Page(1, page(1, 512)); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(checksum.Flag | 1); err == nil {
			t.Error("closed at page 1 of 3: no error")
		}
	})
}
