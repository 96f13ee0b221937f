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
			want := "applying the newest ltx file again"
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
