package tests

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/testconsul"
	"github.com/litefs-project/litefs/replica"
)

// Lease timings of the Consul tests: short, so that failovers are quick.
const (
	testTTL       = 2 * time.Second
	testLockDelay = 500 * time.Millisecond
)

// ConsulCluster is litefs nodes electing a primary through a real Consul
// agent, each its own process with its own mount and data directory.
type ConsulCluster struct {
	Consul *testconsul.Agent
	Nodes  []*Node
}

// startConsulCluster starts a Consul agent and n candidates, and waits for
// a primary. Every running node's invariants are checked at the end.
func startConsulCluster(t testing.TB, n int) *ConsulCluster {
	return startConsulClusterWith(t, n, litefsBin)
}

// startConsulClusterWith is startConsulCluster with another binary; opts
// change each node's configuration.
func startConsulClusterWith(t testing.TB, n int, bin string, opts ...func(*NodeConfig)) *ConsulCluster {
	t.Helper()
	c := &ConsulCluster{Consul: testconsul.Start(t)}
	for i := 0; i < n; i++ {
		cfg := c.nodeConfig(fmt.Sprintf("node%d", i+1))
		for _, o := range opts {
			o(&cfg)
		}
		node := NewNodeWith(t, cfg)
		node.Bin = bin
		c.Nodes = append(c.Nodes, node)
	}
	c.start(t)
	return c
}

// nodeConfig returns the configuration of a candidate in the cluster.
func (c *ConsulCluster) nodeConfig(name string) NodeConfig {
	return NodeConfig{Name: name, Consul: c.Consul.URL(), ConsulTTL: testTTL.String(),
		LockDelay: testLockDelay.String(), Lease: "  handoff-timeout: 3s\n"}
}

// start starts the cluster's nodes and waits for a primary. Every running
// node's invariants are checked at the end of the test.
func (c *ConsulCluster) start(t testing.TB) {
	t.Helper()
	for _, node := range c.Nodes {
		node.StartCmd()
	}
	for _, node := range c.Nodes {
		waitUntil(t, 15*time.Second, node.Name+" to mount", node.served)
	}
	c.WaitPrimary(t, 15*time.Second)
	t.Cleanup(func() {
		if !t.Failed() {
			for _, node := range c.Nodes {
				if node.running() {
					node.CheckInvariants()
				}
			}
		}
		// Killed, not stopped: a stopping primary whose candidates are
		// gone would wait lease.handoff-timeout for one.
		for _, node := range c.Nodes {
			node.Kill()
		}
	})
}

// getAPIInfo returns the node's GET /info through the node API's client.
func getAPIInfo(n *Node) (replica.NodeInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return n.Client().Info(ctx, n.URL())
}

// primaries returns the running nodes that say they are primary.
func (c *ConsulCluster) primaries() []*Node {
	var a []*Node
	for _, n := range c.Nodes {
		if !n.running() {
			continue
		}
		if info, err := getAPIInfo(n); err == nil && info.Primary {
			a = append(a, n)
		}
	}
	return a
}

// WaitPrimary waits until exactly one node is primary and returns it; two
// at once fail the test.
func (c *ConsulCluster) WaitPrimary(t testing.TB, d time.Duration) *Node {
	t.Helper()
	var p *Node
	waitUntil(t, d, "a primary", func() bool {
		a := c.primaries()
		if len(a) > 1 {
			t.Fatalf("two primaries at once: %s and %s", a[0].Name, a[1].Name)
		}
		if len(a) == 1 {
			p = a[0]
		}
		return p != nil
	})
	return p
}

// WaitConverged waits until every running node has the primary's
// position of db, then checks that they hold the same rows.
func (c *ConsulCluster) WaitConverged(t testing.TB, db string) {
	t.Helper()
	p := c.WaitPrimary(t, 30*time.Second)
	want := p.Pos(db)
	for _, n := range c.Nodes {
		if !n.running() || n == p {
			continue
		}
		waitUntil(t, 30*time.Second, fmt.Sprintf("%s to reach %s of %s", n.Name, want, db), func() bool {
			b, err := os.ReadFile(n.Path(db + "-pos"))
			return err == nil && strings.TrimSpace(string(b)) == want.String()
		})
	}
	rows := dump(t, p, db, "SELECT count(*), coalesce(sum(id), 0), coalesce(max(id), 0) FROM t")
	for _, n := range c.Nodes {
		if n.running() && n != p {
			if got := dump(t, n, db, "SELECT count(*), coalesce(sum(id), 0), coalesce(max(id), 0) FROM t"); got != rows {
				t.Errorf("%s has rows %s, primary %s has %s", n.Name, got, p.Name, rows)
			}
		}
	}
}

