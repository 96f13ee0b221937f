package tests

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestStart_BadConfig runs litefs with configs it must refuse at start,
// with an error naming the key.
func TestStart_BadConfig(t *testing.T) {
	for _, tt := range []struct {
		name, yaml, want string
	}{
		{"UnknownKey", "fuse:\n  dir: %[1]s/mnt\n  allow-others: true\ndata:\n  dir: %[1]s/data\n", "allow-others"},
		{"MissingFUSEDir", "data:\n  dir: %[1]s/data\n", "fuse.dir"},
		{"FUSEDirInsideDataDir", "fuse:\n  dir: %[1]s/data/mnt\ndata:\n  dir: %[1]s/data\n", "fuse.dir"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "litefs.yml")
			if err := os.WriteFile(path, []byte(fmt.Sprintf(tt.yaml, dir)), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(litefsBin, "mount", "-config", path).CombinedOutput()
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 {
				t.Fatalf("exit: %v, output %s", err, out)
			}
			if !bytes.Contains(out, []byte(tt.want)) {
				t.Fatalf("error does not name %q: %s", tt.want, out)
			}
			if isMounted(filepath.Join(dir, "mnt")) {
				t.Fatal("mounted despite the bad config")
			}
		})
	}
	t.Run("NoConfig", func(t *testing.T) {
		cmd := exec.Command(litefsBin, "mount")
		cmd.Dir = t.TempDir()
		out, err := cmd.CombinedOutput()
		if err == nil || !bytes.Contains(out, []byte("-config")) {
			t.Fatalf("err %v, output %s", err, out)
		}
	})
}

// stoppedNodeWithData returns a stopped node holding app.db with a few
// transactions.
func stoppedNodeWithData(t *testing.T) *Node {
	t.Helper()
	n := NewNode(t, "")
	n.Start()
	mustSQLite3(t, n.Path("app.db"), "CREATE TABLE t (x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);")
	n.Stop()
	return n
}

// snapshotDir returns the contents of every file under dir.
func snapshotDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	m := make(map[string][]byte)
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		m[path] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func checkUnchanged(t *testing.T, before, after map[string][]byte) {
	t.Helper()
	for path, b := range before {
		if !bytes.Equal(after[path], b) {
			t.Errorf("%s changed", path)
		}
	}
	if len(after) != len(before) {
		t.Errorf("%d files before, %d after", len(before), len(after))
	}
}

// TestStart_CorruptLTX damages the newest LTX file: litefs refuses to start,
// names the file and changes nothing.
func TestStart_CorruptLTX(t *testing.T) {
	n := stoppedNodeWithData(t)
	ltxDir := filepath.Join(n.DataDir, "dbs", "app.db", "ltx")
	ents, _ := os.ReadDir(ltxDir)
	last := filepath.Join(ltxDir, ents[len(ents)-1].Name())
	b, _ := os.ReadFile(last)
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(last, b, 0o644); err != nil {
		t.Fatal(err)
	}
	before := snapshotDir(t, n.DataDir)
	n.StartCmd()
	if err := n.WaitExit(15 * time.Second); err == nil {
		t.Fatal("litefs started on a corrupt ltx file")
	}
	logs := n.Logs()
	if !strings.Contains(logs, last) || !strings.Contains(logs, "corrupt ltx file") || !strings.Contains(logs, ".restore") {
		t.Fatalf("error does not name the file and the way out:\n%s", logs)
	}
	checkUnchanged(t, before, snapshotDir(t, n.DataDir))
}

// TestStart_ChecksumMismatch changes a database file behind litefs's back:
// it refuses to serve it, reports both checksums and changes nothing.
func TestStart_ChecksumMismatch(t *testing.T) {
	n := stoppedNodeWithData(t)
	path := filepath.Join(n.DataDir, "dbs", "app.db", "database")
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("changed behind litefs's back"), 4096+2000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	before := snapshotDir(t, n.DataDir)
	n.StartCmd()
	if err := n.WaitExit(15 * time.Second); err == nil {
		t.Fatal("litefs served a database that does not match its log")
	}
	if logs := n.Logs(); !strings.Contains(logs, "checksum of") || !strings.Contains(logs, "ends at txid 0000000000000003 with checksum") {
		t.Fatalf("error does not report both checksums:\n%s", logs)
	}
	checkUnchanged(t, before, snapshotDir(t, n.DataDir))
}

