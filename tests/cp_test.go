package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cp copies src to dst with the cp command and returns its output.
func cp(t testing.TB, src, dst string) (string, error) {
	t.Helper()
	out, err := exec.Command("cp", src, dst).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// mountNames lists the mount's directory.
func mountNames(t testing.TB, n *Node) []string {
	t.Helper()
	ents, err := os.ReadDir(n.MountDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// checkNothingLeft fails if name exists in the mount or in the data
// directory, or if a staged file is left in the data directory's tmp.
func checkNothingLeft(t testing.TB, n *Node, name string) {
	t.Helper()
	if _, err := os.Stat(n.Path(name)); !os.IsNotExist(err) {
		t.Errorf("%s: %s is still in the mount: %v", n.Name, name, err)
	}
	for _, e := range mountNames(t, n) {
		if strings.HasPrefix(e, name) {
			t.Errorf("%s: %s is listed in the mount", n.Name, e)
		}
	}
	if _, err := os.Stat(filepath.Join(n.DataDir, "dbs", name)); !os.IsNotExist(err) {
		t.Errorf("%s: %s is still in the data directory: %v", n.Name, name, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(n.DataDir, "tmp")); len(ents) != 0 {
		t.Errorf("%s: files left in tmp: %v", n.Name, ents)
	}
}

// TestCopyIntoMount copies files into the mount of a static primary with
// two replicas: a database copied to a new name becomes one transaction,
// on every node; a text file, a damaged database, a copy over a live
// database and a copy into a replica are refused and leave nothing.
func TestCopyIntoMount(t *testing.T) {
	c := startCluster(t, 2, "")
	p := c.Primary
	mustSQLite3(t, p.Path("app.db"), "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	c.WaitConverged(t, "app.db")

	for _, mode := range []string{"DELETE", "WAL"} {
		t.Run("Valid"+mode, func(t *testing.T) {
			name := strings.ToLower(mode) + ".db"
			src := sourceDB(t, mode, 5000, "copied")
			if out, err := cp(t, src, p.Path(name)); err != nil {
				t.Fatalf("cp: %v: %s", err, out)
			}
			// cp returned after the close, so the import is done.
			if pos := p.Pos(name); pos.TXID != 1 {
				t.Fatalf("%s at %s after cp, want txid 1", name, pos)
			}
			c.WaitConverged(t, name)
			for _, n := range c.Nodes() {
				got := dump(t, n, name, "PRAGMA integrity_check; PRAGMA journal_mode; SELECT count(*), min(v) FROM t")
				if want := "ok\n" + strings.ToLower(mode) + "\n5000|copied1"; got != want {
					t.Errorf("%s: %q, want %q", n.Name, got, want)
				}
			}
			if !strings.Contains(p.Logs(), "a file copied into the mount became the database") {
				t.Error("no log line for the import")
			}
			// SQLite writes to it as to any database.
			mustSQLite3(t, p.Path(name), "INSERT INTO t (v) VALUES ('after');")
			if got := p.Pos(name).TXID; got != 2 {
				t.Fatalf("txid %d after a write, want 2", got)
			}
		})
	}

	t.Run("ShellRedirect", func(t *testing.T) {
		// The shell opens the file, moves the descriptor to stdout with
		// dup2 and closes the first one before cat writes anything.
		src := sourceDB(t, "DELETE", 100, "shell")
		if out, err := exec.Command("sh", "-c", "cat "+src+" > "+p.Path("shell.db")).CombinedOutput(); err != nil {
			t.Fatalf("cat >: %v: %s", err, out)
		}
		c.WaitConverged(t, "shell.db")
		if got := dump(t, c.Replicas[0], "shell.db", "SELECT count(*) FROM t; PRAGMA integrity_check"); got != "100\nok" {
			t.Fatalf("replica: %q", got)
		}
	})

	t.Run("OnePage", func(t *testing.T) {
		// cp writes it in one write of one page: still a copy, as cp
		// opens it write-only, which SQLite never does.
		src := filepath.Join(t.TempDir(), "one.db")
		mustSQLite3(t, src, "PRAGMA user_version=7;")
		if fi, _ := os.Stat(src); fi.Size() != 4096 {
			t.Fatalf("source is %d bytes", fi.Size())
		}
		if out, err := cp(t, src, p.Path("one.db")); err != nil {
			t.Fatalf("cp: %v: %s", err, out)
		}
		c.WaitConverged(t, "one.db")
		if got := dump(t, c.Replicas[1], "one.db", "PRAGMA user_version"); got != "7" {
			t.Fatalf("replica: %q", got)
		}
	})

	t.Run("ReaderMidCopy", func(t *testing.T) {
		// Another process opens, reads and closes the file while it is
		// being copied: that close is not the copy's.
		b, _ := os.ReadFile(sourceDB(t, "DELETE", 2000, "mid"))
		f, err := os.OpenFile(p.Path("mid.db"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Write(b[:len(b)/2]); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("cat", p.Path("mid.db")).Output(); err != nil || len(out) != len(b)/2 {
			t.Fatalf("cat of the file being copied: %v, %d bytes of %d", err, len(out), len(b)/2)
		}
		if _, err := f.Write(b[len(b)/2:]); err != nil {
			t.Fatalf("write after another process closed the file: %v", err)
		}
		if err := f.Close(); err != nil {
			t.Fatalf("close: %v", err)
		}
		c.WaitConverged(t, "mid.db")
		if got := dump(t, c.Replicas[0], "mid.db", "SELECT count(*) FROM t; PRAGMA integrity_check"); got != "2000\nok" {
			t.Fatalf("replica: %q", got)
		}
	})

	t.Run("TextFile", func(t *testing.T) {
		src := filepath.Join(t.TempDir(), "notes.txt")
		os.WriteFile(src, []byte(strings.Repeat("not a database\n", 20000)), 0o644)
		out, err := cp(t, src, p.Path("notes.db"))
		if err == nil || !strings.Contains(out, "Invalid argument") {
			t.Fatalf("cp of a text file: %v: %s", err, out)
		}
		for _, n := range c.Nodes() {
			checkNothingLeft(t, n, "notes.db")
		}
		if !strings.Contains(p.Logs(), "not a SQLite database") {
			t.Error("no log line saying why")
		}
	})

	t.Run("Damaged", func(t *testing.T) {
		// Starts as a database but is cut short: refused when closed.
		b, _ := os.ReadFile(sourceDB(t, "DELETE", 5000, "cut"))
		src := filepath.Join(t.TempDir(), "cut.db")
		os.WriteFile(src, b[:len(b)/2+100], 0o644)
		out, err := cp(t, src, p.Path("cut.db"))
		if err == nil || !strings.Contains(out, "Invalid argument") {
			t.Fatalf("cp of a truncated database: %v: %s", err, out)
		}
		for _, n := range c.Nodes() {
			checkNothingLeft(t, n, "cut.db")
		}
		waitUntil(t, 5*time.Second, "a log line saying why and what to do", func() bool {
			logs := p.Logs()
			return strings.Contains(logs, "copy into the mount refused") && strings.Contains(logs, "litefs import -name cut.db")
		})
	})

	t.Run("OverLiveDatabase", func(t *testing.T) {
		at := p.Pos("app.db")
		src := sourceDB(t, "DELETE", 10, "over")
		out, err := cp(t, src, p.Path("app.db"))
		if err == nil || !strings.Contains(out, "Permission denied") {
			t.Fatalf("cp over a live database: %v: %s", err, out)
		}
		if got := p.Pos("app.db"); got != at {
			t.Fatalf("position moved from %s to %s", at, got)
		}
		if got := dump(t, p, "app.db", "SELECT x FROM t; PRAGMA integrity_check"); got != "1\nok" {
			t.Fatalf("app.db after a refused copy: %q", got)
		}
		if !strings.Contains(p.Logs(), "litefs import -name app.db") {
			t.Error("no log line pointing to litefs import")
		}
	})

	t.Run("IntoReplica", func(t *testing.T) {
		r := c.Replicas[0]
		out, err := cp(t, sourceDB(t, "DELETE", 10, "rep"), r.Path("rep.db"))
		if err == nil || !strings.Contains(out, "Read-only file system") {
			t.Fatalf("cp into a replica: %v: %s", err, out)
		}
		for _, n := range c.Nodes() {
			checkNothingLeft(t, n, "rep.db")
		}
	})

	t.Run("Touch", func(t *testing.T) {
		// An empty file created and closed is an empty database, as before.
		if out, err := exec.Command("touch", p.Path("empty.db")).CombinedOutput(); err != nil {
			t.Fatalf("touch: %v: %s", err, out)
		}
		mustSQLite3(t, p.Path("empty.db"), "CREATE TABLE t (x); INSERT INTO t VALUES (7);")
		c.WaitConverged(t, "empty.db")
		if got := dump(t, c.Replicas[1], "empty.db", "SELECT x FROM t"); got != "7" {
			t.Fatalf("replica: %q", got)
		}
	})
	c.WaitConverged(t, "app.db", "delete.db", "wal.db", "shell.db", "one.db", "mid.db", "empty.db")
}

// TestConsul_CopyIntoMount copies a database into the primary of a Consul
// cluster, whose mount answers opens, so the kernel sends releases too: a
// reader's open and close mid-copy is not the copy's close, the copy
// becomes the database on every node, and a text file leaves nothing.
func TestConsul_CopyIntoMount(t *testing.T) {
	c := startConsulCluster(t, 3)
	p := c.WaitPrimary(t, 5*time.Second)
	b, _ := os.ReadFile(sourceDB(t, "WAL", 2000, "consul"))
	f, err := os.OpenFile(p.Path("app.db"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b[:len(b)/2]); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cat", p.Path("app.db")).Output(); err != nil || len(out) != len(b)/2 {
		t.Fatalf("cat of the file being copied: %v, %d bytes of %d", err, len(out), len(b)/2)
	}
	if _, err := f.Write(b[len(b)/2:]); err != nil {
		t.Fatalf("write after another process closed the file: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	c.WaitConverged(t, "app.db")
	for _, n := range c.Nodes {
		if got := dump(t, n, "app.db", "SELECT count(*) FROM t; PRAGMA journal_mode; PRAGMA integrity_check"); got != "2000\nwal\nok" {
			t.Errorf("%s: %q", n.Name, got)
		}
	}

	src := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(src, []byte(strings.Repeat("not a database\n", 100)), 0o644)
	if out, err := cp(t, src, p.Path("notes.db")); err == nil {
		t.Fatalf("cp of a text file: %s", out)
	}
	for _, n := range c.Nodes {
		checkNothingLeft(t, n, "notes.db")
	}
}
