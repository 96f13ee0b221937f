package tests

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/replica"
)

// TestAuth_Secret runs a primary and two replicas on a cluster secret, one
// of them configured with a wrong one: the replica with the secret
// replicates, the other is refused and gets nothing, a client without the
// secret (curl, as an outsider would) gets 401 from every endpoint and no
// page, and the primary logs the refused source once.
func TestAuth_Secret(t *testing.T) {
	const secret = "s3cret-of-the-cluster"
	p := NewNodeWith(t, NodeConfig{Name: "primary", Secret: secret})
	p.Start()
	good := NewNodeWith(t, NodeConfig{Name: "good", Replica: true, PrimaryURL: p.URL(), Secret: secret})
	good.Start()
	bad := NewNodeWith(t, NodeConfig{Name: "bad", Replica: true, PrimaryURL: p.URL(), Secret: "not-the-secret"})
	bad.Start()

	mustSQLite3(t, p.Path("db"), "CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('private data');")
	want := p.Pos("db")
	waitUntil(t, 30*time.Second, "the replica with the secret to catch up", func() bool {
		b, err := os.ReadFile(good.Path("db-pos"))
		return err == nil && strings.TrimSpace(string(b)) == want.String()
	})
	if got := dump(t, good, "db", "SELECT x FROM t"); got != "private data" {
		t.Fatalf("replica read %q", got)
	}
	waitUntil(t, 30*time.Second, "the refusal in the wrong replica's log", func() bool {
		return strings.Contains(bad.Logs(), "unauthorized")
	})
	if _, err := os.Stat(bad.Path("db")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the replica with a wrong secret has the database: %v", err)
	}

	// An outsider with curl: 401 on every endpoint, nothing of the data.
	for _, c := range []struct{ method, path string }{
		{"POST", "/stream"}, {"GET", "/info"}, {"POST", "/handoff"},
	} {
		out, err := exec.Command("curl", "-sS", "-X", c.method, "-d", `{"node":"x","positions":{}}`,
			"-w", "\n%{http_code}", p.URL()+c.path).CombinedOutput()
		if err != nil {
			t.Fatalf("curl %s %s: %v: %s", c.method, c.path, err, out)
		}
		all := strings.TrimSpace(string(out))
		i := strings.LastIndexByte(all, '\n')
		body, code := all[:max(i, 0)], all[i+1:]
		if code != "401" || strings.Contains(body, "private data") || !strings.Contains(body, "unauthorized") {
			t.Fatalf("curl %s %s without the secret: %s %q", c.method, c.path, code, body)
		}
	}
	out, err := exec.Command("curl", "-sS", "-H", "Authorization: Bearer wrong", "-w", "\n%{http_code}", p.URL()+"/info").CombinedOutput()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "401") {
		t.Fatalf("curl with a wrong secret: %v %s", err, out)
	}

	// The typed client maps the answer to ErrUnauthorized; with the
	// secret it gets through.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := apiClient.Info(ctx, p.URL()); !errors.Is(err, replica.ErrUnauthorized) {
		t.Fatalf("info without the secret: %v", err)
	}
	c := replica.NewClient()
	c.Secret = secret
	if info, err := c.Info(ctx, p.URL()); err != nil || !info.Primary || info.Positions["db"] != want.String() {
		t.Fatalf("info with the secret: %+v %v", info, err)
	}
	// litefs handoff without the secret is refused before anything
	// happens; the static lease refuses it anyway, but after the secret.
	cmd := exec.Command(litefsBin, "handoff", "-url", p.URL())
	cmd.Env = append(os.Environ(), "LITEFS_SECRET=")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "401") {
		t.Fatalf("litefs handoff without the secret: %v %s", err, out)
	}
	cmd = exec.Command(litefsBin, "handoff", "-url", p.URL())
	cmd.Env = append(os.Environ(), "LITEFS_SECRET="+secret)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "static lease") {
		t.Fatalf("litefs handoff with the secret: %v %s", err, out)
	}

	// Each refused source is logged once, with its address.
	if n := strings.Count(p.Logs(), "refused a request to the node API without the cluster secret"); n != 1 {
		t.Fatalf("refusals logged %d times, want once per source (all came from 127.0.0.1):\n%s", n, p.Logs())
	}
	if !strings.Contains(p.Logs(), "remote=127.0.0.1") {
		t.Fatalf("the refusal does not name the source:\n%s", p.Logs())
	}
	// The replica with the secret still follows the primary.
	mustSQLite3(t, p.Path("db"), "INSERT INTO t VALUES ('more');")
	want = p.Pos("db")
	waitUntil(t, 30*time.Second, "the replica to catch up again", func() bool {
		b, err := os.ReadFile(good.Path("db-pos"))
		return err == nil && strings.TrimSpace(string(b)) == want.String()
	})
}
