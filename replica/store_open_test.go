package replica_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/replica"
)

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestStore_OpenLarge opens a database whose newest LTX file is large (an
// import: a snapshot of every page), which a start checks by its ends only,
// the database's full checksum confirming the position: each thing changed
// behind the node's back while it was stopped is still found.
func TestStore_OpenLarge(t *testing.T) {
	ctx := context.Background()
	// About 5 MB: over ltx.FastVerifyMin.
	src, _ := makeSQLite(t, "delete", 4096, 50000, "v")
	if len(src) < ltx.FastVerifyMin {
		t.Fatalf("database of %d bytes is too small for the test", len(src))
	}
	setup := func(t *testing.T) (dir string, pos ltx.Pos, snap string) {
		t.Helper()
		s := openStore(t)
		if _, err := s.Import(ctx, "app.db", bytes.NewReader(src), replica.ImportOptions{}); err != nil {
			t.Fatal(err)
		}
		db := s.DB("app.db")
		pos = db.Pos()
		files := db.Log().Files()
		snap = db.Log().Path(files[len(files)-1].MinTXID, files[len(files)-1].MaxTXID)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		return s.Dir, pos, snap
	}
	open := func(t *testing.T, dir string, primary bool) (*replica.Store, *syncBuffer, error) {
		t.Helper()
		logs := &syncBuffer{}
		s := replica.NewStore(dir)
		s.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		s.SetPrimary(primary)
		err := s.Open()
		t.Cleanup(func() { s.Close() })
		return s, logs, err
	}
	flip := func(t *testing.T, path string, off int64) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte{b[0] ^ 0x01}, off); err != nil {
			t.Fatal(err)
		}
	}
	waitLog := func(t *testing.T, logs *syncBuffer, want string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), want); {
			if time.Now().After(deadline) {
				t.Fatalf("no log line with %q:\n%s", want, logs.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	t.Run("Unchanged", func(t *testing.T) {
		dir, pos, _ := setup(t)
		s, logs, err := open(t, dir, true)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.DB("app.db").Pos(); got != pos {
			t.Fatalf("position %s, want %s", got, pos)
		}
		waitLog(t, logs, "newest ltx file verified")
		checkDB(t, s.DB("app.db"))
	})
	// A byte of the database: its checksum no longer matches the
	// position, and the log's newest file, read in full, is a snapshot,
	// which the node applies again (as after a crash between logging it
	// and writing the database), primary or replica.
	for _, primary := range []bool{true, false} {
		t.Run(map[bool]string{true: "DatabaseChanged/Primary", false: "DatabaseChanged/Replica"}[primary], func(t *testing.T) {
			dir, pos, _ := setup(t)
			flip(t, filepath.Join(dir, "dbs", "app.db", replica.DatabaseFile), 3*4096+100)
			s, logs, err := open(t, dir, primary)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.DB("app.db").Pos(); got != pos {
				t.Fatalf("position %s, want %s", got, pos)
			}
			want := "applying ltx files again"
			if !strings.Contains(logs.String(), want) {
				t.Errorf("no %q logged:\n%s", want, logs.String())
			}
			checkDB(t, s.DB("app.db"))
		})
	}
	// A byte in the middle of the LTX file: the database still matches
	// the position, so the node starts, and the file is found damaged in
	// the background.
	t.Run("LogFileChanged", func(t *testing.T) {
		dir, pos, snap := setup(t)
		fi, err := os.Stat(snap)
		if err != nil {
			t.Fatal(err)
		}
		flip(t, snap, fi.Size()/2)
		s, logs, err := open(t, dir, true)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.DB("app.db").Pos(); got != pos {
			t.Fatalf("position %s, want %s", got, pos)
		}
		waitLog(t, logs, "the newest ltx file of the database is damaged")
		checkDB(t, s.DB("app.db"))
	})
	// Both: the database does not match, and the file that would tell
	// what it should be is damaged: read in full, it is found corrupt.
	t.Run("BothChanged", func(t *testing.T) {
		dir, _, snap := setup(t)
		fi, err := os.Stat(snap)
		if err != nil {
			t.Fatal(err)
		}
		flip(t, snap, fi.Size()/2)
		flip(t, filepath.Join(dir, "dbs", "app.db", replica.DatabaseFile), 3*4096+100)
		if _, _, err := open(t, dir, true); !errors.Is(err, replica.ErrCorruptLTX) {
			t.Fatalf("got %v, want ErrCorruptLTX", err)
		}
	})
}

// TestStore_ChecksumRecord checks the record of checksums a clean close
// leaves: the next open uses it instead of reading the file, and any change
// to the file after the node's own last write, while it runs or while it
// is stopped, makes the open read the whole file instead, so that the
// change is found.
func TestStore_ChecksumRecord(t *testing.T) {
	ctx := context.Background()
	src, _ := makeSQLite(t, "delete", 4096, 2000, "v")
	if len(src) < 12*4096 {
		t.Fatalf("database of %d bytes is too small for the test", len(src))
	}
	const used = "not reading it"
	type store struct {
		s    *replica.Store
		logs *syncBuffer
	}
	open := func(t *testing.T, dir string) (store, error) {
		t.Helper()
		logs := &syncBuffer{}
		s := replica.NewStore(dir)
		s.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		err := s.Open()
		t.Cleanup(func() { s.Close() })
		return store{s, logs}, err
	}
	setup := func(t *testing.T) (string, ltx.Pos) {
		t.Helper()
		st, err := open(t, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.s.Import(ctx, "app.db", bytes.NewReader(src), replica.ImportOptions{}); err != nil {
			t.Fatal(err)
		}
		// A transaction after the import, so that the log does not end
		// with a snapshot (which a start would apply again over a
		// changed file).
		img := bytes.Clone(src)
		img[9*4096+100] ^= 0xff
		commitImage(t, st.s.DB("app.db"), img, 4096)
		pos := st.s.DB("app.db").Pos()
		if pos.TXID != 2 {
			t.Fatalf("position %s after the import and a transaction", pos)
		}
		if err := st.s.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(st.s.Dir, "dbs", "app.db", replica.ChecksumsFile)); err != nil {
			t.Fatalf("no record after a clean close: %v", err)
		}
		return st.s.Dir, pos
	}
	// overwrite writes a byte of the database file as another process
	// would, keeping its size.
	overwrite := func(t *testing.T, dir string) {
		t.Helper()
		f, err := os.OpenFile(filepath.Join(dir, "dbs", "app.db", replica.DatabaseFile), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte{0xee}, 5*4096+7); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("Used", func(t *testing.T) {
		dir, pos := setup(t)
		st, err := open(t, dir)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(st.logs.String(), used) {
			t.Errorf("record not used:\n%s", st.logs.String())
		}
		if got := st.s.DB("app.db").Pos(); got != pos {
			t.Fatalf("position %s, want %s", got, pos)
		}
		if _, err := os.Stat(filepath.Join(dir, "dbs", "app.db", replica.ChecksumsFile)); !os.IsNotExist(err) {
			t.Errorf("record left after open: %v", err)
		}
		checkDB(t, st.s.DB("app.db"))
	})
	t.Run("ChangedWhileStopped", func(t *testing.T) {
		dir, _ := setup(t)
		overwrite(t, dir)
		_, err := open(t, dir)
		if !errors.Is(err, replica.ErrChecksumMismatch) {
			t.Fatalf("got %v, want ErrChecksumMismatch", err)
		}
	})
	t.Run("ChangedWhileRunning", func(t *testing.T) {
		dir, _ := setup(t)
		st, err := open(t, dir)
		if err != nil {
			t.Fatal(err)
		}
		// The kernel's clock for file times moves in ticks of a few
		// milliseconds: the write comes well after the node's last.
		time.Sleep(20 * time.Millisecond)
		overwrite(t, dir)
		if err := st.s.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, "dbs", "app.db", replica.ChecksumsFile)); !os.IsNotExist(err) {
			t.Fatalf("record kept for a file another process changed: %v", err)
		}
		if !strings.Contains(st.logs.String(), "changed after this node last wrote it") {
			t.Errorf("not said why no record was kept:\n%s", st.logs.String())
		}
		if _, err := open(t, dir); !errors.Is(err, replica.ErrChecksumMismatch) {
			t.Fatalf("got %v, want ErrChecksumMismatch", err)
		}
	})
	t.Run("Damaged", func(t *testing.T) {
		dir, pos := setup(t)
		path := filepath.Join(dir, "dbs", "app.db", replica.ChecksumsFile)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 1
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		st, err := open(t, dir)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(st.logs.String(), used) || !strings.Contains(st.logs.String(), "checksum record damaged") {
			t.Errorf("damaged record used, or not said:\n%s", st.logs.String())
		}
		if got := st.s.DB("app.db").Pos(); got != pos {
			t.Fatalf("position %s, want %s", got, pos)
		}
	})
}
