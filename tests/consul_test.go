package tests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestConsul_Election(t *testing.T) {
	c := startConsulCluster(t, 3)
	p := c.WaitPrimary(t, time.Second)
	mustSQLite3(t, p.Path("db"), "CREATE TABLE t(id INTEGER PRIMARY KEY, node TEXT, pad BLOB); INSERT INTO t(id) VALUES (1), (2), (3);")
	c.WaitConverged(t, "db")
	for _, n := range c.Nodes {
		if b, err := os.ReadFile(n.Path(".primary")); n != p && (err != nil || strings.TrimSpace(string(b)) != p.Name) {
			t.Errorf("%s/.primary = %q, %v; want %s", n.Name, b, err, p.Name)
		}
	}
	// A replica refuses writes with SQLite's read-only error.
	for _, n := range c.Nodes {
		if n != p {
			if out, err := sqlite3(t, n.Path("db"), "INSERT INTO t(id) VALUES (4)"); err == nil || !strings.Contains(out, "readonly") {
				t.Errorf("write on replica %s: %v %s", n.Name, err, out)
			}
		}
	}
}

// TestConsul_HandoffTo hands the lease to a named node with litefs handoff
// while a writer runs: no acknowledged write is lost.
func TestConsul_HandoffTo(t *testing.T) {
	for _, mode := range []string{"delete", "wal"} {
		t.Run(mode, func(t *testing.T) {
			c := startConsulCluster(t, 3)
			w := startWriter(t, c, "db", mode)
			p := c.WaitPrimary(t, time.Second)
			var target *Node
			for _, n := range c.Nodes {
				if n != p {
					target = n
				}
			}
			w.waitWrites(t, 50)
			out, err := exec.Command(litefsBin, "handoff", "-url", p.URL(), "-to", target.Name).CombinedOutput()
			if err != nil {
				t.Fatalf("litefs handoff: %v\n%s", err, out)
			}
			t.Logf("litefs handoff: %s", strings.TrimSpace(string(out)))
			if got := c.WaitPrimary(t, 10*time.Second); got != target {
				t.Fatalf("primary is %s after handoff to %s", got.Name, target.Name)
			}
			w.waitWritesOn(t, target)
			w.waitWrites(t, 20)
			w.Stop()
			acks := w.Acks()
			gap, to, ok := switchGap(acks, p.Name)
			if !ok || to != target.Name {
				t.Fatalf("writes did not move from %s to %s", p.Name, target.Name)
			}
			t.Logf("handoff %s -> %s (%s): writes refused for %s as the writer saw it; %d writes acknowledged",
				p.Name, target.Name, mode, gap, len(acks))
			checkNoneLost(t, target, "db", acks)
			c.WaitConverged(t, "db")

			// What an operator sees in the metrics: one handoff and one
			// step-down on the old primary, the new one primary.
			pf, tf := scrape(t, p), scrape(t, target)
			wantMetric(t, pf, p.Name, "litefs_handoff_duration_seconds", 1)
			wantMetric(t, pf, p.Name, "litefs_handoff_writes_refused_seconds", 1)
			wantMetric(t, pf, p.Name, "litefs_demotions_total", 1)
			wantMetric(t, pf, p.Name, "litefs_is_primary", 0)
			wantMetric(t, tf, target.Name, "litefs_is_primary", 1)

			// A handoff asked of a replica says where the primary is.
			out, err = exec.Command(litefsBin, "handoff", "-url", p.URL()).CombinedOutput()
			if err == nil || !strings.Contains(string(out), "not the primary") {
				t.Fatalf("handoff on a replica: %v %s", err, out)
			}
		})
	}
}

