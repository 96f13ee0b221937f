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
