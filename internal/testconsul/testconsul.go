// Package testconsul runs a real Consul agent in -dev mode for tests, on
// loopback ports of its own. scripts/test builds the agent from the Go
// module proxy and exports its path in LITEFS_CONSUL.
package testconsul

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Agent is a running Consul dev agent.
type Agent struct {
	// Addr is the agent's HTTP address, host:port.
	Addr string

	t     testing.TB
	bin   string
	args  []string
	mu    sync.Mutex
	cmd   *exec.Cmd
	logs  *strings.Builder
	alive bool
}

// Binary finds the Consul agent. A missing agent is a setup failure,
// never a skip.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("LITEFS_CONSUL"); p != "" {
		return p
	}
	home, _ := os.UserHomeDir()
	if p := filepath.Join(home, ".cache", "litefs", "consul-v1.20.6"); fileExists(p) {
		return p
	}
	if p, err := exec.LookPath("consul"); err == nil {
		return p
	}
	t.Fatal("no consul agent: run scripts/test, which builds it, or set LITEFS_CONSUL")
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func freePort(t testing.TB, ip string) int {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Start runs an agent on loopback and returns once it has a leader. It is
// stopped at the end of the test.
func Start(t testing.TB) *Agent {
	t.Helper()
	return StartOn(t, "127.0.0.1")
}

// StartOn runs an agent that binds and serves HTTP on the IPv4 address ip
// (an address of this network namespace, such as a test bridge's), and
// returns once it has a leader. It is stopped at the end of the test.
func StartOn(t testing.TB, ip string) *Agent {
	t.Helper()
	httpPort := freePort(t, ip)
	a := &Agent{
		t:    t,
		bin:  Binary(t),
		Addr: net.JoinHostPort(ip, fmt.Sprint(httpPort)),
		args: []string{"agent", "-dev", "-bind=" + ip, "-client=" + ip,
			fmt.Sprintf("-http-port=%d", httpPort), "-dns-port=-1", "-grpc-port=-1", "-grpc-tls-port=-1",
			fmt.Sprintf("-serf-lan-port=%d", freePort(t, ip)), fmt.Sprintf("-serf-wan-port=%d", freePort(t, ip)),
			fmt.Sprintf("-server-port=%d", freePort(t, ip)), "-log-level=warn"},
	}
	t.Cleanup(a.Stop)
	a.Restart()
	return a
}

// URL returns the agent's HTTP URL.
func (a *Agent) URL() string { return "http://" + a.Addr }

// Stop kills the agent; a -dev agent loses all its state.
func (a *Agent) Stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.alive {
		_ = a.cmd.Process.Kill()
		_ = a.cmd.Wait()
		a.alive = false
	}
}

func (a *Agent) ready() bool {
	for _, path := range []string{"/v1/status/leader", "/v1/catalog/nodes"} {
		resp, err := http.Get(a.URL() + path)
		if err != nil {
			return false
		}
		var b [256]byte
		n, _ := resp.Body.Read(b[:])
		resp.Body.Close()
		if s := strings.Trim(string(b[:n]), "\"\n"); resp.StatusCode != http.StatusOK || s == "" || s == "[]" {
			return false
		}
	}
	return true
}

// Restart starts the agent again on the same ports, with empty state, and
// waits for it to have a leader.
func (a *Agent) Restart() {
	a.t.Helper()
	a.Stop()
	a.mu.Lock()
	a.logs = new(strings.Builder)
	a.cmd = exec.Command(a.bin, append(a.args, "-data-dir="+a.t.TempDir())...)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	if err := a.cmd.Start(); err != nil {
		a.mu.Unlock()
		a.t.Fatal(err)
	}
	a.alive = true
	a.mu.Unlock()
	// Ready once it has a leader and has registered its own node, which
	// sessions need.
	// A loaded machine (a parallel run, two cores) has taken more than
	// 30s to start it once.
	deadline := time.Now().Add(60 * time.Second)
	for !a.ready() {
		if time.Now().After(deadline) {
			a.t.Fatalf("consul was not ready in 60s:\n%s", a.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
