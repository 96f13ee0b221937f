package tests

import (
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/replica"
)

// litefsStatus runs `litefs status` against n and returns its output and
// exit code.
func litefsStatus(t *testing.T, n *Node, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(litefsBin, append([]string{"status", "-url", n.URL(), "-secret", n.Secret}, args...)...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return string(out), exit.ExitCode()
	} else if err != nil {
		t.Fatalf("litefs status: %v", err)
	}
	return string(out), 0
}

// TestStatus runs `litefs status` on a primary, on a healthy replica, on a
// replica whose primary is gone, and on a node that is not there: exit
// codes 0, 0, 1 and 2, and what an operator reads.
func TestStatus(t *testing.T) {
	p := NewNodeWith(t, NodeConfig{Name: "primary", Secret: "st"})
	p.Start()
	r := NewNodeWith(t, NodeConfig{Name: "replica", Replica: true, PrimaryURL: p.URL(), Secret: "st"})
	r.Start()
	mustSQLite3(t, p.Path("db"), "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	want := p.Pos("db")
	waitUntil(t, 30*time.Second, "the replica to catch up", func() bool { return r.Pos("db") == want })

	out, code := litefsStatus(t, p)
	if code != 0 || !strings.Contains(out, "primary (primary)") || !strings.Contains(out, "health:   ok") ||
		!strings.Contains(out, want.String()) || !strings.Contains(out, "replica") {
		t.Fatalf("status of the primary: exit %d\n%s", code, out)
	}
	// The primary's positions arrive with its heartbeat, every second.
	var info replica.NodeInfo
	waitUntil(t, 10*time.Second, "the primary's heartbeat", func() bool {
		out, code = litefsStatus(t, r, "-json")
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("status -json: %v\n%s", err, out)
		}
		return info.PrimaryPositions["db"] == want.String()
	})
	if code != 0 || info.Primary || !info.Connected || info.PrimaryHostname != "primary" || info.PrimaryURL != p.URL() ||
		info.Positions["db"] != want.String() || info.PrimaryPositions["db"] != want.String() {
		t.Fatalf("status of the replica: exit %d\n%s", code, out)
	}
	// The primary lists the replica and what it sent it.
	out, _ = litefsStatus(t, p, "-json")
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Replicas) != 1 || info.Replicas[0].Node != "replica" ||
		info.Replicas[0].Positions["db"] != want.String() {
		t.Fatalf("the primary's replicas: %v\n%s", err, out)
	}

	p.Stop()
	waitUntil(t, 30*time.Second, "the replica to report itself unhealthy", func() bool {
		_, code := litefsStatus(t, r)
		return code == 1
	})
	out, _ = litefsStatus(t, r)
	if !strings.Contains(out, "UNHEALTHY: not connected to the primary") {
		t.Fatalf("status of the orphaned replica:\n%s", out)
	}
	if out, code := litefsStatus(t, p); code != 2 || !strings.Contains(out, "connection refused") {
		t.Fatalf("status of a stopped node: exit %d\n%s", code, out)
	}
	// Without the secret: the node answers 401, which is not a status.
	cmd := exec.Command(litefsBin, "status", "-url", r.URL(), "-secret", "")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "401") {
		t.Fatalf("status without the secret: %v\n%s", err, out)
	}
}

// TestStatus_Lagging: a replica held behind its primary (a read
// transaction keeps its rollback-journal database SHARED-locked, so the
// apply waits for it, as readers must never see half a transaction)
// reports itself unhealthy once it lags more than -max-lag: exit 1, and
// its lag and both positions in -json. Once the reader ends, it catches
// up and reports healthy again: exit 0.
func TestStatus_Lagging(t *testing.T) {
	p := NewNodeWith(t, NodeConfig{Name: "primary", Secret: "st"})
	p.Start()
	r := NewNodeWith(t, NodeConfig{Name: "replica", Replica: true, PrimaryURL: p.URL(), Secret: "st"})
	r.Start()
	mustSQLite3(t, p.Path("db"), "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	before := p.Pos("db")
	waitUntil(t, 30*time.Second, "the replica to catch up", func() bool { return r.Pos("db") == before })
	if out, code := litefsStatus(t, r, "-max-lag", "1s"); code != 0 {
		t.Fatalf("status of the caught-up replica: exit %d\n%s", code, out)
	}

	rdb := r.OpenDB("db", "DELETE")
	rdb.SetMaxOpenConns(1)
	tx, err := rdb.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRow(`SELECT count(*) FROM t`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("read on the replica: %d %v", n, err)
	}
	mustSQLite3(t, p.Path("db"), "INSERT INTO t VALUES (2);")
	ahead := p.Pos("db")

	// The apply waits for the reader; the stream's heartbeat timeout ends
	// the stream, and the replica reconnects, learning from the primary's
	// first frame how far behind it is.
	var info replica.NodeInfo
	var out string
	waitUntil(t, 30*time.Second, "the replica to report its lag", func() bool {
		var code int
		out, code = litefsStatus(t, r, "-json", "-max-lag", "1s")
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("status -json: %v\n%s", err, out)
		}
		return code == 1 && info.Connected && info.LagSeconds > 1
	})
	if info.Positions["db"] != before.String() || info.PrimaryPositions["db"] != ahead.String() {
		t.Fatalf("the lagging replica's status: at %s, the primary at %s; want %s and %s\n%s",
			info.Positions["db"], info.PrimaryPositions["db"], before, ahead, out)
	}
	if err := info.Health(time.Second); err == nil || !strings.Contains(err.Error(), "lags the primary") {
		t.Fatalf("health of the lagging replica: %v\n%s", err, out)
	}
	// A lag within -max-lag is healthy (while connected: the stream
	// reconnects now and then, while the apply waits).
	waitUntil(t, 30*time.Second, "status with -max-lag 1h to exit 0", func() bool {
		_, code := litefsStatus(t, r, "-max-lag", "1h")
		return code == 0
	})

	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 30*time.Second, "the replica to catch up and report healthy", func() bool {
		out, code := litefsStatus(t, r, "-json", "-max-lag", "1s")
		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatalf("status -json: %v\n%s", err, out)
		}
		return code == 0 && info.Positions["db"] == ahead.String() && info.LagSeconds == 0
	})
	if got := dump(t, r, "db", "SELECT count(*) FROM t"); got != "2" {
		t.Fatalf("rows on the replica after catching up: %q", got)
	}
}
