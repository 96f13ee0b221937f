package tests

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

// runLitefs runs a litefs subcommand (import, export) to its end, bounded
// in time, and returns its combined output.
func runLitefs(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, litefsBin, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// sourceDB writes a SQLite database with the sqlite3 CLI outside the mount:
// table t of n rows tagged tag, and a table named after tag, in the given
// journal mode, checkpointed so that the file holds everything.
func sourceDB(t testing.TB, mode string, n int, tag string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), tag+".db")
	mustSQLite3(t, path, fmt.Sprintf(`PRAGMA journal_mode=%s;
		CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
		CREATE TABLE %s (x);
		WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < %d) INSERT INTO t (v) SELECT '%s' || i FROM c;
		PRAGMA wal_checkpoint(TRUNCATE);`, mode, tag, n, tag))
	return path
}

var posRE = regexp.MustCompile(`position ([0-9a-f]{16}/[0-9a-f]{16})`)

// printedPos returns the position a litefs command printed.
func printedPos(t testing.TB, out string) ltx.Pos {
	t.Helper()
	m := posRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no position in %q", out)
	}
	pos, err := ltx.ParsePos(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return pos
}

// queryConn runs a query on one kept-open connection and returns the
// first row's first two columns.
func queryConn(t testing.TB, conn *sql.Conn, q string) string {
	t.Helper()
	var a, b any
	if err := conn.QueryRowContext(context.Background(), q).Scan(&a, &b); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return fmt.Sprintf("%v|%v", a, b)
}

// keptConn opens one connection to a database in the mount and keeps it
// open; closing its pool closes it.
func keptConn(t testing.TB, n *Node, db, mode string) (*sql.Conn, *sql.DB) {
	t.Helper()
	pool := n.OpenDB(db, mode)
	conn, err := pool.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn, pool
}

// TestImport_Cluster imports on a primary with a replica, through the
// primary's API and through the replica's: one transaction at the next
// TXID each time, replicated, and seen by connections kept open on both
// nodes at their next transaction, with the new schema. A file that is not
// a database is refused and changes nothing.
func TestImport_Cluster(t *testing.T) {
	for _, mode := range []string{"DELETE", "WAL"} {
		t.Run(mode, func(t *testing.T) {
			c := startCluster(t, 1, "")
			p, r := c.Primary, c.Replicas[0]
			mustSQLite3(t, p.Path("app.db"), fmt.Sprintf(`PRAGMA journal_mode=%s; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
				INSERT INTO t (v) VALUES ('old1'), ('old2');`, mode))
			c.WaitConverged(t, "app.db")
			pconn, _ := keptConn(t, p, "app.db", mode)
			rconn, _ := keptConn(t, r, "app.db", mode)
			const q = "SELECT count(*), min(v) FROM t"
			for _, conn := range []*sql.Conn{pconn, rconn} {
				if got := queryConn(t, conn, q); got != "2|old1" {
					t.Fatalf("before: %s", got)
				}
			}
			before := p.Pos("app.db")

			src := sourceDB(t, mode, 300, "first")
			out, err := runLitefs(t, "import", "-name", "app.db", "-url", p.URL(), src)
			if err != nil {
				t.Fatalf("import: %v: %s", err, out)
			}
			pos := printedPos(t, out)
			if pos.TXID != before.TXID+1 || p.Pos("app.db") != pos {
				t.Fatalf("import at %s; primary at %s, was %s", pos, p.Pos("app.db"), before)
			}
			c.WaitConverged(t, "app.db")
			for name, conn := range map[string]*sql.Conn{"primary": pconn, "replica": rconn} {
				if got := queryConn(t, conn, q); got != "300|first1" {
					t.Errorf("%s: connection kept open reads %s after the import", name, got)
				}
				if got := queryConn(t, conn, "SELECT count(*), 0 FROM first"); got != "0|0" {
					t.Errorf("%s: new table: %s", name, got)
				}
			}
			if got := dump(t, r, "app.db", "PRAGMA integrity_check; PRAGMA journal_mode"); got != "ok\n"+strings.ToLower(mode) {
				t.Errorf("replica: %q", got)
			}

			// Through the replica: it names the primary and the command
			// sends the file there.
			src2 := sourceDB(t, mode, 50, "second")
			out, err = runLitefs(t, "import", "-name", "app.db", "-url", r.URL(), src2)
			if err != nil || !strings.Contains(out, "not the primary") {
				t.Fatalf("import through the replica: %v: %s", err, out)
			}
			if pos2 := printedPos(t, out); pos2.TXID != pos.TXID+1 {
				t.Fatalf("second import at %s, first at %s", pos2, pos)
			}
			c.WaitConverged(t, "app.db")
			if got := queryConn(t, rconn, q); got != "50|second1" {
				t.Errorf("replica connection after the second import: %s", got)
			}

			// Refused: nothing changes on either node.
			at := p.Pos("app.db")
			bad := filepath.Join(t.TempDir(), "notes.txt")
			os.WriteFile(bad, []byte(strings.Repeat("not a database\n", 1000)), 0o644)
			out, err = runLitefs(t, "import", "-name", "app.db", "-url", p.URL(), bad)
			if err == nil || !strings.Contains(out, "400") || !strings.Contains(out, "SQLite format 3") {
				t.Fatalf("import of a text file: %v: %s", err, out)
			}
			if p.Pos("app.db") != at || r.Pos("app.db") != at {
				t.Fatalf("a refused import moved the position from %s", at)
			}
			if got := queryConn(t, pconn, q); got != "50|second1" {
				t.Errorf("after a refused import: %s", got)
			}

			// A name the cluster does not have yet is created, after the
			// kernel was told it is missing.
			if _, err := os.Stat(p.Path("new.db")); !os.IsNotExist(err) {
				t.Fatalf("new.db: %v", err)
			}
			if out, err := runLitefs(t, "import", "-name", "new.db", "-url", p.URL(), src); err != nil {
				t.Fatalf("import into a new database: %v: %s", err, out)
			}
			c.WaitConverged(t, "new.db")
			if got := dump(t, r, "new.db", "SELECT count(*) FROM first; SELECT count(*) FROM t"); got != "0\n300" {
				t.Errorf("replica: new.db: %q", got)
			}
		})
	}
}

