package tests

import (
	"context"
	"fmt"
	"os"
	"sort"
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

// BenchmarkCatchUp builds a database of about 100 MB on the primary, then
// starts a fresh replica and measures the time until it has it all.
//
//	go test ./tests -run '^$' -bench CatchUp -benchtime 1x
func BenchmarkCatchUp(b *testing.B) {
	p := benchNode(b, NodeConfig{Name: "primary"})
	p.Start()
	const rows = 25000 // about 4 KB each
	mustSQLite3(b, p.Path("big.db"), fmt.Sprintf(`PRAGMA journal_mode=WAL; CREATE TABLE t (v BLOB);
		WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < %d) INSERT INTO t SELECT randomblob(4000) FROM s;
		PRAGMA wal_checkpoint(TRUNCATE);`, rows))
	fi, err := os.Stat(p.Path("big.db"))
	if err != nil {
		b.Fatal(err)
	}
	want := p.Pos("big.db").TXID
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := benchNode(b, NodeConfig{Name: fmt.Sprintf("replica%d", i), Replica: true, PrimaryURL: p.URL()})
		start := time.Now()
		r.Start()
		waitUntil(b, 5*time.Minute, "replica to catch up", func() bool { return replicaTXID(r, "big.db") >= want })
		elapsed := time.Since(start)
		b.ReportMetric(elapsed.Seconds(), "catchup-s")
		b.ReportMetric(float64(fi.Size())/1e6/elapsed.Seconds(), "MB/s")
		r.Stop()
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
