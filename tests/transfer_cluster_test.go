package tests

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestImport_ThreeNodes imports through a replica of a three-node static
// cluster while reader processes on the primary and on the other replica
// hold a connection and read in a loop: every read sees the old database
// or the new one, never a mix, and every node ends at the import's
// position with the same content.
func TestImport_ThreeNodes(t *testing.T) {
	for _, mode := range []string{"DELETE", "WAL"} {
		t.Run(mode, func(t *testing.T) {
			c := startCluster(t, 2, "")
			p, r1, r2 := c.Primary, c.Replicas[0], c.Replicas[1]
			mustSQLite3(t, p.Path("app.db"), fmt.Sprintf(`PRAGMA journal_mode=%s; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
				WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 3000) INSERT INTO t (v) SELECT 'old' || i FROM c;`, mode))
			c.WaitConverged(t, "app.db")
			const oldSig, newSig = "3000|old1|old999|1", "3000|new1|new999|2"

			type reader struct {
				node *Node
				done chan []string
			}
			var readers []reader
			for _, n := range []*Node{p, r2} {
				cmd, out := startHelper(t, "snapshot-reader", helperArgs{Path: n.Path("app.db"), JournalMode: mode, Duration: 5 * time.Second})
				if !out.Scan() || out.Text() != "ready" {
					t.Fatalf("reader on %s: %q", n.Name, out.Text())
				}
				rd := reader{node: n, done: make(chan []string, 1)}
				go func() {
					var lines []string
					for out.Scan() {
						lines = append(lines, out.Text())
					}
					_ = cmd.Wait()
					rd.done <- lines
				}()
				readers = append(readers, rd)
			}

			src := sourceDB(t, mode, 3000, "new")
			out, err := runLitefs(t, "import", "-name", "app.db", "-url", r1.URL(), src)
			if err != nil || !strings.Contains(out, "not the primary") {
				t.Fatalf("import through a replica: %v: %s", err, out)
			}
			pos := printedPos(t, out)
			c.WaitConverged(t, "app.db")
			want := dump(t, p, "app.db", "PRAGMA integrity_check; SELECT group_concat(v) FROM t")
			for _, n := range c.Nodes() {
				if got := n.Pos("app.db"); got != pos {
					t.Errorf("%s at %s, want %s", n.Name, got, pos)
				}
				if got := dump(t, n, "app.db", "PRAGMA integrity_check; SELECT group_concat(v) FROM t"); got != want {
					t.Errorf("%s: content differs from the primary's", n.Name)
				}
			}

			for _, rd := range readers {
				lines := <-rd.done
				t.Logf("reader on %s: %v", rd.node.Name, lines)
				seen := map[string]bool{}
				for _, l := range lines {
					if sig, ok := strings.CutPrefix(l, "seen "); ok {
						if sig != oldSig && sig != newSig {
							t.Errorf("reader on %s saw a mix: %s", rd.node.Name, sig)
						}
						seen[sig] = true
					} else if strings.HasPrefix(l, "reads=") && !strings.HasSuffix(l, " errors=0") {
						t.Errorf("reader on %s: %s", rd.node.Name, l)
					}
				}
				if !seen[oldSig] || !seen[newSig] {
					t.Errorf("reader on %s did not see both the old and the new database: %v", rd.node.Name, lines)
				}
			}
		})
	}
}

// headerCounters are the bytes of page 1 an import moves on: the change
// counter, the schema cookie and the version-valid-for number.
var headerCounters = [][2]int{{24, 28}, {40, 44}, {92, 96}}

// TestTransfer_RoundTrip exports a database, imports the copy, and
// exports again: the same pages, but for the counters an import moves on
// so that open connections reload.
func TestTransfer_RoundTrip(t *testing.T) {
	for _, mode := range []string{"DELETE", "WAL"} {
		t.Run(mode, func(t *testing.T) {
			n := startNode(t)
			mustSQLite3(t, n.Path("app.db"), fmt.Sprintf(`PRAGMA journal_mode=%s; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
				CREATE INDEX t_v ON t (v);
				WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 5000) INSERT INTO t (v) SELECT hex(randomblob(20)) FROM c;
				DELETE FROM t WHERE id %% 3 = 0;`, mode))
			dir := t.TempDir()
			first, second := filepath.Join(dir, "first.db"), filepath.Join(dir, "second.db")
			if out, err := runLitefs(t, "export", "-name", "app.db", "-url", n.URL(), first); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if out, err := runLitefs(t, "import", "-name", "app.db", "-url", n.URL(), first); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if out, err := runLitefs(t, "export", "-name", "app.db", "-url", n.URL(), second); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			a, _ := os.ReadFile(first)
			b, _ := os.ReadFile(second)
			if len(a) != len(b) || len(a) < 8192 {
				t.Fatalf("first export %d bytes, second %d", len(a), len(b))
			}
			for _, r := range headerCounters {
				if bytes.Equal(a[r[0]:r[1]], b[r[0]:r[1]]) {
					t.Errorf("header bytes %d..%d not moved on by the import", r[0], r[1])
				}
				copy(b[r[0]:r[1]], a[r[0]:r[1]])
			}
			for off := 0; off < len(a); off += 4096 {
				if !bytes.Equal(a[off:off+4096], b[off:off+4096]) {
					t.Errorf("page %d differs", off/4096+1)
				}
			}
		})
	}
}

// TestImport_CutOff sends half of a database file to POST /import and
// drops the connection: nothing changes, no name appears, nothing is left
// in the data directory's tmp, and the next import works.
func TestImport_CutOff(t *testing.T) {
	n := startNode(t)
	mustSQLite3(t, n.Path("app.db"), "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	at := n.Pos("app.db")
	src := sourceDB(t, "DELETE", 20000, "big")
	body, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(n.URL())
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"app.db", "new.db"} {
		conn, err := net.Dial("tcp", u.Host)
		if err != nil {
			t.Fatal(err)
		}
		w := bufio.NewWriter(conn)
		fmt.Fprintf(w, "POST /import?name=%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/vnd.sqlite3\r\nContent-Length: %d\r\n\r\n", name, u.Host, len(body))
		w.Write(body[:len(body)/2])
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond) // the node is reading the body
		conn.Close()
	}
	tmp := filepath.Join(n.DataDir, "tmp")
	waitUntil(t, 10*time.Second, "tmp to be empty", func() bool {
		ents, err := os.ReadDir(tmp)
		return err == nil && len(ents) == 0
	})
	if got := n.Pos("app.db"); got != at {
		t.Fatalf("position moved from %s to %s", at, got)
	}
	if got := mustSQLite3(t, n.Path("app.db"), "SELECT x FROM t; PRAGMA integrity_check"); got != "1\nok" {
		t.Fatalf("app.db after a cut-off import: %q", got)
	}
	checkNothingLeft(t, n, "new.db")
	if out, err := runLitefs(t, "import", "-name", "app.db", "-url", n.URL(), src); err != nil {
		t.Fatalf("import after a cut-off one: %v: %s", err, out)
	}
	if got := mustSQLite3(t, n.Path("app.db"), "SELECT count(*) FROM t"); got != "20000" {
		t.Fatalf("after the import: %q", got)
	}
}