// TestImport_Refused checks the refusals that the command or the node make
// before anything changes: an uncheckpointed WAL beside the file, a
// truncated file, a name with a path, an unreachable node, and a database
// leaving WAL mode while a connection keeps it open.
func TestImport_Refused(t *testing.T) {
	n := startNode(t)
	mustSQLite3(t, n.Path("app.db"), "PRAGMA journal_mode=WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	at := n.Pos("app.db")

	// A WAL with frames beside the source.
	walSrc := filepath.Join(t.TempDir(), "w.db")
	cmd := exec.Command("sqlite3", walSrc)
	cmd.Stdin = strings.NewReader("PRAGMA journal_mode=WAL; CREATE TABLE t (x); INSERT INTO t VALUES (2);\n.shell cp " + walSrc + "-wal " + walSrc + "-wal.keep\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	os.Rename(walSrc+"-wal.keep", walSrc+"-wal")

	good := sourceDB(t, "DELETE", 100, "good")
	b, _ := os.ReadFile(good)
	truncated := filepath.Join(t.TempDir(), "truncated.db")
	os.WriteFile(truncated, b[:len(b)-len(b)/3], 0o644)
	empty := filepath.Join(t.TempDir(), "empty.db")
	os.WriteFile(empty, nil, 0o644)

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"WAL", []string{"-name", "app.db", "-url", n.URL(), walSrc}, "wal_checkpoint(TRUNCATE)"},
		{"Truncated", []string{"-name", "app.db", "-url", n.URL(), truncated}, "truncated"},
		{"Empty", []string{"-name", "app.db", "-url", n.URL(), empty}, "empty"},
		{"Name", []string{"-name", "../app.db", "-url", n.URL(), good}, "invalid database name"},
		{"Unreachable", []string{"-name", "app.db", "-url", "http://127.0.0.1:1", good}, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runLitefs(t, append([]string{"import"}, tc.args...)...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Fatalf("got %v: %s; want a refusal saying %q", err, out, tc.want)
			}
			if got := n.Pos("app.db"); got != at {
				t.Fatalf("position moved from %s to %s", at, got)
			}
		})
	}

	t.Run("LeaveWALBusy", func(t *testing.T) {
		conn, pool := keptConn(t, n, "app.db", "WAL")
		if got := queryConn(t, conn, "SELECT count(*), sum(x) FROM t"); got != "1|1" {
			t.Fatalf("before: %s", got)
		}
		out, err := runLitefs(t, "import", "-name", "app.db", "-url", n.URL(), good)
		if err == nil || !strings.Contains(out, "409") || !strings.Contains(out, "WAL") {
			t.Fatalf("leaving WAL with a connection open: %v: %s", err, out)
		}
		if got := n.Pos("app.db"); got != at {
			t.Fatalf("position moved from %s to %s", at, got)
		}
		if got := queryConn(t, conn, "SELECT count(*), sum(x) FROM t"); got != "1|1" {
			t.Fatalf("after a refused import: %s", got)
		}
		conn.Close()
		pool.Close()
		out, err = runLitefs(t, "import", "-name", "app.db", "-url", n.URL(), good)
		if err != nil || !strings.Contains(out, "changed from wal to rollback") {
			t.Fatalf("leaving WAL with no connection open: %v: %s", err, out)
		}
		if got := mustSQLite3(t, n.Path("app.db"), "PRAGMA journal_mode; SELECT count(*) FROM t; PRAGMA integrity_check"); got != "delete\n100\nok" {
			t.Fatalf("after leaving WAL: %q", got)
		}
		n.CheckInvariants()
	})
}

