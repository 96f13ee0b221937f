package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRestart_ChecksumRecord stops a node cleanly and starts it again, in
// each journal mode: the start uses the checksums kept at the stop instead
// of reading the database. A database then written behind the node's back
// while it is stopped is read in full, and the start refuses it, naming
// both checksums; after a SIGKILL no record is kept, and the start reads
// the database in full.
func TestRestart_ChecksumRecord(t *testing.T) {
	for _, mode := range []string{"DELETE", "WAL"} {
		t.Run(mode, func(t *testing.T) {
			n := NewNodeWith(t, NodeConfig{Name: "node1", Extra: "log:\n  debug: true\n"})
			n.Start()
			mustSQLite3(t, n.Path("app.db"), fmt.Sprintf(`PRAGMA journal_mode=%s; CREATE TABLE t (v);
				WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 300) INSERT INTO t SELECT randomblob(500) FROM s;`, mode))
			for i := 0; i < 5; i++ {
				mustSQLite3(t, n.Path("app.db"), "INSERT INTO t VALUES (randomblob(100));")
			}
			const used = "not reading it"
			n.Stop()
			record := filepath.Join(n.DataDir, "dbs", "app.db", "checksums")
			if _, err := os.Stat(record); err != nil {
				t.Fatalf("no checksum record after a clean stop: %v\n%s", err, n.Logs())
			}
			n.Start()
			if !strings.Contains(n.Logs(), used) {
				t.Fatalf("the start read the database despite the record:\n%s", n.Logs())
			}
			if got := dump(t, n, "app.db", "SELECT count(*) FROM t; PRAGMA integrity_check"); got != "305\nok" {
				t.Fatalf("got %q", got)
			}
			n.CheckInvariants()

			// After SIGKILL: no record, a full read.
			n.Kill()
			if _, err := os.Stat(record); !os.IsNotExist(err) {
				t.Fatalf("a record survived a kill: %v", err)
			}
			before := strings.Count(n.Logs(), used)
			n.Start()
			if strings.Count(n.Logs(), used) != before {
				t.Fatal("the start after a kill used a record")
			}
			n.CheckInvariants()

			// Written behind its back while stopped, keeping the size:
			// the record no longer describes the file.
			n.Stop()
			if _, err := os.Stat(record); err != nil {
				t.Fatalf("no checksum record after a clean stop: %v", err)
			}
			f, err := os.OpenFile(filepath.Join(n.DataDir, "dbs", "app.db", "database"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte("changed behind litefs's back"), 4096+2000); err != nil {
				t.Fatal(err)
			}
			f.Close()
			n.StartCmd()
			if err := n.WaitExit(15 * time.Second); err == nil {
				t.Fatal("litefs served a database that does not match its log")
			}
			if logs := n.Logs(); !strings.Contains(logs, "the database file changed since the node stopped") || !strings.Contains(logs, "checksum of") {
				t.Fatalf("the change was not found by a full read:\n%s", logs)
			}
		})
	}
}
