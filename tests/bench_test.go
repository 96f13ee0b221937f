package tests

import (
	"database/sql"
	"fmt"
	"math/rand"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// The single-node benchmarks run the same workload through a litefs mount
// and on a plain directory of the same disk, in the same run:
//
//	go test ./tests -run '^$' -bench . -benchtime 3s
//
// Compare litefs/plain per journal mode; DESIGN.md has the targets.

// benchTarget returns a database path through a fresh litefs mount
// ("litefs") or in a plain temp directory ("plain").
func benchTarget(b *testing.B, target string) string {
	b.Helper()
	if target == "plain" {
		return filepath.Join(b.TempDir(), "bench.db")
	}
	n := benchNode(b, NodeConfig{Name: "node1"})
	n.Start()
	return n.Path("bench.db")
}

func benchDB(b *testing.B, target, mode string) *sql.DB {
	b.Helper()
	db := openDB(b, benchTarget(b, target), mode)
	db.SetMaxOpenConns(1)
	if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`); err != nil {
		b.Fatal(err)
	}
	return db
}

var benchModes = []string{"DELETE", "TRUNCATE", "PERSIST", "WAL"}

// BenchmarkWriteTx: one single-row INSERT per write transaction.
func BenchmarkWriteTx(b *testing.B) {
	benchWrites(b, benchModes, "")
}

// benchWrites runs the write benchmark in each mode, with extra DSN
// parameters.
func benchWrites(b *testing.B, modes []string, params string) {
	for _, mode := range modes {
		for _, target := range []string{"plain", "litefs"} {
			b.Run(mode+"/"+target, func(b *testing.B) {
				benchInserts(b, benchDB(b, target, mode+params))
			})
		}
	}
}

// benchInserts commits b.N single-row INSERTs into t, one per transaction,
// and reports commits per second.
func benchInserts(b *testing.B, db *sql.DB) {
	v := strings.Repeat("x", 100)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := db.Exec(`INSERT INTO t (v) VALUES (?)`, v); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tx/s")
}

// BenchmarkPointRead: one SELECT by primary key per autocommit transaction.
func BenchmarkPointRead(b *testing.B) {
	const rows = 10000
	for _, mode := range benchModes {
		for _, target := range []string{"plain", "litefs"} {
			b.Run(mode+"/"+target, func(b *testing.B) {
				db := benchDB(b, target, mode)
				if _, err := db.Exec(`WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < ?)
					INSERT INTO t (v) SELECT hex(randomblob(50)) FROM s`, rows); err != nil {
					b.Fatal(err)
				}
				stmt, err := db.Prepare(`SELECT v FROM t WHERE id = ?`)
				if err != nil {
					b.Fatal(err)
				}
				defer stmt.Close()
				rng := rand.New(rand.NewSource(1))
				var v string
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					if err := stmt.QueryRow(rng.Intn(rows) + 1).Scan(&v); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tx/s")
			})
		}
	}
}

// BenchmarkWriteTxSyncFull: as BenchmarkWriteTx with synchronous=FULL, where
// plain SQLite also syncs every commit (in WAL mode, NORMAL does not, and
// litefs always makes the LTX file durable before the commit returns).
func BenchmarkWriteTxSyncFull(b *testing.B) {
	benchWrites(b, []string{"DELETE", "WAL"}, "&_synchronous=FULL")
}

// BenchmarkConcurrency: single-row INSERTs from 1, 2 and 4 writers (each
// its own SQLite connection, retrying on SQLITE_BUSY through the busy
// timeout), alone and with 2 readers running point reads alongside, in
// DELETE and WAL mode (synchronous NORMAL in WAL, FULL in DELETE: each
// mode's usual setting), through litefs and on the plain disk. tx/s counts
// the writers' commits; reads/s the readers' queries.
//
//	go test ./tests -run '^$' -bench Concurrency -benchtime 2000x
func BenchmarkConcurrency(b *testing.B) {
	for _, mode := range []string{"DELETE", "WAL"} {
		for _, writers := range []int{1, 2, 4} {
			for _, readers := range []int{0, 2} {
				for _, target := range []string{"plain", "litefs"} {
					name := fmt.Sprintf("%s/writers=%d/readers=%d/%s", mode, writers, readers, target)
					b.Run(name, func(b *testing.B) { benchConcurrent(b, target, mode, writers, readers) })
				}
			}
		}
	}
}

func benchConcurrent(b *testing.B, target, mode string, writers, readers int) {
	path := benchTarget(b, target)
	first := openDB(b, path, mode)
	if _, err := first.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
		WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 1000) INSERT INTO t (v) SELECT hex(randomblob(50)) FROM s`); err != nil {
		b.Fatal(err)
	}
	conn := func() *sql.DB {
		db := openDB(b, path, mode)
		db.SetMaxOpenConns(1)
		return db
	}
	v := strings.Repeat("x", 100)
	var reads atomic.Int64
	stop := make(chan struct{})
	var rg errgroup.Group
	for i := 0; i < readers; i++ {
		db := conn()
		rng := rand.New(rand.NewSource(int64(i)))
		rg.Go(func() error {
			var s string
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				if err := db.QueryRow(`SELECT v FROM t WHERE id = ?`, rng.Intn(1000)+1).Scan(&s); err != nil {
					return err
				}
				reads.Add(1)
			}
		})
	}
	dbs := make([]*sql.DB, writers)
	for i := range dbs {
		dbs[i] = conn()
	}
	b.ResetTimer()
	var wg errgroup.Group
	for i, db := range dbs {
		n := b.N / writers
		if i < b.N%writers {
			n++
		}
		wg.Go(func() error {
			for j := 0; j < n; j++ {
				if _, err := db.Exec(`INSERT INTO t (v) VALUES (?)`, v); err != nil {
					return err
				}
			}
			return nil
		})
	}
	err := wg.Wait()
	b.StopTimer()
	close(stop)
	if rerr := rg.Wait(); err == nil {
		err = rerr
	}
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tx/s")
	if readers > 0 {
		b.ReportMetric(float64(reads.Load())/b.Elapsed().Seconds(), "reads/s")
	}
}