// ack is a write whose COMMIT returned.
type ack struct {
	id   int
	node string
	at   time.Time
}

// clusterWriter inserts numbered rows on whichever node is primary,
// finding it again after every error, and records what was acknowledged.
type clusterWriter struct {
	c    *ConsulCluster
	db   string
	mode string

	mu       sync.Mutex
	acks     []ack
	failures int
	stop     chan struct{}
	done     chan struct{}
}

func startWriter(t testing.TB, c *ConsulCluster, db, mode string) *clusterWriter {
	t.Helper()
	p := c.WaitPrimary(t, 15*time.Second)
	mustSQLite3(t, p.Path(db), fmt.Sprintf("PRAGMA journal_mode=%s; CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, node TEXT, pad BLOB);", mode))
	w := &clusterWriter{c: c, db: db, mode: mode, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	t.Cleanup(w.Stop)
	waitUntil(t, 10*time.Second, "first write", func() bool { return len(w.Acks()) > 0 })
	return w
}

func (w *clusterWriter) run() {
	defer close(w.done)
	conns := make(map[*Node]*sql.DB)
	defer func() {
		for _, db := range conns {
			db.Close()
		}
	}()
	var p *Node
	for id := 1; ; {
		select {
		case <-w.stop:
			return
		default:
		}
		if p == nil {
			if a := w.c.primaries(); len(a) == 1 {
				p = a[0]
			} else {
				time.Sleep(2 * time.Millisecond)
				continue
			}
		}
		db := conns[p]
		if db == nil {
			var err error
			db, err = sql.Open("sqlite3", fmt.Sprintf("file:%s?_journal_mode=%s&_busy_timeout=5000&_txlock=immediate", p.Path(w.db), w.mode))
			if err != nil {
				p = nil
				continue
			}
			db.SetMaxOpenConns(1)
			conns[p] = db
		}
		// INSERT OR REPLACE: a retry of a write whose commit did return
		// after all is harmless.
		_, err := db.Exec("INSERT OR REPLACE INTO t(id, node, pad) VALUES(?, ?, randomblob(100 + abs(random()) % 3000))", id, p.Name)
		if err != nil {
			db.Close()
			delete(conns, p)
			p = nil
			w.mu.Lock()
			w.failures++
			w.mu.Unlock()
			time.Sleep(time.Millisecond)
			continue
		}
		w.mu.Lock()
		w.acks = append(w.acks, ack{id: id, node: p.Name, at: time.Now()})
		w.mu.Unlock()
		id++
	}
}

// waitWrites waits until n more writes than now are acknowledged.
func (w *clusterWriter) waitWrites(t testing.TB, n int) {
	t.Helper()
	before := len(w.Acks())
	waitUntil(t, 20*time.Second, fmt.Sprintf("%d more writes", n), func() bool { return len(w.Acks()) >= before+n })
}

// waitWritesOn waits until the newest acknowledged write was on node n.
func (w *clusterWriter) waitWritesOn(t testing.TB, n *Node) {
	t.Helper()
	waitUntil(t, 10*time.Second, "writes on "+n.Name, func() bool {
		acks := w.Acks()
		return len(acks) > 0 && acks[len(acks)-1].node == n.Name
	})
}

// Stop stops the writer. Safe to call twice.
func (w *clusterWriter) Stop() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// Acks returns the acknowledged writes so far.
func (w *clusterWriter) Acks() []ack {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]ack(nil), w.acks...)
}

// switchGap returns the time between the last write acknowledged by node
// from and the first acknowledged by another node after it.
func switchGap(acks []ack, from string) (time.Duration, string, bool) {
	for i := 1; i < len(acks); i++ {
		if acks[i-1].node == from && acks[i].node != from {
			return acks[i].at.Sub(acks[i-1].at), acks[i].node, true
		}
	}
	return 0, "", false
}

// checkNoneLost fails the test if a row whose write was acknowledged is
// missing on node n.
func checkNoneLost(t testing.TB, n *Node, db string, acks []ack) {
	t.Helper()
	out := dump(t, n, db, "SELECT id FROM t ORDER BY id")
	have := make(map[int]bool)
	for _, s := range strings.Fields(out) {
		id, _ := strconv.Atoi(s)
		have[id] = true
	}
	var lost []int
	for _, a := range acks {
		if !have[a.id] {
			lost = append(lost, a.id)
		}
	}
	if len(lost) > 0 {
		sort.Ints(lost)
		t.Fatalf("%d acknowledged writes missing on %s: %v", len(lost), n.Name, lost[:min(len(lost), 20)])
	}
}
