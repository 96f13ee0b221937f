package tests

import (
	"database/sql"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/replica"
)

// Synchronous replication (lease.sync-replicas): a COMMIT on the primary
// returns only once a candidate holds the transaction durably.

// syncLease returns an option adding lease keys to every node's config.
func syncLease(yaml string) func(*NodeConfig) {
	return func(cfg *NodeConfig) { cfg.Lease += yaml }
}

// waitNewPrimary waits until a running node other than old is primary.
func waitNewPrimary(t testing.TB, c *ConsulCluster, old *Node) *Node {
	t.Helper()
	var np *Node
	waitUntil(t, 30*time.Second, "a new primary", func() bool {
		if a := c.primaries(); len(a) == 1 && a[0] != old {
			np = a[0]
		}
		return np != nil
	})
	return np
}

// TestSync_CrashFailovers kills the primary of a three-node cluster with
// sync-replicas 1 again and again while writers commit to a DELETE-mode
// and a WAL-mode database: after every failover, every write whose COMMIT
// returned is on the new primary. (With asynchronous replication the
// killed primary's newest acknowledged writes may be missing.)
func TestSync_CrashFailovers(t *testing.T) {
	rounds := 20
	if testing.Short() {
		rounds = 3
	}
	c := startConsulClusterWith(t, 3, litefsBin, syncLease("  sync-replicas: 1\n"))
	writers := map[string]*clusterWriter{
		"d": startWriter(t, c, "d", "delete"),
		"w": startWriter(t, c, "w", "wal"),
	}
	var elections []time.Duration
	for i := 0; i < rounds; i++ {
		p := c.WaitPrimary(t, 30*time.Second)
		for _, w := range writers {
			w.waitWritesOn(t, p)
			w.waitWrites(t, 20)
		}
		killed := time.Now()
		p.Kill()
		np := waitNewPrimary(t, c, p)
		elections = append(elections, time.Since(killed))
		for db, w := range writers {
			w.waitWritesOn(t, np)
			checkNoneLost(t, np, db, w.Acks())
		}
		p.Start() // back as a replica; a tail it held alone is kept aside
	}
	var acked int
	for db, w := range writers {
		w.Stop()
		acked += len(w.Acks())
		c.WaitConverged(t, db)
		checkNoneLost(t, c.WaitPrimary(t, time.Second), db, w.Acks())
	}
	sort.Slice(elections, func(i, j int) bool { return elections[i] < elections[j] })
	t.Logf("%d crash failovers with sync-replicas 1, %d writes acknowledged, none lost; new primary after %s (median) / %s (max)",
		rounds, acked, elections[len(elections)/2].Round(time.Millisecond), elections[len(elections)-1].Round(time.Millisecond))
}

// TestSync_CrashAfterUnreplicatedCommit holds every candidate behind (a
// read transaction on each keeps its rollback-journal database
// SHARED-locked, so the stream's file waits to be applied, and is never
// acknowledged), commits on the primary, and kills it. With sync-replicas
// 1 the COMMIT fails after sync-timeout, so the new primary, which lacks
// the row, has every acknowledged one. The same steps without
// sync-replicas show what it prevents: the COMMIT returns, and the
// acknowledged row is lost with the primary.
func TestSync_CrashAfterUnreplicatedCommit(t *testing.T) {
	for _, tt := range []struct {
		name, lease string
		sync        bool
	}{
		{"Sync", "  sync-replicas: 1\n  sync-timeout: 1s\n", true},
		{"Async", "", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := startConsulClusterWith(t, 3, litefsBin, syncLease(tt.lease))
			p := c.WaitPrimary(t, 15*time.Second)
			mustSQLite3(t, p.Path("s"), "CREATE TABLE t(id INTEGER PRIMARY KEY, node TEXT); INSERT INTO t VALUES(1, 'first');")
			c.WaitConverged(t, "s")
			acks := []ack{{id: 1}}
			var readers []*sql.Tx
			for _, n := range c.Nodes {
				if n == p {
					continue
				}
				db := n.OpenDB("s", "DELETE")
				db.SetMaxOpenConns(1)
				tx, err := db.Begin()
				if err != nil {
					t.Fatal(err)
				}
				var k int
				if err := tx.QueryRow(`SELECT count(*) FROM t`).Scan(&k); err != nil || k != 1 {
					t.Fatalf("read on %s: %d %v", n.Name, k, err)
				}
				readers = append(readers, tx)
			}
			pdb := p.OpenDB("s", "DELETE")
			pdb.SetMaxOpenConns(1)
			_, err := pdb.Exec(`INSERT INTO t VALUES (2, 'unreplicated')`)
			switch {
			case tt.sync && (err == nil || !strings.Contains(err.Error(), "disk I/O error")):
				t.Fatalf("commit no candidate could apply: %v, want disk I/O error after sync-timeout", err)
			case !tt.sync && err != nil:
				t.Fatalf("asynchronous commit: %v", err)
			case err == nil:
				acks = append(acks, ack{id: 2})
			}
			_ = pdb.Close()

			p.Kill()
			np := waitNewPrimary(t, c, p)
			for _, tx := range readers {
				_ = tx.Rollback()
			}
			got := dump(t, np, "s", "SELECT group_concat(id) FROM t")
			if tt.sync {
				checkNoneLost(t, np, "s", acks)
				if got != "1" {
					t.Fatalf("rows on the new primary %s: %s, want 1", np.Name, got)
				}
				return
			}
			// Asynchronous: the acknowledged row 2 went with the primary.
			if got != "1" {
				t.Fatalf("rows on the new primary %s: %s; want 1, the acknowledged row 2 lost (asynchronous replication)", np.Name, got)
			}
		})
	}
}

