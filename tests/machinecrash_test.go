package tests

import (
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMount_MachineCrash simulates a crash of the machine (power loss, a
// kernel panic) under a WAL-mode writer, at each synchronous level: litefs
// keeps, in a shadow directory, every file of its data directory as it was
// when last synced (LITEFS_SYNC_SHADOW); the crash kills litefs and the
// writer and replaces the data directory with that shadow, in which every
// file never synced is left empty (its name made durable, its data not).
//
// After the restart the node must recover by itself to a consistent
// position (the invariants hold) and keep at least what plain SQLite keeps
// of the same crashed files: with synchronous=FULL every acknowledged
// commit, with NORMAL every commit up to SQLite's last sync of the WAL.
//
// With checkpoints every 25 pages SQLite syncs often; without them, litefs
// makes its LTX files durable every 512 transactions on its own, so the
// crash leaves the log ahead of the WAL (applied again at start) and empty
// files after it (dropped).
func TestMount_MachineCrash(t *testing.T) {
	rounds := 3
	if testing.Short() {
		rounds = 1
	}
	for _, c := range []struct {
		sync       string
		checkpoint int // wal_autocheckpoint
		commits    int // at least
	}{{"NORMAL", 25, 50}, {"NORMAL", 0, 300}, {"FULL", 25, 50}} {
		t.Run(fmt.Sprintf("%s/checkpoint=%d", c.sync, c.checkpoint), func(t *testing.T) {
			rng := rand.New(rand.NewSource(time.Now().UnixNano()))
			for round := 0; round < rounds; round++ {
				machineCrashRound(t, c.sync, c.checkpoint, c.commits+rng.Intn(800))
			}
		})
	}
}

func machineCrashRound(t *testing.T, sync string, checkpoint, commits int) {
	n := NewNode(t, "")
	shadow := filepath.Join(n.Dir, "shadow")
	n.Env = []string{"LITEFS_SYNC_SHADOW=" + shadow}
	n.Start()
	path := n.Path("app.db")
	mustSQLite3(t, path, "PRAGMA journal_mode=WAL; CREATE TABLE acked (id INTEGER PRIMARY KEY, payload TEXT);")
	_, out := startHelper(t, "acked-writer", helperArgs{Path: path, JournalMode: "WAL&_synchronous=" + sync,
		Duration: 8 * time.Second, Setup: fmt.Sprintf("PRAGMA wal_autocheckpoint=%d", checkpoint)})
	acked := 0
	for acked < commits && out.Scan() {
		acked, _ = strconv.Atoi(out.Text())
	}
	n.Kill()
	for out.Scan() { // acknowledged before the kill landed
		acked, _ = strconv.Atoi(out.Text())
	}

	// The crash: what was synced survives; the rest of each file is lost.
	crashed := filepath.Join(n.Dir, "crashed")
	if err := crashCopy(n.DataDir, shadow, crashed); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(n.DataDir, n.DataDir+".lost"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(crashed, n.DataDir); err != nil {
		t.Fatal(err)
	}

	// What plain SQLite has after the same crash.
	plain := filepath.Join(t.TempDir(), "plain.db")
	copyIfExists(t, filepath.Join(n.DataDir, "dbs", "app.db", "database"), plain)
	copyIfExists(t, filepath.Join(n.DataDir, "dbs", "app.db", "wal"), plain+"-wal")
	plainMax := sqliteMaxID(t, plain)

	n.Env = nil
	n.Start() // on the stale mount
	got := mustSQLite3(t, path, "PRAGMA integrity_check; SELECT count(*), coalesce(max(id), 0) FROM acked")
	lines := strings.Split(got, "\n")
	if len(lines) != 2 || lines[0] != "ok" {
		t.Fatalf("after the crash: %q\n%s", got, n.Logs())
	}
	count, max := 0, 0
	if _, err := fmt.Sscanf(lines[1], "%d|%d", &count, &max); err != nil {
		t.Fatalf("parse %q: %v", lines[1], err)
	}
	t.Logf("synchronous=%s: %d commits acknowledged; after the crash plain SQLite has %d, litefs %d", sync, acked, plainMax, max)
	if count != max {
		t.Fatalf("litefs has %d rows up to id %d: not a prefix of the commits", count, max)
	}
	if max > acked+1 {
		t.Fatalf("litefs has id %d, more than the %d acknowledged commits and the one in flight", max, acked)
	}
	if max < plainMax {
		t.Fatalf("litefs kept commits up to %d, plain SQLite up to %d\n%s", max, plainMax, n.Logs())
	}
	if sync == "FULL" && max < acked {
		t.Fatalf("synchronous=FULL: litefs lost acknowledged commits: has up to %d of %d\n%s", max, acked, n.Logs())
	}
	if max > plainMax && !strings.Contains(n.Logs(), "applying ltx files again") {
		t.Fatalf("litefs has more than the crashed files' database without saying it applied ltx files again\n%s", n.Logs())
	}
	n.CheckInvariants()
	// The node goes on from where it recovered.
	mustSQLite3(t, path, fmt.Sprintf("INSERT INTO acked (id, payload) VALUES (%d, 'after')", max+1))
	n.CheckInvariants()
	n.Stop()
}

// crashCopy builds in dst what a crash of the machine leaves of dataDir:
// the synced copy of each file from shadow, and an empty file for each file
// of dataDir never synced.
func crashCopy(dataDir, shadow, dst string) error {
	return filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dataDir, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(filepath.Join(shadow, rel))
		if os.IsNotExist(err) {
			b = nil
		} else if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
}

func copyIfExists(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if os.IsNotExist(err) {
		return
	} else if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// sqliteMaxID opens a plain database with the sqlite3 CLI and returns the
// highest id in acked (0 if the table is not there).
func sqliteMaxID(t *testing.T, path string) int {
	t.Helper()
	out, err := sqlite3(t, path, "SELECT coalesce(max(id), 0) FROM acked")
	if err != nil {
		return 0
	}
	id, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("plain sqlite: %q: %v", out, err)
	}
	return id
}
