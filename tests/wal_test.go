package tests

import (
	"bufio"
	"database/sql"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustExec(t *testing.T, db interface {
	Exec(string, ...any) (sql.Result, error)
}, query string, args ...any) {
	t.Helper()
	if _, err := db.Exec(query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// TestWAL_Checkpoints runs every checkpoint mode and automatic checkpoints
// past the WAL's auto-checkpoint size: the position moves only with
// commits, and the WAL's restarts (new salts) are followed.
func TestWAL_Checkpoints(t *testing.T) {
	n := startNode(t)
	db := n.OpenDB("app.db", "WAL")
	db.SetMaxOpenConns(1)
	mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)`)
	mustExec(t, db, `PRAGMA wal_autocheckpoint = 100`)
	for _, mode := range []string{"PASSIVE", "FULL", "RESTART", "TRUNCATE"} {
		for i := 0; i < 30; i++ {
			mustExec(t, db, `INSERT INTO t (v) VALUES (randomblob(3000))`)
		}
		before := n.Pos("app.db")
		var busy, logN, ckpt int
		if err := db.QueryRow(`PRAGMA wal_checkpoint(`+mode+`)`).Scan(&busy, &logN, &ckpt); err != nil {
			t.Fatal(err)
		}
		if got := n.Pos("app.db"); got != before {
			t.Fatalf("%s checkpoint moved the position: %v -> %v", mode, before, got)
		}
		n.CheckInvariants()
	}
	// Past the auto-checkpoint size: the WAL is checkpointed and restarted
	// many times over.
	for i := 0; i < 300; i++ {
		mustExec(t, db, `INSERT INTO t (v) VALUES (randomblob(3000))`)
	}
	var count int
	if err := db.QueryRow(`SELECT count(*) FROM t`).Scan(&count); err != nil || count != 420 {
		t.Fatalf("count %d %v", count, err)
	}
	if got := mustSQLite3(t, n.Path("app.db"), "PRAGMA integrity_check; SELECT count(*) FROM t"); got != "ok\n420" {
		t.Fatalf("sqlite3: %q", got)
	}
}

// TestWAL_LongReader holds a read transaction open in another process while
// a writer commits and checkpoints: the reader keeps its snapshot, the
// checkpoint cannot pass it, and later readers see every commit.
func TestWAL_LongReader(t *testing.T) {
	n := startNode(t)
	path := n.Path("app.db")
	mustSQLite3(t, path, "PRAGMA journal_mode=WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);")

	reader := exec.Command("sqlite3", path)
	stdin, _ := reader.StdinPipe()
	stdout, _ := reader.StdoutPipe()
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reader.Process.Kill(); reader.Wait() })
	out := bufio.NewReader(stdout)
	readLine := func() string {
		t.Helper()
		line, err := out.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(line)
	}
	fmt.Fprintln(stdin, "BEGIN; SELECT count(*) FROM t;")
	if got := readLine(); got != "1" {
		t.Fatalf("reader: %q", got)
	}

	db := n.OpenDB("app.db", "WAL")
	db.SetMaxOpenConns(1)
	for i := 0; i < 50; i++ {
		mustExec(t, db, `INSERT INTO t VALUES (?)`, i)
	}
	// The reader's snapshot blocks a full checkpoint: it reports busy.
	var busy, logN, ckpt int
	if err := db.QueryRow(`PRAGMA wal_checkpoint(RESTART)`).Scan(&busy, &logN, &ckpt); err != nil {
		t.Fatal(err)
	}
	if busy != 1 || ckpt >= logN {
		t.Fatalf("checkpoint passed an open reader: busy=%d log=%d checkpointed=%d", busy, logN, ckpt)
	}
	fmt.Fprintln(stdin, "SELECT count(*) FROM t;")
	if got := readLine(); got != "1" {
		t.Fatalf("reader's snapshot changed: %q", got)
	}
	fmt.Fprintln(stdin, "COMMIT; SELECT count(*) FROM t;")
	if got := readLine(); got != "51" {
		t.Fatalf("reader after its transaction: %q", got)
	}
	if err := db.QueryRow(`PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &logN, &ckpt); err != nil || busy != 0 {
		t.Fatalf("checkpoint after reader finished: busy=%d %v", busy, err)
	}
	fmt.Fprintln(stdin, "SELECT count(*) FROM t;")
	if got := readLine(); got != "51" {
		t.Fatalf("reader after checkpoint: %q", got)
	}
}

// TestWAL_ModeSwitch switches between WAL and DELETE while other
// connections are open.
func TestWAL_ModeSwitch(t *testing.T) {
	n := startNode(t)
	path := n.Path("app.db")
	other := n.OpenDB("app.db", "DELETE")
	other.SetMaxOpenConns(1)
	mustExec(t, other, `CREATE TABLE t (x)`)
	mustExec(t, other, `INSERT INTO t VALUES (1)`)
	// Leaving WAL needs every other connection closed: while the other
	// connection is open in WAL mode, the switch fails as on a plain
	// directory. Each step says what the file's mode must be after it.
	for i, step := range []struct{ mode, want string }{
		{"WAL", "wal"}, {"DELETE", "wal"}, {"WAL", "wal"}, {"TRUNCATE", "wal"},
	} {
		out, err := sqlite3(t, path, fmt.Sprintf("PRAGMA busy_timeout=100; PRAGMA journal_mode=%s; INSERT INTO t VALUES (%d);", step.mode, i+2))
		if !strings.EqualFold(step.mode, step.want) && (err == nil || !strings.Contains(out, "locked")) {
			t.Fatalf("switch to %s with a WAL connection open: %v %q, want database is locked", step.mode, err, out)
		}
		mustExec(t, other, `INSERT INTO t VALUES (100)`)
		if got := mustSQLite3(t, path, "PRAGMA journal_mode"); got != step.want {
			t.Fatalf("after switch to %s: mode %s, want %s", step.mode, got, step.want)
		}
		n.CheckInvariants()
	}
	// With the other connection closed, leaving WAL works.
	other.Close()
	mustSQLite3(t, path, "PRAGMA journal_mode=DELETE; INSERT INTO t VALUES (7);")
	if got := mustSQLite3(t, path, "PRAGMA journal_mode; SELECT count(*), sum(x) FROM t; PRAGMA integrity_check"); got != "delete\n8|414\nok" {
		t.Fatalf("got %q", got)
	}
}

// TestWAL_ExclusiveLocking uses locking_mode=EXCLUSIVE, where SQLite keeps
// the WAL index in its own memory.
func TestWAL_ExclusiveLocking(t *testing.T) {
	for _, mode := range journalModes {
		t.Run(mode, func(t *testing.T) {
			n := startNode(t)
			path := n.Path("app.db")
			mustSQLite3(t, path, fmt.Sprintf(`PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=%s;
				CREATE TABLE t (x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);
				BEGIN; INSERT INTO t VALUES (3); ROLLBACK;`, mode))
			before := n.Pos("app.db")
			if got := mustSQLite3(t, path, "SELECT sum(x) FROM t; PRAGMA integrity_check"); got != "3\nok" {
				t.Fatalf("got %q", got)
			}
			n.Restart()
			if got := n.Pos("app.db"); got != before {
				t.Fatalf("position after restart %v, want %v", got, before)
			}
		})
	}
}

// walFrames returns the offsets of the frames in a WAL file.
func walFrames(t *testing.T, wal []byte) (pageSize int, frames []int) {
	t.Helper()
	if len(wal) < 32 {
		t.Fatalf("wal of %d bytes", len(wal))
	}
	pageSize = int(binary.BigEndian.Uint32(wal[8:]))
	for off := 32; off+24+pageSize <= len(wal); off += 24 + pageSize {
		frames = append(frames, off)
	}
	return pageSize, frames
}

// crashWithWAL leaves a stopped node whose WAL holds committed,
// uncheckpointed transactions (litefs and the writer were killed).
func crashWithWAL(t *testing.T) *Node {
	t.Helper()
	n := startNode(t)
	path := n.Path("app.db")
	mustSQLite3(t, path, "PRAGMA journal_mode=WAL; CREATE TABLE acked (id INTEGER PRIMARY KEY, payload TEXT);")
	_, out := startHelper(t, "acked-writer", helperArgs{Path: path, JournalMode: "WAL", Duration: 10 * time.Second})
	for i := 0; i < 200 && out.Scan(); i++ {
	}
	n.Kill()
	for out.Scan() {
	}
	return n
}

// TestWAL_CrashDuringCheckpoint copies part of the WAL into the database
// file, as a checkpoint cut short by a crash leaves it: litefs starts,
// the position matches and every row is there.
func TestWAL_CrashDuringCheckpoint(t *testing.T) {
	n := crashWithWAL(t)
	dir := filepath.Join(n.DataDir, "dbs", "app.db")
	wal, err := os.ReadFile(filepath.Join(dir, "wal"))
	if err != nil {
		t.Fatal(err)
	}
	pageSize, frames := walFrames(t, wal)
	f, err := os.OpenFile(filepath.Join(dir, "database"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A checkpoint writes frames' pages into the database in page order;
	// this one stopped halfway through the first half of the frames.
	for _, off := range frames[:len(frames)/4] {
		pgno := binary.BigEndian.Uint32(wal[off:])
		if _, err := f.WriteAt(wal[off+24:off+24+pageSize], int64(pgno-1)*int64(pageSize)); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	n.Start()
	got := mustSQLite3(t, n.Path("app.db"), "PRAGMA integrity_check; SELECT count(*) = max(id) FROM acked")
	if got != "ok\n1" {
		t.Fatalf("after restart: %q", got)
	}
	n.CheckInvariants()
}

// TestWAL_UnacknowledgedCommit leaves a committed transaction in the WAL
// whose LTX file was never written (litefs stopped between the two): litefs
// cuts it off the WAL, says so, and serves the last acknowledged position.
func TestWAL_UnacknowledgedCommit(t *testing.T) {
	n := crashWithWAL(t)
	dir := filepath.Join(n.DataDir, "dbs", "app.db")
	ltxDir := filepath.Join(dir, "ltx")
	ents, _ := os.ReadDir(ltxDir)
	last := filepath.Join(ltxDir, ents[len(ents)-1].Name())
	if err := os.Remove(last); err != nil {
		t.Fatal(err)
	}
	n.Start()
	if !strings.Contains(n.Logs(), "cutting unacknowledged transactions off the wal") {
		t.Fatalf("no log line:\n%s", n.Logs())
	}
	if got := mustSQLite3(t, n.Path("app.db"), "PRAGMA integrity_check"); got != "ok" {
		t.Fatalf("integrity: %q", got)
	}
	n.CheckInvariants()
}
