package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// BenchmarkTransfer imports and exports one large database (LITEFS_BENCH_MB,
// default 256) side by side, in one run, with the ways SQLite and the
// shell move it, on the data directory's disk:
//
//	go test ./tests -run '^$' -bench Transfer -benchtime 1x -v
//
// Each figure is MB/s of the database's size: cp to the disk (the limit),
// litefs import (with and without quick_check), cp into the mount,
// sqlite3 .restore into the mount, litefs export, sqlite3 .backup out of
// the mount.
func BenchmarkTransfer(b *testing.B) {
	mb := 256
	if s := os.Getenv("LITEFS_BENCH_MB"); s != "" {
		var err error
		if mb, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	n := benchNode(b, NodeConfig{Name: "node1"})
	n.Start()
	// The source and the copies out live on the data directory's disk.
	dir := filepath.Join(n.Dir, "bench")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	src := filepath.Join(dir, "src.db")
	rows := mb * 1024 * 1024 / 4096
	mustSQLite3(b, src, fmt.Sprintf(`PRAGMA page_size=4096; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);
		WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < %d) INSERT INTO t (v) SELECT randomblob(3900) FROM c;`, rows))
	fi, err := os.Stat(src)
	if err != nil {
		b.Fatal(err)
	}
	size := float64(fi.Size()) / 1e6
	b.Logf("database: %.0f MB", size)

	run := func(name string, args ...string) {
		b.Helper()
		exec.Command("sync").Run()
		start := time.Now()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%s: %v: %s", name, err, out)
		}
		el := time.Since(start)
		b.ReportMetric(size/el.Seconds(), name+"-MB/s")
		b.Logf("%-22s %6.2f s  %7.1f MB/s", name, el.Seconds(), size/el.Seconds())
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		run("cp-plain", "cp", src, filepath.Join(dir, "plain.db"))
		run("import", n.Bin, "import", "-name", "imp.db", "-url", n.URL(), src)
		run("import-no-check", n.Bin, "import", "-name", "imp.db", "-url", n.URL(), "-no-check", src)
		run("cp-into-mount", "cp", src, n.Path("cp.db"))
		run("sqlite3-restore", "sqlite3", n.Path("restored.db"), ".restore "+src)
		run("export", n.Bin, "export", "-name", "imp.db", "-url", n.URL(), filepath.Join(dir, "exported.db"))
		run("sqlite3-backup", "sqlite3", n.Path("imp.db"), ".backup "+filepath.Join(dir, "backup.db"))
		for _, name := range []string{"plain.db", "exported.db", "backup.db"} {
			os.Remove(filepath.Join(dir, name))
		}
		for _, name := range []string{"cp.db", "restored.db"} {
			os.Remove(n.Path(name))
		}
	}
}