// TestConsul_SIGTERMHandoff stops the primary under write load: it hands
// off on the way out and no acknowledged write is lost.
func TestConsul_SIGTERMHandoff(t *testing.T) {
	c := startConsulCluster(t, 3)
	w := startWriter(t, c, "db", "wal")
	p := c.WaitPrimary(t, time.Second)
	w.waitWrites(t, 50)
	p.Stop()
	if err := p.ExitErr(); err != nil {
		t.Fatalf("primary exited with %v", err)
	}
	np := c.WaitPrimary(t, 10*time.Second)
	w.waitWritesOn(t, np)
	w.Stop()
	acks := w.Acks()
	gap, _, ok := switchGap(acks, p.Name)
	if !ok {
		t.Fatal("writes did not move off the stopped primary")
	}
	t.Logf("SIGTERM handoff %s -> %s: writes refused for %s as the writer saw it", p.Name, np.Name, gap)
	checkNoneLost(t, np, "db", acks)
	c.WaitConverged(t, "db")

	// The old primary comes back as a replica and loses nothing.
	p.Start()
	c.WaitConverged(t, "db")
	checkRejoinKeptNothing(t, c, p, "db")
}

// checkRejoinKeptNothing checks node n, stopped gracefully and started
// again (maybe several times) while writes went on: its database matched
// its own log at every start, and it kept nothing aside that the final
// primary lacks. A copy may be set aside only because the primary it
// rejoined could not tell whether its position is on its history (that
// primary's log starts with a snapshot past it, as when it joined the
// cluster after the database was created): never because the histories
// differ.
func checkRejoinKeptNothing(t testing.TB, c *ConsulCluster, n *Node, db string) {
	t.Helper()
	if logs := n.Logs(); strings.Contains(logs, "does not match its own log") || strings.Contains(logs, "rebuilt it from its own ltx files") {
		t.Errorf("%s's database did not match its own log at a start", n.Name)
	}
	for _, m := range c.Nodes {
		for _, line := range strings.Split(m.Logs(), "\n") {
			if strings.Contains(line, "replica's history differs from the primary's") && strings.Contains(line, "replica="+n.Name+" ") {
				t.Errorf("%s's history differed from the primary %s's after a graceful restart: %s", n.Name, m.Name, line)
			}
		}
	}
	copies := asideStates(t, n, db)
	if len(copies) == 0 {
		return
	}
	p := c.WaitPrimary(t, 10*time.Second)
	have := dumpIDs(t, p, db)
	for _, st := range copies {
		var missing []int
		for id := range st.IDs {
			if !have[id] {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			sort.Ints(missing)
			t.Errorf("%s kept %s aside with %d rows the primary %s lacks: %v", n.Name, st.Dir, len(missing), p.Name, missing[:min(len(missing), 20)])
		}
	}
	t.Logf("%s kept %d copies aside: a primary's log did not reach back to its position; the primary has all their rows", n.Name, len(copies))
}

// TestConsul_CrashFailover kills the primary under write load: a candidate
// takes over within TTL + lock delay + 1s (asserted loosely, reported
// exactly), and the others follow it. Replication is asynchronous, so the
// killed primary's newest transactions may not have reached any replica:
// when it restarts it either rejoins cleanly or keeps exactly that tail
// aside, and only acknowledged writes in that tail may be lost.
func TestConsul_CrashFailover(t *testing.T) {
	c := startConsulCluster(t, 3)
	w := startWriter(t, c, "db", "delete")
	p := c.WaitPrimary(t, time.Second)
	w.waitWrites(t, 50)
	killed := time.Now()
	p.Kill()
	var np *Node
	waitUntil(t, 30*time.Second, "a new primary", func() bool {
		a := c.primaries()
		if len(a) == 1 {
			np = a[0]
		}
		return np != nil
	})
	elected := time.Since(killed)
	w.waitWritesOn(t, np)
	w.Stop()
	acks := w.Acks()
	gap, _, _ := switchGap(acks, p.Name)
	t.Logf("crash failover %s -> %s: new primary after %s (bound TTL %s + lock delay %s + 1s); writes failed for %s",
		p.Name, np.Name, elected.Round(time.Millisecond), testTTL, testLockDelay, gap)
	if limit := testTTL + testLockDelay + time.Second; elected > limit {
		t.Errorf("failover took %s, more than TTL + lock delay + 1s = %s", elected, limit)
	}
	c.WaitConverged(t, "db")
	// What an operator sees in the metrics: the new primary says so, and
	// the replica that stayed lost its stream and found the new primary.
	wantMetric(t, scrape(t, np), np.Name, "litefs_is_primary", 1)
	for _, n := range c.Nodes {
		if n != p && n != np {
			f := scrape(t, n)
			wantMetric(t, f, n.Name, "litefs_is_primary", 0)
			wantMetric(t, f, n.Name, "litefs_primary_connected", 1)
			if v, _ := metricValue(f, "litefs_stream_reconnects_total"); v < 1 {
				t.Errorf("%s: litefs_stream_reconnects_total = %v after its primary crashed", n.Name, v)
			}
		}
	}

	// The crashed node restarts as a replica.
	p.Start()
	c.WaitConverged(t, "db")
	t.Logf("crash failover: %s", checkFailover(t, c, p, np, "db", acks))
}

// TestConsul_ConsulDown kills Consul for longer than the TTL while writes
// run: the primary stops writing before the TTL, replicas keep serving
// reads, and a primary is elected when Consul returns.
func TestConsul_ConsulDown(t *testing.T) {
	c := startConsulCluster(t, 3)
	w := startWriter(t, c, "db", "wal")
	p := c.WaitPrimary(t, time.Second)
	w.waitWrites(t, 50)
	down := time.Now()
	c.Consul.Stop()
	waitUntil(t, 3*testTTL, "the primary to step down", func() bool { return len(c.primaries()) == 0 })
	steppedDown := time.Since(down)
	var lastAck time.Time
	for _, a := range w.Acks() {
		lastAck = a.at
	}
	t.Logf("consul down: primary stepped down after %s; last write acknowledged %s after consul stopped (TTL %s)",
		steppedDown.Round(time.Millisecond), lastAck.Sub(down).Round(time.Millisecond), testTTL)
	if lastAck.Sub(down) >= testTTL {
		t.Fatalf("a write was acknowledged %s after Consul stopped, past the TTL %s", lastAck.Sub(down), testTTL)
	}
	// Replicas (and the old primary) serve reads from local data.
	for _, n := range c.Nodes {
		if out, err := sqlite3(t, n.Path("db"), "SELECT count(*) > 0 FROM t"); err != nil || out != "1" {
			t.Errorf("read on %s while Consul is down: %v %s", n.Name, err, out)
		}
	}
	time.Sleep(testTTL) // Consul stays down longer than the TTL: the scenario, not a wait
	c.Consul.Restart()
	np := c.WaitPrimary(t, 20*time.Second)
	waitUntil(t, 10*time.Second, "writes after Consul returned", func() bool {
		acks := w.Acks()
		return len(acks) > 0 && acks[len(acks)-1].at.After(down.Add(testTTL))
	})
	w.Stop()
	t.Logf("consul back: %s is primary (was %s)", np.Name, p.Name)
	checkNoneLost(t, np, "db", w.Acks())
	c.WaitConverged(t, "db")
}

// TestConsul_RollingRestart restarts every node in turn, several rounds,
// while writes run: nothing acknowledged is lost, and no restarted node
// keeps aside anything the cluster lacks.
func TestConsul_RollingRestart(t *testing.T) {
	rounds := 3
	if testing.Short() {
		rounds = 1
	}
	c := startConsulCluster(t, 3)
	w := startWriter(t, c, "db", "delete")
	for r := 0; r < rounds; r++ {
		for _, n := range c.Nodes {
			before := len(w.Acks())
			n.Stop()
			if err := n.ExitErr(); err != nil {
				t.Fatalf("%s exited with %v", n.Name, err)
			}
			n.Start()
			waitUntil(t, 20*time.Second, "writes to go on", func() bool { return len(w.Acks()) > before+10 })
		}
	}
	w.Stop()
	np := c.WaitPrimary(t, 10*time.Second)
	checkNoneLost(t, np, "db", w.Acks())
	c.WaitConverged(t, "db")
	// Only now: a node finds out whether its history is the primary's
	// once it has connected to it, after its start returned.
	for _, n := range c.Nodes {
		checkRejoinKeptNothing(t, c, n, "db")
	}
	t.Logf("rolling restart: %d rounds, %d writes acknowledged, %d failed attempts", rounds, len(w.Acks()), w.failures)
}

// TestConsul_StartMismatch damages a stopped node's database file: on the
// Consul lease the node starts anyway, rebuilds the database from its own
// log, and keeps the damaged copy aside, saying where. (Without a log that
// reaches back far enough it moves the database aside and takes a
// snapshot: TestReplication_Divergence's path.)
func TestConsul_StartMismatch(t *testing.T) {
	c := startConsulCluster(t, 3)
	p := c.WaitPrimary(t, time.Second)
	mustSQLite3(t, p.Path("db"), "CREATE TABLE t(id INTEGER PRIMARY KEY, node TEXT, pad BLOB); WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 200) INSERT INTO t(id, pad) SELECT i, randomblob(500) FROM s;")
	c.WaitConverged(t, "db")
	// Transactions after the first, so that the newest LTX file is not a
	// snapshot the node could heal from by itself.
	for i := 0; i < 3; i++ {
		mustSQLite3(t, p.Path("db"), fmt.Sprintf("INSERT INTO t(id) VALUES (%d)", 1000+i))
		c.WaitConverged(t, "db")
	}
	var n *Node
	for _, node := range c.Nodes {
		if node != p {
			n = node
		}
	}
	n.Stop()
	path := n.DataDir + "/dbs/db/database"
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("damage"), 4096+100); err != nil {
		t.Fatal(err)
	}
	f.Close()
	n.Start()
	c.WaitConverged(t, "db")
	// Its log reaches back to the first transaction: it rebuilt the
	// database from it, before any snapshot.
	if !strings.Contains(n.Logs(), "rebuilt it from its own ltx files") {
		t.Fatalf("%s did not say it rebuilt the damaged database from its log:\n%s", n.Name, n.Logs())
	}
	aside, _ := os.ReadDir(n.DataDir + "/aside")
	if len(aside) != 1 {
		t.Fatalf("aside holds %d entries, want the damaged copy", len(aside))
	}
	damaged, err := os.ReadFile(filepath.Join(n.DataDir, "aside", aside[0].Name(), "database"))
	if err != nil || !bytes.Contains(damaged, []byte("damage")) {
		t.Fatalf("the damaged file was not kept: %v", err)
	}
}

// TestConsul_Promote starts a node with lease.promote: once it has caught
// up, the primary hands the lease to it.
func TestConsul_Promote(t *testing.T) {
	c := startConsulCluster(t, 2)
	p := c.WaitPrimary(t, time.Second)
	mustSQLite3(t, p.Path("db"), "CREATE TABLE t(id INTEGER PRIMARY KEY, node TEXT, pad BLOB); INSERT INTO t(id) VALUES (1), (2);")
	n := NewNodeWith(t, NodeConfig{Name: "node3", Consul: c.Consul.URL(), ConsulTTL: testTTL.String(),
		LockDelay: testLockDelay.String(), Lease: "  promote: true\n"})
	c.Nodes = append(c.Nodes, n)
	n.Start()
	waitUntil(t, 15*time.Second, "node3 to be promoted", func() bool {
		info, err := getAPIInfo(n)
		return err == nil && info.Primary
	})
	mustSQLite3(t, n.Path("db"), "INSERT INTO t(id) VALUES (3)")
	c.WaitConverged(t, "db")
	if got := dump(t, p, "db", "SELECT count(*) FROM t"); got != "3" {
		t.Fatalf("old primary has %s rows, want 3", got)
	}
}
