package replica

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkSnapshot sends a snapshot of a 100 MB database from one store
// to another in this process, through the stream's framing over a pipe:
// copy, encode, frame; unframe, decode, write, sync; install. It reports
// the time of each stage on the replica's side, for profiling
// (-cpuprofile) without processes or a mount in the way.
//
//	go test ./replica -run '^$' -bench Snapshot -benchtime 3x
func BenchmarkSnapshot(b *testing.B) {
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	src := NewStore(b.TempDir())
	src.Logger = quiet
	if err := src.Open(); err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	// About 100 MB of rows of random blobs, made by the sqlite3 CLI.
	path := filepath.Join(b.TempDir(), "src.db")
	if out, err := exec.Command("sqlite3", path, `CREATE TABLE t (v BLOB);
		WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 25000) INSERT INTO t SELECT randomblob(4000) FROM s;`).CombinedOutput(); err != nil {
		b.Fatalf("sqlite3: %v: %s", err, out)
	}
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := src.Import(ctx, "big.db", f, ImportOptions{}); err != nil {
		b.Fatal(err)
	}
	db := src.DB("big.db")
	b.SetBytes(fi.Size())
	b.ResetTimer()
	var recv, install time.Duration
	for i := 0; i < b.N; i++ {
		dst := NewStore(b.TempDir())
		dst.Logger = quiet
		if err := dst.Open(); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		pr, pw := io.Pipe()
		go func() {
			st := &streamWriter{w: pw}
			s := &Server{Store: src}
			_, err := s.sendSnapshot(ctx, st, db, false, snapshotStamped)
			pw.CloseWithError(err)
		}()
		r := bufio.NewReaderSize(pr, 64<<10)
		typ, payload, err := readFrame(r)
		if err != nil || typ != frameBegin {
			b.Fatalf("frame %q: %v", typ, err)
		}
		_ = payload
		sr := receiveSnapshot(streamBegin{DB: "big.db", Snapshot: true, Streamed: true}, dst.TempDir())
		for {
			typ, payload, err := readFrame(r)
			if err != nil {
				b.Fatal(err)
			}
			if typ == frameEnd {
				break
			}
			if err := sr.write(payload); err != nil {
				b.Fatal(err)
			}
		}
		rs, err := sr.finish()
		if err != nil {
			b.Fatal(err)
		}
		recv += time.Since(start)
		t := time.Now()
		ddb, err := dst.CreateDB("big.db")
		if err != nil {
			b.Fatal(err)
		}
		if err := ddb.installSnapshot(ctx, rs, nil); err != nil {
			b.Fatal(err)
		}
		install += time.Since(t)
		if ddb.Pos() != db.Pos() {
			b.Fatalf("position %s, want %s", ddb.Pos(), db.Pos())
		}
		dst.Close()
	}
	b.ReportMetric(recv.Seconds()/float64(b.N), "receive-s")
	b.ReportMetric(install.Seconds()/float64(b.N), "install-s")
}
