package replica_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/replica"
)

// makeSQLite creates a real SQLite database with go-sqlite3: a table t of
// rows rows in the given journal mode ("delete" or "wal") and page size,
// checkpointed and closed, and returns its bytes and path.
func makeSQLite(t testing.TB, mode string, pageSize, rows int, tag string) ([]byte, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "src.db")
	sdb, err := sql.Open("sqlite3", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	sdb.SetMaxOpenConns(1)
	for _, q := range []string{
		fmt.Sprintf("PRAGMA page_size=%d", pageSize),
		"PRAGMA journal_mode=" + mode,
		"CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
		fmt.Sprintf("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < %d) INSERT INTO t (v) SELECT '%s' || i || hex(randomblob(40)) FROM c", rows, tag),
		"PRAGMA wal_checkpoint(TRUNCATE)",
	} {
		if _, err := sdb.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := sdb.Close(); err != nil {
		t.Fatal(err)
	}
	os.Remove(path + "-wal")
	os.Remove(path + "-shm")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b, path
}

// rowsOf reads t's rows from the database file at path, opened read-only.
func rowsOf(t testing.TB, path string) string {
	t.Helper()
	sdb, err := sql.Open("sqlite3", "file:"+path+"?mode=ro&immutable=1")
	if err != nil {
		t.Fatal(err)
	}
	defer sdb.Close()
	var n int
	var s string
	if err := sdb.QueryRow("SELECT count(*), coalesce(group_concat(v, ','), '') FROM t").Scan(&n, &s); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%x", n, checksum.Page(1, []byte(s)))
}

func openStore(t testing.TB) *replica.Store {
	t.Helper()
	s := replica.NewStore(t.TempDir())
	s.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// checkDB checks the store's invariants for one database: the position's
// checksum equals a full recompute of the file, and the log ends there.
func checkDB(t testing.TB, db *replica.DB) {
	t.Helper()
	pos := db.Pos()
	tbl, err := checksum.File(db.Path(), db.PageSize())
	if err != nil {
		t.Fatal(err)
	}
	if tbl.Sum() != pos.Checksum {
		t.Errorf("position %s, full recompute %s", pos, tbl.Sum())
	}
	if got := db.Log().Pos(); got != pos {
		t.Errorf("log at %s, database at %s", got, pos)
	}
}

// snapshotState is what must not change when an import is refused.
type snapshotState struct {
	pos   ltx.Pos
	file  []byte
	files []ltx.FileInfo
}

func stateOf(t testing.TB, db *replica.DB) snapshotState {
	t.Helper()
	b, err := os.ReadFile(db.Path())
	if err != nil {
		t.Fatal(err)
	}
	files := db.Log().Files()
	for i := range files {
		files[i].ModTime = time.Time{}
	}
	return snapshotState{pos: db.Pos(), file: b, files: files}
}

func (a snapshotState) equal(b snapshotState) bool {
	return a.pos == b.pos && bytes.Equal(a.file, b.file) && fmt.Sprint(a.files) == fmt.Sprint(b.files)
}

func TestCopyDatabase(t *testing.T) {
	good, _ := makeSQLite(t, "delete", 4096, 200, "a")
	big, _ := makeSQLite(t, "wal", 65536, 10, "b")
	if got := binary.BigEndian.Uint16(big[16:]); got != 1 {
		t.Fatalf("a 65536-byte page size is stored as %d, want 1", got)
	}
	t.Run("OK", func(t *testing.T) {
		for _, tc := range []struct {
			data     []byte
			pageSize uint32
			wal      bool
		}{{good, 4096, false}, {big, 65536, true}} {
			var out bytes.Buffer
			info, err := replica.CopyDatabase(&out, bytes.NewReader(tc.data))
			if err != nil {
				t.Fatal(err)
			}
			tbl, _ := checksum.Read(bytes.NewReader(tc.data), tc.pageSize)
			if info.PageSize != tc.pageSize || info.WAL != tc.wal || info.Size != int64(len(tc.data)) ||
				int(info.PageN)*int(tc.pageSize) != len(tc.data) || info.Checksum != tbl.Sum() || !bytes.Equal(out.Bytes(), tc.data) {
				t.Errorf("info %+v for %d bytes", info, len(tc.data))
			}
		}
	})
	patch := func(off int, b ...byte) []byte {
		p := bytes.Clone(good)
		copy(p[off:], b)
		return p
	}
	for _, tc := range []struct {
		name, want string
		data       []byte
	}{
		{"Empty", "empty", nil},
		{"ShortHeader", "shorter than a SQLite header", good[:60]},
		{"NotSQLite", "does not start with", []byte(strings.Repeat("this is a text file, not a database\n", 200))},
		{"BadPageSize", "not a power of two", patch(16, 0x03, 0xe8)},
		{"PageSize256", "not a power of two", patch(16, 0x01, 0x00)},
		{"BadVersion", "file format versions", patch(18, 3, 3)},
		{"TrailingPartialPage", "not a whole number", append(bytes.Clone(good), make([]byte, 100)...)},
		{"TruncatedHalfPage", "not a whole number", good[:len(good)-1000]},
		{"TruncatedWholePage", "header says the database has", good[:len(good)-4096]},
		{"LongerThanHeader", "header says the database has", append(bytes.Clone(good), make([]byte, 4096)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := replica.CopyDatabase(io.Discard, bytes.NewReader(tc.data))
			if !errors.Is(err, replica.ErrInvalidDatabase) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want ErrInvalidDatabase saying %q", err, tc.want)
			}
		})
	}
}

func TestStore_Import(t *testing.T) {
	ctx := context.Background()
	s := openStore(t)
	a, aPath := makeSQLite(t, "delete", 4096, 300, "a")
	res, err := s.Import(ctx, "app.db", bytes.NewReader(a), replica.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	db := s.DB("app.db")
	if db == nil || !res.Created || res.JournalModeChanged || res.JournalMode != replica.JournalModeRollback || res.Size != int64(len(a)) {
		t.Fatalf("first import: %+v", res)
	}
	if pos, _ := res.Pos(); pos != db.Pos() || pos.TXID != 1 {
		t.Fatalf("result position %v, database %v", pos, db.Pos())
	}
	checkDB(t, db)
	if got, want := rowsOf(t, db.Path()), rowsOf(t, aPath); got != want {
		t.Fatalf("rows %s, want %s", got, want)
	}
	first := stateOf(t, db)

	t.Run("NextTXID", func(t *testing.T) {
		// A WAL-mode file with another page size: one transaction at
		// TXID 2 holding every page, applying to the position before.
		b, bPath := makeSQLite(t, "wal", 1024, 500, "b")
		res, err := s.Import(ctx, "app.db", bytes.NewReader(b), replica.ImportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Created || !res.JournalModeChanged || res.PreviousJournalMode != "rollback" || res.JournalMode != "wal" || res.PageSize != 1024 {
			t.Fatalf("second import: %+v", res)
		}
		pos := db.Pos()
		if pos.TXID != 2 {
			t.Fatalf("position %v, want txid 2", pos)
		}
		checkDB(t, db)
		files := db.Log().Files()
		if last := files[len(files)-1]; last.MinTXID != 2 || last.MaxTXID != 2 {
			t.Fatalf("log files %v", files)
		}
		d, err := ltx.ReadFile(db.Log().Path(2, 2))
		if err != nil {
			t.Fatal(err)
		}
		if d.Header.PreApplyPos() != first.pos || d.PostApplyChecksum != pos.Checksum || len(d.Pages) != len(b)/1024 || d.Header.Commit != uint32(len(b)/1024) {
			t.Fatalf("ltx header %+v, %d pages, post %s", d.Header, len(d.Pages), d.PostApplyChecksum)
		}
		img, _ := os.ReadFile(db.Path())
		var rebuilt []byte
		for _, p := range d.Pages {
			rebuilt = append(rebuilt, p.Data...)
		}
		if !bytes.Equal(rebuilt, img) {
			t.Fatal("the ltx file's pages differ from the database file")
		}
		// Connections reload: the change counter and schema cookie moved
		// past the old file's and the imported one's.
		for _, off := range []int{24, 40} {
			old, imp, now := binary.BigEndian.Uint32(first.file[off:]), binary.BigEndian.Uint32(b[off:]), binary.BigEndian.Uint32(img[off:])
			if now <= old || now <= imp {
				t.Errorf("header offset %d: %d, old %d, imported %d", off, now, old, imp)
			}
		}
		if !bytes.Equal(img[24:28], img[92:96]) || binary.BigEndian.Uint32(img[28:]) != uint32(len(img)/1024) {
			t.Errorf("header: counter %x, valid-for %x, pages %d", img[24:28], img[92:96], binary.BigEndian.Uint32(img[28:]))
		}
		if img[18] != 2 || img[19] != 2 {
			t.Errorf("journal mode bytes %d/%d, want WAL", img[18], img[19])
		}
		if got, want := rowsOf(t, db.Path()), rowsOf(t, bPath); got != want {
			t.Fatalf("rows %s, want %s", got, want)
		}
		// Reopening the store finds the same position.
		first = stateOf(t, db)
	})

	corrupt := bytes.Clone(a)
	corrupt[4096] = 0x7f // page 2's b-tree page type
	for _, tc := range []struct {
		name  string
		data  []byte
		setup func()
		want  error
	}{
		{"Text", []byte(strings.Repeat("not a database\n", 500)), nil, replica.ErrInvalidDatabase},
		{"Empty", nil, nil, replica.ErrInvalidDatabase},
		{"Truncated", a[:len(a)-4096], nil, replica.ErrInvalidDatabase},
		{"PartialPage", a[:len(a)-10], nil, replica.ErrInvalidDatabase},
		{"QuickCheck", corrupt, nil, replica.ErrInvalidDatabase},
		{"NotPrimary", a, func() { s.SetPrimary(false) }, replica.ErrNotPrimary},
		{"Fenced", a, func() { s.SetFence(time.Now().Add(-time.Second)) }, replica.ErrFenced},
	} {
		t.Run("Refuse"+tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
				defer func() { s.SetPrimary(true); s.SetFence(time.Time{}) }()
			}
			before := stateOf(t, db)
			_, err := s.Import(ctx, "app.db", bytes.NewReader(tc.data), replica.ImportOptions{})
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !before.equal(stateOf(t, db)) {
				t.Fatal("a refused import changed the database, its position or its log")
			}
			// Nothing is created for a database that did not exist.
			if _, err := s.Import(ctx, "new.db", bytes.NewReader(tc.data), replica.ImportOptions{}); !errors.Is(err, tc.want) {
				t.Fatalf("new.db: got %v, want %v", err, tc.want)
			}
			if s.DB("new.db") != nil {
				t.Fatal("a refused import created the database")
			}
			if _, err := os.Stat(filepath.Join(s.DBDir(), "new.db")); !os.IsNotExist(err) {
				t.Fatalf("a refused import left a directory: %v", err)
			}
			ents, _ := os.ReadDir(s.TempDir())
			if len(ents) != 0 {
				t.Fatalf("temporary files left: %v", ents)
			}
		})
	}
	t.Run("NoCheck", func(t *testing.T) {
		// The damage quick_check finds is the caller's to accept.
		if _, err := s.Import(ctx, "other.db", bytes.NewReader(corrupt), replica.ImportOptions{NoCheck: true}); err != nil {
			t.Fatal(err)
		}
		checkDB(t, s.DB("other.db"))
	})
	t.Run("BadName", func(t *testing.T) {
		for _, name := range []string{"../x.db", "a/b", "", "x.db-wal", ".hidden"} {
			if _, err := s.Import(ctx, name, bytes.NewReader(a), replica.ImportOptions{}); !errors.Is(err, replica.ErrInvalidName) {
				t.Errorf("%q: got %v, want ErrInvalidName", name, err)
			}
		}
	})
	t.Run("Reopen", func(t *testing.T) {
		want := db.Pos()
		s.Close()
		s2 := replica.NewStore(s.Dir)
		s2.Logger = s.Logger
		if err := s2.Open(); err != nil {
			t.Fatal(err)
		}
		defer s2.Close()
		if got := s2.DB("app.db").Pos(); got != want {
			t.Fatalf("reopened at %v, want %v", got, want)
		}
	})
}
