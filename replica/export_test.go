package replica_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/replica"
)

// commitImage makes img the database's content in one transaction, with
// the calls the FUSE layer makes for a rollback-journal commit: the
// journal (its header is what readers of the file wait on), page writes,
// and the commit that deletes the journal.
func commitImage(t testing.TB, db *replica.DB, img []byte, pageSize int) {
	t.Helper()
	hdr := make([]byte, 28)
	copy(hdr, []byte{0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7})
	if err := os.WriteFile(db.JournalPath(), hdr, 0o644); err != nil {
		t.Error(err)
		return
	}
	for off := 0; off < len(img); off += pageSize {
		if _, err := db.WriteAt(img[off:off+pageSize], int64(off)); err != nil {
			t.Error(err)
			return
		}
	}
	if err := db.Truncate(int64(len(img))); err != nil {
		t.Error(err)
		return
	}
	if err := db.RemoveJournal(); err != nil {
		t.Error(err)
	}
}

func TestDB_Export(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)

	t.Run("ErrDatabaseNotFound", func(t *testing.T) {
		if _, _, err := s.ExportFile(ctx, "missing.db"); !errors.Is(err, replica.ErrDatabaseNotFound) {
			t.Fatalf("got %v", err)
		}
		if _, _, err := s.ExportFile(ctx, "../x"); !errors.Is(err, replica.ErrInvalidName) {
			t.Fatalf("got %v", err)
		}
	})

	// Versions of a real database, one per transaction of a writer.
	const pageSize = 4096
	src, srcPath := makeSQLite(t, "delete", pageSize, 50, "v")
	if _, err := s.Import(ctx, "app.db", bytes.NewReader(src), replica.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	db := s.DB("app.db")
	first, _ := os.ReadFile(db.Path())
	versions := map[ltx.TXID][]byte{1: first}
	w, err := sql.Open("sqlite3", "file:"+srcPath+"?_journal_mode=DELETE")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.SetMaxOpenConns(1)
	var imgs [][]byte
	for i := 0; i < 60; i++ {
		q := `INSERT INTO t (v) SELECT hex(randomblob(300)) FROM t LIMIT 20`
		if i%3 == 2 {
			q = `DELETE FROM t WHERE id % 3 = 0 AND id > (SELECT max(id) - 40 FROM t)`
		}
		if _, err := w.Exec(q); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(srcPath)
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, b)
		versions[ltx.TXID(i+2)] = b
	}

	t.Run("Consistent", func(t *testing.T) {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, img := range imgs {
				commitImage(t, db, img, pageSize)
			}
		}()
		seen := map[ltx.TXID]bool{}
		for done := false; !done; {
			done = db.Pos().TXID == ltx.TXID(len(imgs)+1)
			var buf bytes.Buffer
			res, err := db.Export(ctx, &buf)
			if err != nil {
				t.Fatal(err)
			}
			want, ok := versions[res.Pos.TXID]
			if !ok || !bytes.Equal(buf.Bytes(), want) {
				t.Fatalf("export at %s is not the database at that position (%d bytes)", res.Pos, buf.Len())
			}
			tbl, err := checksum.Read(bytes.NewReader(buf.Bytes()), pageSize)
			if err != nil || tbl.Sum() != res.Pos.Checksum || res.Size != int64(buf.Len()) || int(res.PageN)*pageSize != buf.Len() {
				t.Fatalf("export at %s: checksum %v (%v), %d bytes, %d pages", res.Pos, tbl.Sum(), err, res.Size, res.PageN)
			}
			seen[res.Pos.TXID] = true
		}
		wg.Wait()
		checkDB(t, db)
		t.Logf("%d distinct positions exported during %d commits", len(seen), len(imgs))
	})

	t.Run("ExportFile", func(t *testing.T) {
		f, res, err := s.ExportFile(ctx, "app.db")
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(f.Name())
		defer f.Close()
		if filepath.Dir(f.Name()) != s.TempDir() || res.Pos != db.Pos() {
			t.Fatalf("file %s at %s", f.Name(), res.Pos)
		}
		var out bytes.Buffer
		info, err := replica.CopyDatabase(&out, f)
		if err != nil || info.Checksum != res.Pos.Checksum || !bytes.Equal(out.Bytes(), imgs[len(imgs)-1]) {
			t.Fatalf("copy: %+v %v", info, err)
		}
		if got, want := rowsOf(t, f.Name()), rowsOf(t, srcPath); got != want {
			t.Fatalf("rows %s, want %s", got, want)
		}
	})

	t.Run("RoundTrip", func(t *testing.T) {
		// export -> import -> export: the same pages, but for the
		// header's counters, which the import moves on.
		var a, b bytes.Buffer
		if _, err := db.Export(ctx, &a); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Import(ctx, "app.db", bytes.NewReader(a.Bytes()), replica.ImportOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Export(ctx, &b); err != nil {
			t.Fatal(err)
		}
		x, y := a.Bytes(), b.Bytes()
		if len(x) != len(y) || !bytes.Equal(x[pageSize:], y[pageSize:]) || !bytes.Equal(x[100:pageSize], y[100:pageSize]) {
			t.Fatal("round trip changed the pages")
		}
		for _, r := range [][2]int{{0, 24}, {32, 40}, {44, 92}, {96, 100}} {
			if !bytes.Equal(x[r[0]:r[1]], y[r[0]:r[1]]) {
				t.Errorf("round trip changed header bytes %d..%d", r[0], r[1])
			}
		}
		checkDB(t, db)
	})
}