// TestSync_EqualTXIDs is the case elections must not tie on: the
// primary A writes TXID n+1, never acknowledged (its candidates are held
// behind by readers), and is killed; B becomes primary at n and commits
// its own n+1, acknowledged by C; B is killed, and A comes back while C
// waits for a second candidate's position. A and C are both at n+1, with
// different content: C's, of the later term, must win, or the
// acknowledged transaction is lost.
func TestSync_EqualTXIDs(t *testing.T) {
	c := startConsulClusterWith(t, 3, litefsBin, syncLease("  sync-replicas: 1\n  sync-timeout: 30s\n"))
	a := c.WaitPrimary(t, 15*time.Second)
	mustSQLite3(t, a.Path("s"), "CREATE TABLE t(id INTEGER PRIMARY KEY, node TEXT); INSERT INTO t VALUES(1, 'first');")
	c.WaitConverged(t, "s")
	n := a.Pos("s").TXID
	var readers []*sql.Tx
	for _, node := range c.Nodes {
		if node == a {
			continue
		}
		db := node.OpenDB("s", "DELETE")
		db.SetMaxOpenConns(1)
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		var k int
		if err := tx.QueryRow(`SELECT count(*) FROM t`).Scan(&k); err != nil {
			t.Fatal(err)
		}
		readers = append(readers, tx)
	}
	adb := a.OpenDB("s", "DELETE")
	adb.SetMaxOpenConns(1)
	done := make(chan error, 1)
	go func() {
		_, err := adb.Exec(`INSERT INTO t VALUES (2, 'never acknowledged')`)
		done <- err
	}()
	// Published while it waits for a candidate: its LTX file is durable.
	waitUntil(t, 10*time.Second, "A's commit to wait for acknowledgement", func() bool {
		info, err := getAPIInfo(a)
		if err != nil {
			return false
		}
		pos, err := ltx.ParsePos(info.Positions["s"])
		return err == nil && pos.TXID == n+1
	})
	a.Kill()
	if err := <-done; err == nil {
		t.Fatal("a commit whose primary was killed while it waited returned")
	}
	_ = adb.Close()
	// The readers go once a new primary is elected and the other candidate
	// follows it: their streams from A, with its file waiting to be
	// applied, have ended by then.
	b := waitNewPrimary(t, c, a)
	cn := c.Nodes[0]
	for _, node := range c.Nodes {
		if node != a && node != b {
			cn = node
		}
	}
	waitUntil(t, 10*time.Second, cn.Name+" to follow "+b.Name, func() bool {
		info, err := getAPIInfo(cn)
		return err == nil && info.PrimaryURL == b.URL()
	})
	for _, tx := range readers {
		_ = tx.Rollback()
	}
	bdb := b.OpenDB("s", "DELETE")
	bdb.SetMaxOpenConns(1)
	if _, err := bdb.Exec(`INSERT INTO t VALUES (3, 'acknowledged')`); err != nil {
		t.Fatalf("commit on %s: %v", b.Name, err)
	}
	_ = bdb.Close()
	if got := b.Pos("s").TXID; got != n+1 {
		t.Fatalf("%s is at TXID %d, want %d (the same TXID as A's unacknowledged commit)", b.Name, got, n+1)
	}
	waitUntil(t, 10*time.Second, cn.Name+" to hold the acknowledged commit", func() bool { return cn.Pos("s") == b.Pos("s") })

	// A comes back while the cluster elects: it never follows B, so it
	// still holds its own TXID n+1.
	b.Kill()
	a.Start()
	np := waitNewPrimary(t, c, b)
	if np != cn {
		t.Fatalf("%s was elected; %s holds the acknowledged commit at the same TXID", np.Name, cn.Name)
	}
	checkNoneLost(t, np, "s", []ack{{id: 1}, {id: 3}})
	if got := dump(t, np, "s", "SELECT group_concat(id) FROM t"); got != "1,3" {
		t.Fatalf("rows on %s: %s, want 1,3", np.Name, got)
	}
	// A follows the new primary: its unacknowledged commit is kept aside.
	c.WaitConverged(t, "s")
	if !strings.Contains(a.Logs(), "history differs") {
		t.Errorf("%s's diverged history was not replaced:\n%s", a.Name, a.Logs())
	}
}

