package tests

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

// journalModes are the journal modes every test runs in.
var journalModes = []string{"DELETE", "TRUNCATE", "PERSIST", "WAL"}

// startNode starts a node and checks its invariants when the test ends.
func startNode(t *testing.T) *Node {
	t.Helper()
	n := NewNode(t, "")
	n.Start()
	t.Cleanup(func() {
		if n.running() {
			n.CheckInvariants()
		}
	})
	return n
}

func TestMount_Commit(t *testing.T) {
	const inserts = 20
	for _, mode := range journalModes {
		t.Run(mode, func(t *testing.T) {
			t.Run("GoSQLite3", func(t *testing.T) {
				n := startNode(t)
				db := n.OpenDB("app.db", mode)
				if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`); err != nil {
					t.Fatal(err)
				}
				// Turning WAL on in a new database is a transaction of its own.
				base := n.Pos("app.db").TXID
				for i := 1; i <= inserts; i++ {
					if _, err := db.Exec(`INSERT INTO t (v) VALUES (?)`, strings.Repeat("v", i*100)); err != nil {
						t.Fatal(err)
					}
					if got := n.Pos("app.db").TXID; got != base+ltx.TXID(i) {
						t.Fatalf("after insert %d: txid %d, want %d", i, got, base+ltx.TXID(i))
					}
				}
				checkCommitted(t, n, "app.db", int(base)+inserts, inserts)
			})
			t.Run("CLI", func(t *testing.T) {
				n := startNode(t)
				path := n.Path("app.db")
				mustSQLite3(t, path, fmt.Sprintf("PRAGMA journal_mode=%s; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);", mode))
				base := int(n.Pos("app.db").TXID)
				for i := 1; i <= inserts; i++ {
					mustSQLite3(t, path, fmt.Sprintf("PRAGMA journal_mode=%s; INSERT INTO t (v) VALUES (printf('%%.*c', %d, 'v'));", mode, i*100))
				}
				checkCommitted(t, n, "app.db", base+inserts, inserts)
				if got := mustSQLite3(t, path, "PRAGMA integrity_check"); got != "ok" {
					t.Fatalf("integrity_check: %s", got)
				}
			})
		})
	}
}

// checkCommitted checks the position, the LTX files and the row count.
func checkCommitted(t *testing.T, n *Node, name string, txns, rows int) {
	t.Helper()
	if got := n.Pos(name).TXID; got != ltx.TXID(txns) {
		t.Errorf("txid %d, want %d", got, txns)
	}
	files, err := os.ReadDir(filepath.Join(n.DataDir, "dbs", name, "ltx"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != txns {
		t.Errorf("%d ltx files, want %d", len(files), txns)
	}
	if got := mustSQLite3(t, n.Path(name), "SELECT count(*) FROM t"); got != strconv.Itoa(rows) {
		t.Errorf("rows %s, want %d", got, rows)
	}
}

func TestMount_Rollback(t *testing.T) {
	for _, mode := range journalModes {
		t.Run(mode, func(t *testing.T) {
			n := startNode(t)
			db := n.OpenDB("app.db", mode)
			db.SetMaxOpenConns(1)
			if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)`); err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(`INSERT INTO t (v) SELECT printf('row-%d-', value) || hex(randomblob(200)) FROM generate_series(1, 500)`); err != nil {
				// generate_series is not in every build; fall back to a recursive CTE.
				if _, err := db.Exec(`WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 500)
					INSERT INTO t (v) SELECT printf('row-%d-', i) || hex(randomblob(200)) FROM s`); err != nil {
					t.Fatal(err)
				}
			}
			before := n.Pos("app.db")

			t.Run("ROLLBACK", func(t *testing.T) {
				tx, err := db.Begin()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(`INSERT INTO t (v) VALUES ('rolled back')`); err != nil {
					t.Fatal(err)
				}
				if err := tx.Rollback(); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("FailedStatement", func(t *testing.T) {
				// The statement changes rows, then hits a UNIQUE violation.
				_, err := db.Exec(`INSERT INTO t (v) SELECT v || '-copy' FROM t UNION ALL SELECT v FROM t`)
				if err == nil {
					t.Fatal("expected a constraint error")
				}
			})
			t.Run("SpilledRollback", func(t *testing.T) {
				// A transaction larger than the page cache writes pages into the
				// database file before ROLLBACK restores them from the journal.
				if _, err := db.Exec(`PRAGMA cache_size = 2`); err != nil {
					t.Fatal(err)
				}
				tx, err := db.Begin()
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(`UPDATE t SET v = v || '-changed'`); err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(`INSERT INTO t (v) SELECT v || '-more' FROM t`); err != nil {
					t.Fatal(err)
				}
				if err := tx.Rollback(); err != nil {
					t.Fatal(err)
				}
			})
			if got := n.Pos("app.db"); got != before {
				t.Fatalf("position moved on rollbacks: %v -> %v", before, got)
			}
			if got := mustSQLite3(t, n.Path("app.db"), "SELECT count(*) FROM t; PRAGMA integrity_check"); got != "500\nok" {
				t.Fatalf("after rollbacks: %q", got)
			}
			// A commit after the rollbacks continues from the same position.
			if _, err := db.Exec(`INSERT INTO t (v) VALUES ('after')`); err != nil {
				t.Fatal(err)
			}
			if got := n.Pos("app.db").TXID; got != before.TXID+1 {
				t.Fatalf("txid %d after commit, want %d", got, before.TXID+1)
			}
		})
	}
}

func TestMount_DeleteDatabase(t *testing.T) {
	n := startNode(t)
	mustSQLite3(t, n.Path("gone.db"), "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	mustSQLite3(t, n.Path("kept.db"), "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	if err := os.Remove(n.Path("gone.db")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(n.DataDir, "dbs", "gone.db")); !os.IsNotExist(err) {
		t.Fatalf("database directory still there: %v", err)
	}
	if _, err := os.Stat(n.Path("gone.db-pos")); !os.IsNotExist(err) {
		t.Fatalf("-pos still there: %v", err)
	}
	// The name can be used again and starts a new history.
	mustSQLite3(t, n.Path("gone.db"), "CREATE TABLE t2 (y);")
	if got := n.Pos("gone.db").TXID; got != 1 {
		t.Fatalf("recreated database at txid %d, want 1", got)
	}
	if got := mustSQLite3(t, n.Path("kept.db"), "SELECT count(*) FROM t"); got != "1" {
		t.Fatalf("kept.db: %s", got)
	}
}

func TestMount_Unsupported(t *testing.T) {
	n := startNode(t)
	mustSQLite3(t, n.Path("app.db"), "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	before := n.Pos("app.db")

	t.Run("CopyIntoMount", func(t *testing.T) {
		// A file copied in is staged and checked when it is closed: two
		// copies of a database back to back are not one, and the close
		// fails.
		src := filepath.Join(t.TempDir(), "src.db")
		mustSQLite3(t, src, "CREATE TABLE t (x); INSERT INTO t VALUES (42);")
		b, _ := os.ReadFile(src)
		f, err := os.OpenFile(n.Path("copied.db"), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(append(b, b...)); err != nil {
			t.Fatalf("write of %d bytes: %v", 2*len(b), err)
		}
		if err := f.Close(); !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("close: got %v, want EINVAL", err)
		}
		if _, err := os.Stat(n.Path("copied.db")); !os.IsNotExist(err) {
			t.Fatalf("copied.db left behind: %v", err)
		}
		waitUntil(t, 5*time.Second, "a log line about litefs import", func() bool {
			return strings.Contains(n.Logs(), "litefs import -name copied.db")
		})
		// SQLite's .restore still loads a file as one transaction.
		mustSQLite3(t, n.Path("restored.db"), ".restore "+src)
		if got := mustSQLite3(t, n.Path("restored.db"), "SELECT x FROM t; PRAGMA integrity_check"); got != "42\nok" {
			t.Fatalf("restored: %q", got)
		}
	})
	t.Run("PartialPageWrite", func(t *testing.T) {
		f, err := os.OpenFile(n.Path("app.db"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		// A plain write over a live database: refused, pointing to
		// litefs import.
		if _, err := f.WriteAt([]byte("garbage"), 4096+100); !errors.Is(err, syscall.EACCES) {
			t.Fatalf("got %v, want EACCES", err)
		}
	})
	t.Run("TruncateToZero", func(t *testing.T) {
		if err := os.Truncate(n.Path("app.db"), 0); !errors.Is(err, syscall.EACCES) {
			t.Fatalf("got %v, want EACCES", err)
		}
	})
	t.Run("Mkdir", func(t *testing.T) {
		if err := os.Mkdir(n.Path("sub"), 0o755); !errors.Is(err, syscall.EPERM) {
			t.Fatalf("got %v, want EPERM", err)
		}
	})
	t.Run("Rename", func(t *testing.T) {
		if err := os.Rename(n.Path("app.db"), n.Path("other.db")); !errors.Is(err, syscall.EPERM) {
			t.Fatalf("got %v, want EPERM", err)
		}
	})
	t.Run("Link", func(t *testing.T) {
		if err := os.Link(n.Path("app.db"), n.Path("link.db")); !errors.Is(err, syscall.EPERM) {
			t.Fatalf("got %v, want EPERM", err)
		}
	})
	t.Run("WritePos", func(t *testing.T) {
		if err := os.WriteFile(n.Path("app.db-pos"), []byte("x"), 0o644); err == nil {
			t.Fatal("write to -pos succeeded")
		}
	})
	t.Run("ReservedName", func(t *testing.T) {
		if err := os.WriteFile(n.Path("nodb-journal"), nil, 0o644); err == nil {
			t.Fatal("created a journal for a database that does not exist")
		}
	})
	if got := n.Pos("app.db"); got != before {
		t.Fatalf("position changed: %v -> %v", before, got)
	}
	if got := mustSQLite3(t, n.Path("app.db"), "SELECT * FROM t; PRAGMA integrity_check"); got != "1\nok" {
		t.Fatalf("database after refused operations: %q", got)
	}
}

func TestMount_Persistence(t *testing.T) {
	for _, mode := range journalModes {
		t.Run(mode, func(t *testing.T) {
			n := startNode(t)
			mustSQLite3(t, n.Path("app.db"), fmt.Sprintf("PRAGMA journal_mode=%s; CREATE TABLE t (x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);", mode))
			before := n.Pos("app.db")
			n.Restart()
			if got := n.Pos("app.db"); got != before {
				t.Fatalf("position after restart %v, want %v", got, before)
			}
			mustSQLite3(t, n.Path("app.db"), fmt.Sprintf("PRAGMA journal_mode=%s; INSERT INTO t VALUES (3);", mode))
			if got := mustSQLite3(t, n.Path("app.db"), "SELECT sum(x) FROM t"); got != "6" {
				t.Fatalf("sum %s", got)
			}
		})
	}
}
