package tests

import (
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

// runCmd runs a command and returns its combined output.
func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// endTx runs stmts in a transaction on db and commits or rolls it back.
func endTx(t testing.TB, db *sql.DB, commit bool, stmts ...string) {
	t.Helper()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range stmts {
		if _, err := tx.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if commit {
		err = tx.Commit()
	} else {
		err = tx.Rollback()
	}
	if err != nil {
		t.Fatalf("commit=%t: %v", commit, err)
	}
}

// superJournals returns the super-journals left in a node's data directory.
func superJournals(t testing.TB, n *Node) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(n.DataDir, "dbs", "*", "super-journal-*"))
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

// checkAdvanced fails unless db moved exactly by txns transactions.
func checkAdvanced(t testing.TB, n *Node, db string, before ltx.Pos, txns int) {
	t.Helper()
	if got := n.Pos(db); int(got.TXID) != int(before.TXID)+txns {
		t.Errorf("%s on %s: txid %s, want %d (%s + %d)", db, n.Name, got.TXID, int(before.TXID)+txns, before.TXID, txns)
	}
}

// attachModes are the journal modes of the two databases of a transaction
// over several databases: the main one and the attached one.
var attachModes = [][2]string{
	{"DELETE", "DELETE"}, {"TRUNCATE", "TRUNCATE"}, {"PERSIST", "PERSIST"}, {"WAL", "WAL"}, {"DELETE", "WAL"},
}

// TestSQLite_Attach runs transactions over an ATTACHed database through the
// mount, with the sqlite3 CLI and go-sqlite3: SQLite writes a super-journal
// beside the main database in rollback modes; each database's part becomes
// its own LTX transaction; a ROLLBACK logs nothing; a replica gets both.
func TestSQLite_Attach(t *testing.T) {
	for _, modes := range attachModes {
		t.Run(modes[0]+"+"+modes[1], func(t *testing.T) {
			c := startCluster(t, 1, "")
			p := c.Primary
			a, b := p.Path("a.db"), p.Path("b.db")
			mustSQLite3(t, a, fmt.Sprintf("PRAGMA journal_mode=%s; CREATE TABLE t (x);", modes[0]))
			mustSQLite3(t, b, fmt.Sprintf("PRAGMA journal_mode=%s; CREATE TABLE t (x);", modes[1]))
			attach := fmt.Sprintf("ATTACH '%s' AS b; ", b)

			// Both written, then only the main one under BEGIN IMMEDIATE
			// (SQLite still makes it a transaction over both).
			posA, posB := p.Pos("a.db"), p.Pos("b.db")
			mustSQLite3(t, a, attach+"BEGIN; INSERT INTO main.t VALUES (1); INSERT INTO b.t VALUES (2); COMMIT;")
			checkAdvanced(t, p, "a.db", posA, 1)
			checkAdvanced(t, p, "b.db", posB, 1)
			mustSQLite3(t, a, attach+"BEGIN IMMEDIATE; INSERT INTO main.t VALUES (3); COMMIT;")
			checkAdvanced(t, p, "a.db", posA, 2)
			checkAdvanced(t, p, "b.db", posB, 1)

			// go-sqlite3: a commit and a rollback over both.
			db := openDB(t, a, modes[0])
			db.SetMaxOpenConns(1) // one connection: ATTACH holds for every statement
			mustExec(t, db, "ATTACH ? AS b", b)
			for _, commit := range []bool{true, false} {
				endTx(t, db, commit, "INSERT INTO main.t VALUES (10)", "INSERT INTO b.t SELECT x + 10 FROM main.t")
			}
			checkAdvanced(t, p, "a.db", posA, 3)
			checkAdvanced(t, p, "b.db", posB, 2)
			db.Close()

			wantA, wantB := "1\n3\n10", "2\n11\n13\n20"
			if got := dump(t, p, "a.db", "SELECT x FROM t ORDER BY x"); got != wantA {
				t.Errorf("a.db: %q, want %q", got, wantA)
			}
			if got := dump(t, p, "b.db", "SELECT x FROM t ORDER BY x"); got != wantB {
				t.Errorf("b.db: %q, want %q", got, wantB)
			}
			if left := superJournals(t, p); len(left) != 0 {
				t.Errorf("super-journals left: %v", left)
			}
			c.WaitConverged(t, "a.db", "b.db")
			r := c.Replicas[0]
			if got := dump(t, r, "a.db", "SELECT x FROM t ORDER BY x"); got != wantA {
				t.Errorf("replica a.db: %q, want %q", got, wantA)
			}
			if got := dump(t, r, "b.db", "SELECT x FROM t ORDER BY x"); got != wantB {
				t.Errorf("replica b.db: %q, want %q", got, wantB)
			}
		})
	}
}

// TestSQLite_AttachCrash stops litefs (crash) or the writer (kill-writer)
// at each step of a transaction over two databases and checks that both
// databases end where plain SQLite would recover them: rolled back while
// the super-journal exists, committed once SQLite deleted it, even if the
// journals were not finalized (litefs then logs them at start).
func TestSQLite_AttachCrash(t *testing.T) {
	type point struct {
		step      string
		committed bool
	}
	points := []point{
		{"super-journal-created", false},
		{"super-journal-removed", true},
		{"journal-finalized#1", true}, // the main database's journal deleted, the other's not yet
	}
	modes := []string{"DELETE", "TRUNCATE", "PERSIST"}
	if testing.Short() {
		modes = modes[:1]
	}
	for _, mode := range modes {
		for _, pt := range points {
			if strings.HasPrefix(pt.step, "journal-finalized") && mode != "DELETE" {
				continue // the step is a journal's deletion
			}
			for _, action := range []string{"crash", "kill-writer"} {
				t.Run(fmt.Sprintf("%s/%s/%s", mode, pt.step, action), func(t *testing.T) {
					n := startNode(t)
					a, b := n.Path("a.db"), n.Path("b.db")
					mustSQLite3(t, a, fmt.Sprintf("PRAGMA journal_mode=%s; CREATE TABLE t (x); INSERT INTO t VALUES (1);", mode))
					mustSQLite3(t, b, fmt.Sprintf("PRAGMA journal_mode=%s; CREATE TABLE t (x); INSERT INTO t VALUES (1);", mode))
					posA, posB := n.Pos("a.db"), n.Pos("b.db")

					n.Stop()
					n.Env = []string{"LITEFS_FAILPOINT=" + pt.step + ":" + action}
					n.Start()
					// Past the commit point SQLite ignores errors finalizing
					// journals, so COMMIT may even return success.
					out, err := sqlite3(t, a, fmt.Sprintf("ATTACH '%s' AS b; BEGIN; INSERT INTO main.t VALUES (2); INSERT INTO b.t VALUES (2); COMMIT;", b))
					// The log line travels through a pipe: it may arrive
					// after the writer is seen gone.
					waitUntil(t, 5*time.Second, fmt.Sprintf("the failpoint (sqlite3: %v: %s)", err, out), func() bool {
						return strings.Contains(n.Logs(), "failpoint reached")
					})
					if action == "kill-writer" && err == nil {
						t.Fatalf("the writer survived: %s", out)
					}
					n.Env = nil
					if action == "crash" {
						if err := n.WaitExit(10 * time.Second); err == nil {
							t.Fatal("litefs exited cleanly at a crash failpoint")
						}
						n.Start() // on the stale mount: recovery
					}

					want, txns := "1", 0
					if pt.committed {
						want, txns = "1\n2", 1
					}
					// Opening each database settles its journal, as SQLite
					// does with a hot journal.
					for _, db := range []string{"a.db", "b.db"} {
						if got := mustSQLite3(t, n.Path(db), "PRAGMA integrity_check; SELECT x FROM t ORDER BY x"); got != "ok\n"+want {
							t.Errorf("%s: %q, want %q\n%s", db, got, "ok\n"+want, n.Logs())
						}
					}
					checkAdvanced(t, n, "a.db", posA, txns)
					checkAdvanced(t, n, "b.db", posB, txns)
					if action == "crash" && pt.committed && !strings.Contains(n.Logs(), "logged the transaction of a finished super-journal") {
						t.Errorf("no log line about logging a finished super-journal's transaction:\n%s", n.Logs())
					}
					if action == "crash" {
						if left := superJournals(t, n); len(left) != 0 {
							t.Errorf("super-journals left after recovery: %v", left)
						}
					}
					// The databases take new transactions; a restart finds
					// them clean.
					mustSQLite3(t, a, fmt.Sprintf("ATTACH '%s' AS b; BEGIN; INSERT INTO main.t VALUES (3); INSERT INTO b.t VALUES (3); COMMIT;", b))
					checkAdvanced(t, n, "a.db", posA, txns+1)
					checkAdvanced(t, n, "b.db", posB, txns+1)
					n.Restart()
					checkAdvanced(t, n, "a.db", posA, txns+1)
				})
			}
		}
	}
}

// TestSQLite_Spill runs transactions larger than SQLite's page cache, which
// write pages into the database file before COMMIT in any order: on a new
// database (its first write is not page 1, past pages not yet written) and
// an existing one, committed and rolled back, in every rollback mode.
func TestSQLite_Spill(t *testing.T) {
	const load = `WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < %d) INSERT INTO t SELECT randomblob(1000) FROM c;`
	for _, mode := range journalModes[:3] {
		t.Run(mode, func(t *testing.T) {
			n := startNode(t)

			// The sqlite3 CLI, default page cache (2 MB): a 20 MB first
			// transaction.
			big := n.Path("big.db")
			mustSQLite3(t, big, fmt.Sprintf("PRAGMA journal_mode=%s; BEGIN; CREATE TABLE t (x); "+load+" COMMIT;", mode, 20000))
			if got := mustSQLite3(t, big, "PRAGMA integrity_check; SELECT count(*) FROM t"); got != "ok\n20000" {
				t.Fatalf("big.db: %q", got)
			}
			if got := n.Pos("big.db").TXID; got != 1 {
				t.Errorf("big.db: txid %s, want 1 (one transaction)", got)
			}

			// go-sqlite3 with a tiny cache: a first transaction rolled
			// back leaves an empty database and logs nothing; then one
			// committed.
			db := n.OpenDB("new.db", mode)
			db.SetMaxOpenConns(1)
			mustExec(t, db, "PRAGMA cache_size = 5")
			for _, commit := range []bool{false, true} {
				endTx(t, db, commit, "CREATE TABLE t (x)", fmt.Sprintf(load, 500))
				if !commit {
					if pos := n.Pos("new.db"); pos != (ltx.Pos{}) {
						t.Fatalf("after rollback: position %s, want none", pos)
					}
					if fi, err := os.Stat(filepath.Join(n.DataDir, "dbs", "new.db", "database")); err != nil || fi.Size() != 0 {
						t.Fatalf("after rollback: database file %v, %v; want empty", fi, err)
					}
				}
			}
			if got := n.Pos("new.db").TXID; got != 1 {
				t.Errorf("new.db: txid %s, want 1", got)
			}

			// An existing database: a spill rolled back changes nothing,
			// a spill committed is one transaction.
			before := n.Pos("new.db")
			for _, commit := range []bool{false, true} {
				endTx(t, db, commit, "UPDATE t SET x = randomblob(1000)", fmt.Sprintf(load, 300))
				if !commit && n.Pos("new.db") != before {
					t.Fatalf("rollback moved the position from %s to %s", before, n.Pos("new.db"))
				}
			}
			checkAdvanced(t, n, "new.db", before, 1)
			if got := mustSQLite3(t, n.Path("new.db"), "PRAGMA integrity_check; SELECT count(*) FROM t"); got != "ok\n800" {
				t.Fatalf("new.db: %q", got)
			}
		})
	}
}

// TestSQLite_SpillCrash kills litefs (and the writer), or only the writer,
// while the first transaction of a new database has spilled pages into its
// file: the database comes back empty, with no position, and takes
// transactions.
func TestSQLite_SpillCrash(t *testing.T) {
	for _, mode := range journalModes[:3] {
		for _, what := range []string{"litefs", "writer"} {
			t.Run(mode+"/"+what, func(t *testing.T) {
				n := startNode(t)
				path := n.Path("new.db")
				cmd, out := startHelper(t, "spill-new-hang", helperArgs{Path: path, JournalMode: mode})
				if !out.Scan() || out.Text() != "ready" {
					t.Fatalf("spill helper did not get ready")
				}
				if fi, err := os.Stat(filepath.Join(n.DataDir, "dbs", "new.db", "database")); err != nil || fi.Size() == 0 {
					t.Fatalf("the transaction did not spill into the database file (%v, %v); the test proves nothing", fi, err)
				}
				if what == "litefs" {
					n.Kill()
				}
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				if what == "litefs" {
					n.Start()
					if !strings.Contains(n.Logs(), "rolling back the hot journal") {
						t.Errorf("no log line about the rollback:\n%s", n.Logs())
					}
				}
				// Opening the database rolls the hot journal back, if
				// litefs has not.
				if got := mustSQLite3(t, path, "SELECT count(*) FROM sqlite_schema"); got != "0" {
					t.Fatalf("schema after the crash: %q, want empty", got)
				}
				if pos := n.Pos("new.db"); pos != (ltx.Pos{}) {
					t.Fatalf("position %s, want none", pos)
				}
				mustSQLite3(t, path, fmt.Sprintf("PRAGMA journal_mode=%s; CREATE TABLE t (x); INSERT INTO t VALUES (1);", mode))
				if got := n.Pos("new.db").TXID; got == 0 {
					t.Fatal("no transaction logged after recovery")
				}
			})
		}
	}
}

// TestSQLite_SmallThings: a file the mount refuses leaves nothing behind;
// -pos files stay out of listings and readable by name; a database grown
// in chunks (zero bytes written past its end) works.
func TestSQLite_SmallThings(t *testing.T) {
	n := startNode(t)
	mustSQLite3(t, n.Path("app.db"), "CREATE TABLE t (x); INSERT INTO t VALUES (1);")

	t.Run("RefusedCopy", func(t *testing.T) {
		src := filepath.Join(t.TempDir(), "notes.txt")
		if err := os.WriteFile(src, []byte("not a database\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := runCmd("cp", src, n.Path("notes.txt"))
		if err == nil {
			t.Fatalf("cp into the mount succeeded: %s", out)
		}
		if _, err := os.Stat(n.Path("notes.txt")); !os.IsNotExist(err) {
			t.Errorf("notes.txt left in the mount: %v", err)
		}
		if _, err := os.Stat(n.Path("notes.txt-pos")); !os.IsNotExist(err) {
			t.Errorf("notes.txt-pos left in the mount: %v", err)
		}
		if _, err := os.Stat(filepath.Join(n.DataDir, "dbs", "notes.txt")); !os.IsNotExist(err) {
			t.Errorf("notes.txt left in the data directory: %v", err)
		}
	})
	t.Run("PosNotListed", func(t *testing.T) {
		matches, err := filepath.Glob(n.Path("app.db*"))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range matches {
			if strings.HasSuffix(m, "-pos") {
				t.Errorf("listing shows %s", m)
			}
		}
		if pos := n.Pos("app.db"); pos.TXID != 2 {
			t.Errorf("app.db-pos by name: %s", pos)
		}
	})
	t.Run("TruncateEmpty", func(t *testing.T) {
		// An empty database extended by ftruncate is accepted; with no
		// transaction in it, a restart makes it empty again, and SQLite
		// then uses it as a new database.
		path := n.Path("grown.db")
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		refusals := strings.Count(n.Logs(), "refused")
		if err := os.Truncate(path, 64<<10); err != nil {
			t.Fatalf("ftruncate of an empty database: %v", err)
		}
		if strings.Count(n.Logs(), "refused") != refusals {
			t.Errorf("a refusal was logged:\n%s", n.Logs())
		}
		n.Restart()
		if !strings.Contains(n.Logs(), "making it empty again") {
			t.Errorf("no log line about making grown.db empty again:\n%s", n.Logs())
		}
		if fi, err := os.Stat(path); err != nil || fi.Size() != 0 {
			t.Fatalf("after restart: %v, %v; want an empty database", fi, err)
		}
		mustSQLite3(t, path, "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
		if got := mustSQLite3(t, path, "PRAGMA integrity_check; SELECT x FROM t"); got != "ok\n1" {
			t.Fatalf("grown.db: %q", got)
		}
	})
	t.Run("ChunkSize", func(t *testing.T) {
		path := n.Path("chunked.db")
		refusals := strings.Count(n.Logs(), "refused")
		for _, sql := range []string{
			"CREATE TABLE t (x); INSERT INTO t VALUES (1);",
			"INSERT INTO t SELECT randomblob(3000) FROM t; INSERT INTO t SELECT randomblob(3000) FROM t; INSERT INTO t SELECT randomblob(3000) FROM t;",
		} {
			if out, err := runCmd("sqlite3", "-bail", "-cmd", ".filectrl chunk_size 65536", path, sql); err != nil {
				t.Fatalf("sqlite3 with a chunk size: %v: %s", err, out)
			}
		}
		if got := mustSQLite3(t, path, "PRAGMA integrity_check; SELECT count(*) FROM t"); got != "ok\n8" {
			t.Fatalf("chunked.db: %q", got)
		}
		if strings.Count(n.Logs(), "refused") != refusals {
			t.Errorf("a refusal was logged:\n%s", n.Logs())
		}
	})
}

// TestReplication_WALLongReaders keeps connections open on a WAL replica
// while transactions arrive: whichever connection reads first after an
// apply, every other one must see the new data too (SQLite decides from
// the WAL index header whether its cache is still good).
func TestReplication_WALLongReaders(t *testing.T) {
	c := startCluster(t, 1, "")
	mustSQLite3(t, c.Primary.Path("app.db"), "PRAGMA journal_mode=WAL; CREATE TABLE t (x);")
	c.WaitConverged(t, "app.db")
	r := c.Replicas[0]
	var conns []*sql.DB
	for i := 0; i < 3; i++ {
		db := r.OpenDB("app.db", "WAL")
		db.SetMaxOpenConns(1)
		conns = append(conns, db)
	}
	count := func(db *sql.DB) int {
		var n int
		if err := db.QueryRow("SELECT count(*) FROM t").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, db := range conns {
		count(db)
	}
	for i := 1; i <= 6; i++ {
		mustSQLite3(t, c.Primary.Path("app.db"), "INSERT INTO t VALUES (1)")
		c.WaitConverged(t, "app.db")
		// A different connection reads first each round.
		for j := range conns {
			db := conns[(i+j)%len(conns)]
			if got := count(db); got != i {
				t.Fatalf("round %d: connection %d sees %d rows, want %d", i, (i+j)%len(conns), got, i)
			}
		}
	}
}