// TestSync_Handoff hands the lease of a cluster with sync-replicas 1 to
// another candidate, and back, while writers commit in both journal
// modes: no acknowledged write is lost and writes move within the usual
// window.
func TestSync_Handoff(t *testing.T) {
	c := startConsulClusterWith(t, 3, litefsBin, syncLease("  sync-replicas: 1\n"))
	writers := map[string]*clusterWriter{
		"d": startWriter(t, c, "d", "delete"),
		"w": startWriter(t, c, "w", "wal"),
	}
	for i := 0; i < 2; i++ {
		p := c.WaitPrimary(t, 10*time.Second)
		target := c.Nodes[indexOther(c, p)]
		for _, w := range writers {
			w.waitWrites(t, 30)
		}
		out, err := exec.Command(litefsBin, "handoff", "-url", p.URL(), "-to", target.Name).CombinedOutput()
		if err != nil {
			t.Fatalf("litefs handoff: %v\n%s", err, out)
		}
		if got := c.WaitPrimary(t, 10*time.Second); got != target {
			t.Fatalf("primary is %s after handoff to %s", got.Name, target.Name)
		}
		for db, w := range writers {
			w.waitWritesOn(t, target)
			gap, _, _ := switchGap(w.Acks(), p.Name)
			t.Logf("handoff %s -> %s, %s: %s; writes moved after %s", p.Name, target.Name, db, strings.TrimSpace(string(out)), gap)
			checkNoneLost(t, target, db, w.Acks())
		}
	}
	for db, w := range writers {
		w.Stop()
		c.WaitConverged(t, db)
	}
}

// TestSync_PartitionedCandidate cuts one candidate of a cluster with
// sync-replicas 1 off the network while writers commit: the other
// candidate acknowledges, so commits go on; once it is back, a crash of
// the primary loses no acknowledged write.
func TestSync_PartitionedCandidate(t *testing.T) {
	if testing.Short() {
		t.Skip("network namespaces and a real Consul: skipped with -short")
	}
	lab := newNetLab(t, "sy", 2, 3)
	c := startLabCluster(t, lab, syncLease("  sync-replicas: 1\n"))
	writers := map[string]*clusterWriter{
		"d": startWriter(t, c, "d", "delete"),
		"w": startWriter(t, c, "w", "wal"),
	}
	p := c.WaitPrimary(t, 10*time.Second)
	cut := indexOther(c, p)
	for _, w := range writers {
		w.waitWrites(t, 20)
	}
	lab.Cut(cut)
	before := make(map[string]int)
	for db, w := range writers {
		w.mu.Lock()
		before[db] = w.failures
		w.mu.Unlock()
		w.waitWrites(t, 100)
	}
	for db, w := range writers {
		w.mu.Lock()
		failed := w.failures - before[db]
		w.mu.Unlock()
		t.Logf("%s: 100 writes acknowledged with %s cut off, %d failed", db, c.Nodes[cut].Name, failed)
		if got := c.WaitPrimary(t, time.Second); got != p {
			t.Fatalf("primary changed to %s while a replica was cut off", got.Name)
		}
	}
	lab.Heal(cut)
	for _, w := range writers {
		w.waitWrites(t, 20)
	}
	p.Kill()
	np := waitNewPrimary(t, c, p)
	for db, w := range writers {
		w.waitWritesOn(t, np)
		checkNoneLost(t, np, db, w.Acks())
	}
	p.Start()
	for db, w := range writers {
		w.Stop()
		c.WaitConverged(t, db)
	}
}

