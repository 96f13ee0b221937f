package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// runbookBlocks returns the shell blocks of the README's recovery
// runbook, in order.
func runbookBlocks(t *testing.T) []string {
	t.Helper()
	readme := readFile(t, "../README.md")
	start := strings.Index(readme, "### Recovery runbook")
	if start < 0 {
		t.Fatal("README has no recovery runbook")
	}
	section := readme[start:]
	if end := strings.Index(section[1:], "\n## "); end >= 0 {
		section = section[:end+1]
	}
	var blocks []string
	re := regexp.MustCompile("(?s)\n *```sh\n(.*?)\n *```")
	for _, m := range re.FindAllStringSubmatch(section, -1) {
		var lines []string
		for _, l := range strings.Split(m[1], "\n") {
			lines = append(lines, strings.TrimSpace(l))
		}
		blocks = append(blocks, strings.Join(lines, "\n"))
	}
	return blocks
}

// runBlock runs a runbook block with bash, litefs on the PATH and env
// set, and returns its output.
func runBlock(t testing.TB, block string, env map[string]string) string {
	t.Helper()
	bin := t.TempDir()
	if err := os.Symlink(litefsBin, filepath.Join(bin, "litefs")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", block)
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("runbook block failed: %v\n%s\n%s", err, block, out)
	}
	t.Logf("$ %s\n%s", strings.ReplaceAll(block, "\n", "\n$ "), out)
	return string(out)
}

// TestRunbook runs the README's recovery runbook as written: a
// three-node static cluster whose primary's database was damaged, so
// that the only candidate refuses to start. The copy is taken from a
// replica that still runs (and, as the runbook's alternative, from a
// stopped replica's data directory), every data directory is moved
// aside, the cluster starts empty, and the copy is imported through a
// replica; every node ends with the data as it was.
func TestRunbook(t *testing.T) {
	blocks := runbookBlocks(t)
	if len(blocks) != 4 {
		t.Fatalf("the runbook has %d shell blocks, this test runs 4: export, copy from a data directory, move aside, import:\n%s",
			len(blocks), strings.Join(blocks, "\n---\n"))
	}
	exportBlock, dataBlock, asideBlock, importBlock := blocks[0], blocks[1], blocks[2], blocks[3]

	c := startCluster(t, 2, "")
	p, r1, r2 := c.Primary, c.Replicas[0], c.Replicas[1]
	mustSQLite3(t, p.Path("app.db"), `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
		WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 2000) INSERT INTO t (v) SELECT 'row' || i FROM c;`)
	mustSQLite3(t, p.Path("app.db"), "UPDATE t SET v = v || '!' WHERE id % 7 = 0;")
	c.WaitConverged(t, "app.db")
	const q = "SELECT count(*), sum(length(v)), max(v) FROM t"
	want := dump(t, p, "app.db", q)

	// The bad day: the primary's database is damaged; it refuses to start.
	for _, n := range c.Nodes() {
		n.Stop()
	}
	path := filepath.Join(p.DataDir, "dbs", "app.db", "database")
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("damaged"), 4096+1000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	p.StartCmd()
	if err := p.WaitExit(15 * time.Second); err == nil {
		t.Fatal("the primary started with a damaged database")
	}
	r1.Start()
	r2.Start()

	// Step 1: the best copy, from a replica that runs.
	dir := t.TempDir()
	backup := filepath.Join(dir, "app.db")
	out := runBlock(t, exportBlock, map[string]string{"DB": "app.db", "NODE": r1.URL(), "BACKUP": backup})
	if !strings.Contains(out, "exported app.db at position") || !strings.Contains(out, "ok") {
		t.Fatalf("export block: %s", out)
	}
	// The alternative: from a stopped node's data directory.
	r2.Stop()
	fromData := filepath.Join(dir, "from data.db")
	if out := runBlock(t, dataBlock, map[string]string{"DB": "app.db", "DATA": r2.DataDir, "BACKUP": fromData}); strings.TrimSpace(out) != "ok" {
		t.Fatalf("copy from a data directory: %s", out)
	}
	for _, b := range []string{backup, fromData} {
		if got := mustSQLite3(t, b, q); got != want {
			t.Fatalf("%s: %q, want %q", b, got, want)
		}
	}

	// Step 2: every node stopped, its data directory moved aside.
	r1.Stop()
	for _, n := range c.Nodes() {
		runBlock(t, asideBlock, map[string]string{"DATA": n.DataDir})
		if aside, _ := filepath.Glob(n.DataDir + ".aside-*"); len(aside) != 1 {
			t.Fatalf("%s: data directory moved aside as %v", n.Name, aside)
		}
	}

	// Step 3: the cluster starts empty; the copy is imported through a
	// replica, which names the primary.
	for _, n := range c.Nodes() {
		n.Start()
	}
	out = runBlock(t, importBlock, map[string]string{"DB": "app.db", "NODE": r1.URL(), "BACKUP": backup})
	pos := printedPos(t, out)
	if pos.TXID != 1 {
		t.Fatalf("imported at %s, want txid 1 on an empty cluster", pos)
	}
	c.WaitConverged(t, "app.db")
	for _, n := range c.Nodes() {
		if got := n.Pos("app.db"); got != pos {
			t.Errorf("%s at %s, want %s", n.Name, got, pos)
		}
		if got := dump(t, n, "app.db", q+"; PRAGMA integrity_check"); got != want+"\nok" {
			t.Errorf("%s: %q, want %q", n.Name, got, want+"\nok")
		}
	}
	// Writes go on.
	mustSQLite3(t, p.Path("app.db"), "INSERT INTO t (v) VALUES ('after');")
	c.WaitConverged(t, "app.db")
	if got := dump(t, r2, "app.db", "SELECT count(*) FROM t"); got != fmt.Sprint(2001) {
		t.Fatalf("replica after a write: %s", got)
	}
}
