package fuse_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/fuse"
	"github.com/litefs-project/litefs/replica"
)

// mount serves a store from t's temp dir in this process. Only the sqlite3
// CLI, a separate process, touches the mount.
func mount(t *testing.T) *fuse.FS {
	t.Helper()
	if _, err := exec.LookPath("sqlite3"); err != nil {
		t.Fatal("sqlite3 CLI not installed: run scripts/test")
	}
	dir := t.TempDir()
	store := replica.NewStore(filepath.Join(dir, "data"))
	if err := store.Open(); err != nil {
		t.Fatal(err)
	}
	fs := fuse.NewFS(filepath.Join(dir, "mnt"), store)
	if err := fs.Mount(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fs.Unmount(); err != nil {
			t.Error(err)
		}
		store.Close()
	})
	return fs
}

func sqlite3(t *testing.T, path, sql string) (string, error) {
	t.Helper()
	out, err := exec.Command("sqlite3", path, sql).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func TestFS_LockDB(t *testing.T) {
	fs := mount(t)
	path := filepath.Join(fs.Path, "app.db")
	if out, err := sqlite3(t, path, "CREATE TABLE t (x); INSERT INTO t VALUES (1);"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	unlock, err := fs.LockDB(ctx, "app.db")
	if err != nil {
		t.Fatal(err)
	}
	// Readers and writers in another process are kept out.
	for _, sql := range []string{"SELECT count(*) FROM t", "INSERT INTO t VALUES (2)"} {
		if out, err := sqlite3(t, path, sql); err == nil || !strings.Contains(out, "locked") {
			t.Fatalf("%s while locked: %v %q, want database is locked", sql, err, out)
		}
	}
	if err := unlock(); err != nil {
		t.Fatal(err)
	}
	if out, err := sqlite3(t, path, "INSERT INTO t VALUES (2); SELECT count(*) FROM t"); err != nil || out != "2" {
		t.Fatalf("after unlock: %v %q", err, out)
	}

	t.Run("WaitsForReader", func(t *testing.T) {
		// A read transaction held open by another process delays the lock.
		cmd := exec.Command("sqlite3", path)
		stdin, _ := cmd.StdinPipe()
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill()
		stdin.Write([]byte("BEGIN; SELECT count(*) FROM t;\n"))
		// Once the count is printed the reader holds SHARED.
		if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || strings.TrimSpace(line) != "2" {
			t.Fatalf("reader: %q %v", line, err)
		}
		short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if _, err := fs.LockDB(short, "app.db"); err == nil {
			t.Fatal("took the lock while a reader held SHARED")
		}
		stdin.Close() // the reader ends its transaction and exits
		cmd.Wait()
		unlock, err := fs.LockDB(ctx, "app.db")
		if err != nil {
			t.Fatal(err)
		}
		unlock()
	})
}

func TestFS_EmptyMount(t *testing.T) {
	fs := mount(t)
	ents, err := os.ReadDir(fs.Path)
	if err != nil || len(ents) != 0 {
		t.Fatalf("%v %v", ents, err)
	}
}

// reader is a sqlite3 CLI process kept open on one database.
type reader struct {
	t     *testing.T
	stdin io.WriteCloser
	out   *bufio.Reader
}

func startReader(t *testing.T, path string) *reader {
	t.Helper()
	cmd := exec.Command("sqlite3", path)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() })
	return &reader{t: t, stdin: stdin, out: bufio.NewReader(stdout)}
}

// query runs one statement that prints one line, and returns the line.
func (r *reader) query(sql string) string {
	r.t.Helper()
	fmt.Fprintln(r.stdin, sql)
	line, err := r.out.ReadString('\n')
	if err != nil {
		r.t.Fatal(err)
	}
	return strings.TrimSpace(line)
}

// TestFS_ChangeUnderReaders replaces a database's file underneath a
// connection that has it cached (pages in the kernel, a WAL index in shared
// memory), as a replica applying a transaction does: under the locks, the
// node writes the file and invalidates what readers cache; the open
// connection then sees the new content.
func TestFS_ChangeUnderReaders(t *testing.T) {
	for _, mode := range []string{"DELETE", "WAL"} {
		t.Run(mode, func(t *testing.T) {
			fs := mount(t)
			path := filepath.Join(fs.Path, "app.db")
			if out, err := sqlite3(t, path, "PRAGMA journal_mode="+mode+"; CREATE TABLE t (x); INSERT INTO t VALUES (1);"); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			r := startReader(t, path)
			if got := r.query("SELECT count(*) FROM t;"); got != "1" {
				t.Fatalf("reader: %q", got)
			}

			// The new content: the same database three transactions later,
			// checkpointed, built on a plain directory.
			next := filepath.Join(t.TempDir(), "next.db")
			if out, err := sqlite3(t, next, "PRAGMA journal_mode="+mode+"; CREATE TABLE t (x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); INSERT INTO t VALUES (3);"); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			image, err := os.ReadFile(next)
			if err != nil {
				t.Fatal(err)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			// Rollback-mode readers take the database's locks; WAL-mode
			// readers take the WAL index's (and hold SHARED on the database
			// for as long as they are open).
			lock := fs.LockDB
			if mode == "WAL" {
				lock = fs.LockWAL
			}
			unlock, err := lock(ctx, "app.db")
			if err != nil {
				t.Fatal(err)
			}
			data := filepath.Join(filepath.Dir(fs.Path), "data", "dbs", "app.db")
			if err := os.WriteFile(filepath.Join(data, "database"), image, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(filepath.Join(data, "wal"), 0); err != nil && !os.IsNotExist(err) {
				t.Fatal(err)
			}
			if err := fs.Invalidate("app.db"); err != nil {
				t.Fatal(err)
			}
			if err := unlock(); err != nil {
				t.Fatal(err)
			}

			if got := r.query("SELECT count(*) FROM t;"); got != "3" {
				t.Fatalf("open connection after the change: %q, want 3", got)
			}
			if out, err := sqlite3(t, path, "PRAGMA integrity_check; SELECT sum(x) FROM t"); err != nil || out != "ok\n6" {
				t.Fatalf("new connection: %v %q", err, out)
			}
		})
	}
}