// TestStart_Exec runs a command once the mount is ready; litefs exits with
// its exit code and unmounts.
func TestStart_Exec(t *testing.T) {
	n := NewNode(t, "")
	n.WriteConfig(fmt.Sprintf("fuse:\n  dir: %s\ndata:\n  dir: %s\nhttp:\n  addr: %s\nexec: \"sqlite3 %s 'CREATE TABLE t (x); INSERT INTO t VALUES (7);' && exit 3\"\n",
		n.MountDir, n.DataDir, n.HTTPAddr, n.Path("app.db")))
	n.StartCmd()
	err := n.WaitExit(30 * time.Second)
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 3 {
		t.Fatalf("exit %v, want status 3\n%s", err, n.Logs())
	}
	if isMounted(n.MountDir) {
		t.Fatal("still mounted after the exec'd command exited")
	}
	n.WriteConfig(fmt.Sprintf("fuse:\n  dir: %s\ndata:\n  dir: %s\nhttp:\n  addr: %s\n", n.MountDir, n.DataDir, n.HTTPAddr))
	n.Start()
	if got := mustSQLite3(t, n.Path("app.db"), "SELECT x FROM t"); got != "7" {
		t.Fatalf("got %q", got)
	}
	n.CheckInvariants()
}

// TestStart_ExecSignals stops litefs running a shell command with a child
// of its own: SIGTERM reaches the whole command, not only its shell, so
// nothing is left running on the unmounted directory.
func TestStart_ExecSignals(t *testing.T) {
	n := NewNode(t, "")
	marker := filepath.Join(n.Dir, "child-ran")
	// The child traps SIGTERM and leaves a mark; the shell waits for it.
	n.WriteConfig(readFile(t, n.ConfigPath) + fmt.Sprintf(
		"exec: \"sh -c 'trap \\\"touch %s; exit 0\\\" TERM; while :; do sleep 0.1; done' & wait\"\n", marker))
	n.Start()
	time.Sleep(300 * time.Millisecond) // the child sets its trap
	n.Stop()
	if n.running() {
		t.Fatal("litefs did not stop")
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the exec command's child did not get SIGTERM: %v\n%s", err, n.Logs())
	}
}

// TestStart_TornLTX leaves a half-written newest LTX file whose transaction
// never reached the database, as a crash before the file's sync returned
// does: litefs removes it, says so, and serves the previous position.
func TestStart_TornLTX(t *testing.T) {
	n := stoppedNodeWithData(t)
	dbPath := filepath.Join(n.DataDir, "dbs", "app.db", "database")
	before, _ := os.ReadFile(dbPath)
	n.Start()
	pos := n.Pos("app.db")
	mustSQLite3(t, n.Path("app.db"), "INSERT INTO t VALUES (3);")
	n.Stop()

	ltxDir := filepath.Join(n.DataDir, "dbs", "app.db", "ltx")
	ents, _ := os.ReadDir(ltxDir)
	last := filepath.Join(ltxDir, ents[len(ents)-1].Name())
	b, _ := os.ReadFile(last)
	if err := os.WriteFile(last, b[:len(b)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dbPath, before, 0o644); err != nil {
		t.Fatal(err)
	}
	n.Start()
	if got := n.Pos("app.db"); got != pos {
		t.Fatalf("position %v, want %v", got, pos)
	}
	if _, err := os.Stat(last); !os.IsNotExist(err) {
		t.Fatalf("torn file still there: %v", err)
	}
	if !strings.Contains(n.Logs(), "removing torn ltx files") {
		t.Fatalf("no log line:\n%s", n.Logs())
	}
	mustSQLite3(t, n.Path("app.db"), "INSERT INTO t VALUES (4);")
	if got := mustSQLite3(t, n.Path("app.db"), "SELECT group_concat(x) FROM t"); got != "1,2,4" {
		t.Fatalf("rows %q", got)
	}
	n.CheckInvariants()
}