// syncCommit inserts one row into db on node n and returns the error
// and how long the COMMIT took.
func syncCommit(n *Node, db *sql.DB, id int) (time.Duration, error) {
	start := time.Now()
	_, err := db.Exec("INSERT INTO t(id, node) VALUES(?, ?)", id, n.Name)
	return time.Since(start), err
}

// syncCandidatesDown starts a cluster with the given sync keys, creates
// one database per journal mode with a first acknowledged row, and kills
// every node but the primary.
func syncCandidatesDown(t *testing.T, lease string) (*ConsulCluster, *Node, map[string]*sql.DB) {
	c := startConsulClusterWith(t, 3, litefsBin, syncLease(lease))
	p := c.WaitPrimary(t, 15*time.Second)
	dbs := make(map[string]*sql.DB)
	for _, mode := range []string{"delete", "wal"} {
		mustSQLite3(t, p.Path(mode), fmt.Sprintf("PRAGMA journal_mode=%s; CREATE TABLE t(id INTEGER PRIMARY KEY, node TEXT); INSERT INTO t VALUES(1, 'first');", mode))
		db := p.OpenDB(mode, mode)
		db.SetMaxOpenConns(1)
		dbs[mode] = db
	}
	for _, n := range c.Nodes {
		if n != p {
			n.Kill()
		}
	}
	return c, p, dbs
}

// TestSync_NoCandidate stops every candidate of a primary with
// sync-replicas 1: its commits fail after sync-timeout with SQLite's
// "disk I/O error", the database stays as before each of them, and writes
// resume once a candidate is back; nothing acknowledged is lost.
func TestSync_NoCandidate(t *testing.T) {
	const timeout = time.Second
	c, p, dbs := syncCandidatesDown(t, fmt.Sprintf("  sync-replicas: 1\n  sync-timeout: %s\n", timeout))
	for mode, db := range dbs {
		before := p.Pos(mode)
		for id := 2; id <= 3; id++ {
			d, err := syncCommit(p, db, id)
			if err == nil || !strings.Contains(err.Error(), "disk I/O error") {
				t.Fatalf("%s: commit with no candidate: %v, want disk I/O error", mode, err)
			}
			if d < timeout || d > timeout+2*time.Second {
				t.Errorf("%s: commit failed after %s, want about sync-timeout %s", mode, d, timeout)
			}
		}
		// Rolled back and taken back: same rows, same position, sound file.
		if got := dump(t, p, mode, "SELECT count(*) FROM t"); got != "1" {
			t.Errorf("%s: %s rows after failed commits, want 1", mode, got)
		}
		if got := p.Pos(mode); got != before {
			t.Errorf("%s: position %s after failed commits, want %s", mode, got, before)
		}
		if got := dump(t, p, mode, "PRAGMA integrity_check"); got != "ok" {
			t.Errorf("%s: integrity_check: %s", mode, got)
		}
		if info, err := getAPIInfo(p); err != nil || info.SyncMode != replica.SyncModeSync {
			t.Errorf("/info sync_mode %q (%v), want sync", info.SyncMode, err)
		}
	}
	// A candidate comes back: commits are acknowledged again.
	c.Nodes[indexOther(c, p)].Start()
	for mode, db := range dbs {
		waitUntil(t, 20*time.Second, mode+" commit acknowledged again", func() bool {
			_, err := syncCommit(p, db, 4)
			return err == nil
		})
		if got := dump(t, p, mode, "SELECT group_concat(id) FROM t"); got != "1,4" {
			t.Errorf("%s: rows %s, want 1,4", mode, got)
		}
		_ = db.Close()
		c.WaitConverged(t, mode)
	}
}