// BenchmarkWriteTxLease: BenchmarkWriteTx's single-row commits on a static
// primary and on the primary of a one-node Consul cluster, in the same run.
// A node that may become a replica answers the kernel's opens (to refuse
// writes on a replica), which a static primary declines once for all.
//
//	go test ./tests -run '^$' -bench WriteTxLease -benchtime 3000x
func BenchmarkWriteTxLease(b *testing.B) {
	bin, err := buildLitefs(false)
	if err != nil {
		b.Fatal(err)
	}
	static := benchNode(b, NodeConfig{Name: "static"})
	static.Start()
	consul := startConsulClusterWith(b, 1, bin).WaitPrimary(b, 15*time.Second)
	for _, mode := range []string{"DELETE", "WAL"} {
		for _, n := range []*Node{static, consul} {
			lease := "static"
			if n != static {
				lease = "consul"
			}
			b.Run(mode+"/"+lease, func(b *testing.B) {
				db := openDB(b, n.Path("lease-"+strings.ToLower(mode)+".db"), mode)
				db.SetMaxOpenConns(1)
				if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)`); err != nil {
					b.Fatal(err)
				}
				benchInserts(b, db)
			})
		}
	}
}

// BenchmarkWriteTxRetention: single-row commits in WAL mode
// (synchronous=NORMAL) while retention removes LTX files as fast as they
// are written (retention 1s, checked every 100ms), as on a node that has
// run longer than its retention, beside plain SQLite and a node whose
// retention removes nothing yet.
//
//	go test ./tests -run '^$' -bench WriteTxRetention -benchtime 5000x
func BenchmarkWriteTxRetention(b *testing.B) {
	for _, target := range []string{"plain", "litefs", "litefs-retention"} {
		b.Run(target, func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "bench.db")
			if target != "plain" {
				cfg := NodeConfig{Name: "node1"}
				if target == "litefs-retention" {
					cfg.Retention = "1s"
				}
				n := benchNode(b, cfg)
				n.Start()
				path = n.Path("bench.db")
			}
			db := openDB(b, path, "WAL")
			db.SetMaxOpenConns(1)
			if _, err := db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)`); err != nil {
				b.Fatal(err)
			}
			benchInserts(b, db)
		})
	}
}
