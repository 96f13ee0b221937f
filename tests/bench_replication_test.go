package tests

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

// benchNode prepares a node that runs the plain (not race-detecting)
// binary.
func benchNode(b *testing.B, cfg NodeConfig) *Node {
	b.Helper()
	bin, err := buildLitefs(false)
	if err != nil {
		b.Fatal(err)
	}
	n := NewNodeWith(b, cfg)
	n.Bin = bin
	return n
}

// benchCluster starts a primary and one replica.
func benchCluster(b *testing.B) (*Node, *Node) {
	b.Helper()
	p := benchNode(b, NodeConfig{Name: "primary"})
	p.Start()
	r := benchNode(b, NodeConfig{Name: "replica1", Replica: true, PrimaryURL: p.URL()})
	r.Start()
	return p, r
}

// replicaTXID reads a database's TXID from a replica's -pos file; zero if
// the database is not there yet.
func replicaTXID(r *Node, db string) ltx.TXID {
	b, err := os.ReadFile(r.Path(db + "-pos"))
	if err != nil {
		return 0
	}
	pos, err := ltx.ParsePos(string(b))
	if err != nil {
		return 0
	}
	return pos.TXID
}

// BenchmarkReplicationLag commits single-row transactions on the primary,
// one after another, and measures for each the time from its COMMIT
// returning to the replica's -pos showing it (polled through the replica's
// mount, which adds a few tens of microseconds).
//
//	go test ./tests -run '^$' -bench ReplicationLag -benchtime 2000x
func BenchmarkReplicationLag(b *testing.B) {
	for _, mode := range []string{"DELETE", "WAL"} {
		b.Run(mode, func(b *testing.B) {
			p, r := benchCluster(b)
			db := p.OpenDB("lag.db", mode)
			db.SetMaxOpenConns(1)
			if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`); err != nil {
				b.Fatal(err)
			}
			waitUntil(b, 10*time.Second, "replica to have lag.db", func() bool { return replicaTXID(r, "lag.db") >= p.Pos("lag.db").TXID })
			lags := make([]time.Duration, 0, b.N)
			v := strings.Repeat("x", 100)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := db.Exec(`INSERT INTO t (v) VALUES (?)`, v); err != nil {
					b.Fatal(err)
				}
				committed := time.Now()
				want := p.Pos("lag.db").TXID
				for replicaTXID(r, "lag.db") < want {
					if time.Since(committed) > 10*time.Second {
						b.Fatalf("replica did not reach txid %d within 10s", want)
					}
				}
				lags = append(lags, time.Since(committed))
			}
			b.StopTimer()
			sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
			q := func(f float64) float64 { return float64(lags[int(f*float64(len(lags)-1))].Microseconds()) / 1000 }
			b.ReportMetric(q(0.5), "p50-ms")
			b.ReportMetric(q(0.99), "p99-ms")
			b.ReportMetric(q(1), "max-ms")
		})
	}
}

// benchSizes returns the database sizes, in MB, that the large-database
// benchmarks run with: 100 MB, or those LITEFS_BENCH_SIZES lists (for
// example "100,500,1000"; the larger ones need disk and minutes).
func benchSizes(b *testing.B) []int {
	b.Helper()
	env := os.Getenv("LITEFS_BENCH_SIZES")
	if env == "" {
		return []int{100}
	}
	var sizes []int
	for _, f := range strings.Split(env, ",") {
		mb, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || mb <= 0 {
			b.Fatalf("LITEFS_BENCH_SIZES=%q: want sizes in MB, comma-separated", env)
		}
		sizes = append(sizes, mb)
	}
	return sizes
}

// bigDB fills db on the primary p with about mb MB of rows (4000 random
// bytes each) in WAL mode, checkpointed, and returns the size of the
// database file in bytes.
func bigDB(b *testing.B, p *Node, db string, mb int) int64 {
	b.Helper()
	mustSQLite3(b, p.Path(db), `PRAGMA journal_mode=WAL; CREATE TABLE t (v BLOB);`)
	// In transactions of about 100 MB, as an application loading data
	// would write them.
	for left := mb * 250; left > 0; left -= 25000 {
		mustSQLite3(b, p.Path(db), fmt.Sprintf(`WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < %d)
			INSERT INTO t SELECT randomblob(4000) FROM s; PRAGMA wal_checkpoint(TRUNCATE);`, min(left, 25000)))
	}
	fi, err := os.Stat(p.Path(db))
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}

// copySyncTime copies the file at src to a new file in dir and syncs it,
// as cp and sync would: what the disk allows, the baseline for catch-up.
func copySyncTime(b *testing.B, src, dir string) time.Duration {
	b.Helper()
	start := time.Now()
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	out, err := os.CreateTemp(dir, "copy-*")
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(out.Name())
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		b.Fatal(err)
	}
	if err := out.Sync(); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// nodeCPU returns the CPU time (user and system) n's process has used, from its start (threads that exited included).
func nodeCPU(b *testing.B, n *Node) time.Duration {
	b.Helper()
	n.mu.Lock()
	pid := n.cmd.Process.Pid
	n.mu.Unlock()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which ends with ')'): utime and
	// stime are the 12th and 13th, in clock ticks of 1/100 s.
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// dataFile returns the path of a database file in n's data directory.
func dataFile(n *Node, db string) string { return filepath.Join(n.DataDir, "dbs", db, "database") }

// BenchmarkCatchUp builds a database on the primary (100 MB, more with
// LITEFS_BENCH_SIZES), then starts a fresh replica and measures the time from
// starting it until it has it all (catchup-s, and MB/s from it), of which
// mount-s went to starting the process and mounting, and the CPU time
// each node used meanwhile (the replica's from its start). Side by side in the
// same run: copying the primary's database file and syncing the copy, as
// cp and sync would (copy-s), and the ratio catchup-s / copy-s.
//
//	go test ./tests -run '^$' -bench CatchUp -benchtime 1x
//	LITEFS_BENCH_SIZES=100,500,1000 go test ./tests -run '^$' -bench CatchUp -benchtime 1x -timeout 30m
func BenchmarkCatchUp(b *testing.B) {
	for _, mb := range benchSizes(b) {
		b.Run(fmt.Sprintf("%dMB", mb), func(b *testing.B) {
			p := benchNode(b, NodeConfig{Name: "primary"})
			p.Start()
			size := bigDB(b, p, "big.db", mb)
			want := p.Pos("big.db").TXID
			var copyT time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				copyT += copySyncTime(b, dataFile(p, "big.db"), b.TempDir())
				r := benchNode(b, NodeConfig{Name: fmt.Sprintf("replica%d", i), Replica: true, PrimaryURL: p.URL()})
				b.StartTimer()
				start, pcpu := time.Now(), nodeCPU(b, p)
				r.Start()
				mounted := time.Since(start)
				waitUntil(b, 10*time.Minute, "replica to catch up", func() bool { return replicaTXID(r, "big.db") >= want })
				elapsed := time.Since(start)
				b.StopTimer()
				b.ReportMetric((nodeCPU(b, p) - pcpu).Seconds(), "primary-cpu-s")
				b.ReportMetric(nodeCPU(b, r).Seconds(), "replica-cpu-s")
				b.ReportMetric(elapsed.Seconds(), "catchup-s")
				b.ReportMetric(mounted.Seconds(), "mount-s")
				b.ReportMetric(float64(size)/1e6/elapsed.Seconds(), "MB/s")
				for _, line := range strings.Split(r.Logs(), "\n") {
					if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
						b.Log(line) // a catch-up that had to start over says why
					}
				}
				r.Stop()
				b.StartTimer()
			}
			b.ReportMetric(copyT.Seconds()/float64(b.N), "copy-s")
			b.ReportMetric(b.Elapsed().Seconds()/copyT.Seconds(), "x-copy")
		})
	}
}

// BenchmarkRestart restarts nodes holding a large database (100 MB, more
// with LITEFS_BENCH_SIZES) and measures the time from starting the process
// to the mount being served, which the node does only once every
// database's position is verified: the primary, whose log ends with a
// transaction, and a replica, whose log holds the snapshot it caught up
// from; each after a clean stop (SIGTERM: the checksum table kept at close
// spares reading the file) and after SIGKILL (the file is read in full).
// Side by side: reading the database file once (read-s), what a full
// check costs at least.
//
//	go test ./tests -run '^$' -bench Restart -benchtime 3x
//	LITEFS_BENCH_SIZES=100,500,1000 go test ./tests -run '^$' -bench Restart -benchtime 1x -timeout 30m
func BenchmarkRestart(b *testing.B) {
	for _, mb := range benchSizes(b) {
		b.Run(fmt.Sprintf("%dMB", mb), func(b *testing.B) {
			p := benchNode(b, NodeConfig{Name: "primary"})
			p.Start()
			size := bigDB(b, p, "big.db", mb)
			want := p.Pos("big.db")
			r := benchNode(b, NodeConfig{Name: "replica1", Replica: true, PrimaryURL: p.URL()})
			r.Start()
			waitUntil(b, 10*time.Minute, "replica to catch up", func() bool { return replicaTXID(r, "big.db") >= want.TXID })
			restart := func(n *Node, kill bool) time.Duration {
				if kill {
					n.Kill()
				} else {
					n.Stop()
				}
				start := time.Now()
				n.Start()
				d := time.Since(start)
				if got := n.Pos("big.db"); got != want {
					b.Fatalf("%s at %s after restart, want %s", n.Name, got, want)
				}
				return d
			}
			var t [4]time.Duration
			var readT time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t[0] += restart(p, false)
				t[1] += restart(p, true)
				t[2] += restart(r, false)
				t[3] += restart(r, true)
				b.StopTimer()
				start := time.Now()
				if _, err := os.ReadFile(dataFile(p, "big.db")); err != nil {
					b.Fatal(err)
				}
				readT += time.Since(start)
				b.StartTimer()
			}
			b.StopTimer()
			n := float64(b.N)
			for i, name := range []string{"primary-s", "primary-killed-s", "replica-s", "replica-killed-s"} {
				b.ReportMetric(t[i].Seconds()/n, name)
			}
			b.ReportMetric(readT.Seconds()/n, "read-s")
			b.ReportMetric(float64(size)/1e6, "MB")
		})
	}
}

// BenchmarkHandoff hands the primary lease back and forth between
// candidates of a three-node Consul cluster while a writer inserts rows on
// whichever node is primary, and reports the time writes were refused as
// the writer saw it (last COMMIT on the old primary to first COMMIT on the
// new one) and as the primary reported it.
//
//	go test ./tests -run '^$' -bench Handoff -benchtime 20x
func BenchmarkHandoff(b *testing.B) {
	for _, mode := range []string{"DELETE", "WAL"} {
		b.Run(mode, func(b *testing.B) {
			bin, err := buildLitefs(false)
			if err != nil {
				b.Fatal(err)
			}
			c := startConsulClusterWith(b, 3, bin)
			w := startWriter(b, c, "db", mode)
			var seen, reported []time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p := c.WaitPrimary(b, 10*time.Second)
				// Both other nodes follow the new primary before the
				// next handoff.
				for _, n := range c.Nodes {
					if n != p {
						waitUntil(b, 10*time.Second, n.Name+" to follow "+p.Name, func() bool {
							got, err := os.ReadFile(n.Path(".primary"))
							return err == nil && strings.TrimSpace(string(got)) == p.Name
						})
					}
				}
				before := len(w.Acks())
				waitUntil(b, 10*time.Second, "writes", func() bool { return len(w.Acks()) > before+20 })
				res, err := requestHandoffBench(p.URL())
				if err != nil {
					b.Fatal(err)
				}
				reported = append(reported, time.Duration(res)*time.Millisecond)
				np := c.WaitPrimary(b, 10*time.Second)
				w.waitWritesOn(b, np)
				acks := w.Acks()
				gap, _, ok := switchGap(acks[before:], p.Name)
				if !ok {
					b.Fatalf("writes did not move off %s", p.Name)
				}
				seen = append(seen, gap)
			}
			b.StopTimer()
			w.Stop()
			checkNoneLost(b, c.WaitPrimary(b, 10*time.Second), "db", w.Acks())
			for _, n := range c.Nodes { // the phases of each handoff, with -v
				for _, line := range strings.Split(n.Logs(), "\n") {
					if strings.Contains(line, "handoff done") {
						b.Log(line)
					}
				}
			}
			for _, m := range []struct {
				name string
				d    []time.Duration
			}{{"writer", seen}, {"primary", reported}} {
				sort.Slice(m.d, func(i, j int) bool { return m.d[i] < m.d[j] })
				b.ReportMetric(float64(m.d[len(m.d)/2].Microseconds())/1000, m.name+"-p50-ms")
				b.ReportMetric(float64(m.d[len(m.d)-1].Microseconds())/1000, m.name+"-max-ms")
			}
		})
	}
}

// requestHandoffBench asks the primary at url to hand off and returns the
// window it reports, in milliseconds.
func requestHandoffBench(url string) (int64, error) {
	res, err := apiClient.Handoff(context.Background(), url, "")
	return res.WindowMS, err
}