// indexOther returns the index of the first node that is not n.
func indexOther(c *ConsulCluster, n *Node) int {
	for i, x := range c.Nodes {
		if x != n {
			return i
		}
	}
	return -1
}

// TestSync_FallbackAsync stops every candidate of a primary with
// sync-fallback async: the first commit waits sync-timeout, then the
// primary goes on asynchronously and says so in /info, and returns to
// synchronous replication once a candidate has caught up.
func TestSync_FallbackAsync(t *testing.T) {
	const timeout = 500 * time.Millisecond
	c, p, dbs := syncCandidatesDown(t, fmt.Sprintf("  sync-replicas: 1\n  sync-timeout: %s\n  sync-fallback: async\n", timeout))
	id := 2
	for mode, db := range dbs {
		for i := 0; i < 10; i++ {
			if _, err := syncCommit(p, db, id); err != nil {
				t.Fatalf("%s: commit with sync-fallback async: %v", mode, err)
			}
			id++
		}
	}
	info, err := getAPIInfo(p)
	if err != nil || info.SyncMode != replica.SyncModeAsync {
		t.Fatalf("/info sync_mode %q (%v), want async", info.SyncMode, err)
	}
	if !strings.Contains(p.Logs(), "replication is now asynchronous") {
		t.Errorf("the switch to asynchronous replication is not logged")
	}
	c.Nodes[indexOther(c, p)].Start()
	waitUntil(t, 20*time.Second, "sync_mode back to sync", func() bool {
		info, err := getAPIInfo(p)
		return err == nil && info.SyncMode == replica.SyncModeSync
	})
	for mode, db := range dbs {
		if _, err := syncCommit(p, db, id); err != nil {
			t.Errorf("%s: synchronous commit after catching up: %v", mode, err)
		}
		id++
		_ = db.Close()
		c.WaitConverged(t, mode)
	}
}

// BenchmarkSyncCommit commits single-row transactions on the primary of a
// two-node Consul cluster (primary and one candidate, loopback), one after
// another, with sync-replicas 0 and 1, in both journal modes, and reports
// commits/s and p50/p99 COMMIT latency; then the same with 4 writers on 4
// databases at once (group commit). Both clusters run throughout and the
// two settings alternate row by row, so that a machine shared with other
// work loads both alike.
//
//	go test ./tests -run '^$' -bench SyncCommit -benchtime 2000x
func BenchmarkSyncCommit(b *testing.B) {
	bin, err := buildLitefs(false)
	if err != nil {
		b.Fatal(err)
	}
	clusters := make([]*ConsulCluster, 2)
	dbs := make([][]string, 2)
	for k := range clusters {
		clusters[k] = startConsulClusterWith(b, 2, bin, syncLease(fmt.Sprintf("  sync-replicas: %d\n", k)))
	}
	for _, mode := range []string{"DELETE", "WAL"} {
		for _, writers := range []int{1, 4} {
			for k, c := range clusters {
				b.Run(fmt.Sprintf("%s/writers=%d/sync-replicas=%d", mode, writers, k), func(b *testing.B) {
					dbs[k] = append(dbs[k], benchSyncCommits(b, c.WaitPrimary(b, 15*time.Second), mode, writers)...)
				})
			}
		}
	}
	// The replica has everything before the invariants are checked.
	for k, c := range clusters {
		for _, name := range dbs[k] {
			c.WaitConverged(b, name)
		}
	}
}

// benchSyncCommits runs the benchmark's writers on p and returns the
// databases they wrote.
func benchSyncCommits(b *testing.B, p *Node, mode string, writers int) []string {
	dbs := make([]*sql.DB, writers)
	var names []string
	for i := range dbs {
		name := fmt.Sprintf("bench-%s-%d-%d", strings.ToLower(mode), writers, i)
		names = append(names, name)
		mustSQLite3(b, p.Path(name), fmt.Sprintf("PRAGMA journal_mode=%s; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT);", mode))
		dbs[i] = p.OpenDB(name, mode)
		dbs[i].SetMaxOpenConns(1)
		defer dbs[i].Close()
	}
	lat := make([][]time.Duration, writers)
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for i := range dbs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < b.N; j++ {
				t0 := time.Now()
				if _, err := dbs[i].Exec("INSERT INTO t(v) VALUES('x')"); err != nil {
					b.Error(err)
					return
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return names
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "commits/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-us")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-us")
	return names
}