// TestExport_UnderWrites exports from a replica while the primary runs
// transfers: every copy is whole (integrity_check, the total unchanged,
// its checksum the printed position's), and once writes stop, the
// replica's copy equals the primary's byte for byte.
func TestExport_UnderWrites(t *testing.T) {
	const accounts, balance = 20, 1000
	for _, mode := range []string{"DELETE", "WAL"} {
		t.Run(mode, func(t *testing.T) {
			c := startCluster(t, 1, "")
			p, r := c.Primary, c.Replicas[0]
			mustSQLite3(t, p.Path("bank.db"), fmt.Sprintf(`PRAGMA journal_mode=%s;
				CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
				CREATE TABLE ledger (id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER);
				WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM s WHERE i < %d)
				INSERT INTO accounts SELECT i, %d FROM s;`, mode, accounts-1, balance))
			c.WaitConverged(t, "bank.db")
			args := helperArgs{Path: p.Path("bank.db"), JournalMode: mode, Duration: 4 * time.Second,
				Accounts: accounts, Total: accounts * balance, Seed: time.Now().UnixNano()}
			t.Logf("seed=%d", args.Seed)
			writer, wout := startHelper(t, "bank-writer", args)

			dir := t.TempDir()
			dst := filepath.Join(dir, "copy.db")
			exports := 0
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline) || exports < 3; {
				for _, node := range []*Node{r, p} {
					out, err := runLitefs(t, "export", "-name", "bank.db", "-url", node.URL(), dst)
					if err != nil {
						t.Fatalf("export from %s: %v: %s", node.Name, err, out)
					}
					pos := printedPos(t, out)
					data, _ := os.ReadFile(dst)
					if got := recompute(t, data); got != pos.Checksum {
						t.Fatalf("export from %s: checksum %s, printed position %s", node.Name, got, pos)
					}
					want := fmt.Sprintf("ok\n%d|%d", accounts, accounts*balance)
					if got := mustSQLite3(t, dst, "PRAGMA integrity_check; SELECT count(*), sum(balance) FROM accounts"); got != want {
						t.Fatalf("export from %s at %s: %q, want %q", node.Name, pos, got, want)
					}
					exports++
				}
			}
			for wout.Scan() {
				t.Logf("writer: %s", wout.Text())
			}
			if err := writer.Wait(); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d exports during the writes", exports)
			c.WaitConverged(t, "bank.db")

			// At rest: the replica's copy is the primary's.
			fromReplica, fromPrimary := filepath.Join(dir, "r.db"), filepath.Join(dir, "p.db")
			for node, path := range map[*Node]string{r: fromReplica, p: fromPrimary} {
				if out, err := runLitefs(t, "export", "-name", "bank.db", "-url", node.URL(), path); err != nil {
					t.Fatalf("%v: %s", err, out)
				}
			}
			a, _ := os.ReadFile(fromReplica)
			b, _ := os.ReadFile(fromPrimary)
			if !bytes.Equal(a, b) || len(a) == 0 {
				t.Fatalf("replica's copy (%d bytes) differs from the primary's (%d bytes)", len(a), len(b))
			}
			// To standard output: the same bytes.
			cmd := exec.Command(litefsBin, "export", "-name", "bank.db", "-url", r.URL(), "-")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil || !bytes.Equal(stdout.Bytes(), a) {
				t.Fatalf("export to stdout: %v (%d bytes): %s", err, stdout.Len(), stderr.String())
			}
		})
	}
}

// TestExport_Refused leaves an existing file as it is when the export
// fails, and creates nothing.
func TestExport_Refused(t *testing.T) {
	n := startNode(t)
	mustSQLite3(t, n.Path("app.db"), "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	dir := t.TempDir()
	dst := filepath.Join(dir, "keep.db")
	os.WriteFile(dst, []byte("precious"), 0o644)
	for _, tc := range []struct{ name, url, want string }{
		{"missing.db", n.URL(), "404"},
		{"app.db", "http://127.0.0.1:1", "connection refused"},
	} {
		out, err := runLitefs(t, "export", "-name", tc.name, "-url", tc.url, dst)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("export %s from %s: %v: %s", tc.name, tc.url, err, out)
		}
	}
	if b, _ := os.ReadFile(dst); string(b) != "precious" {
		t.Fatalf("the existing file was changed: %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("files left: %v", ents)
	}
	// A good export replaces it.
	if out, err := runLitefs(t, "export", "-name", "app.db", "-url", n.URL(), dst); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got := mustSQLite3(t, dst, "SELECT x FROM t; PRAGMA integrity_check"); got != "1\nok" {
		t.Fatalf("copy: %q", got)
	}
}
