package tests

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/testconsul"
)

// proxyWriter posts numbered items through one proxy, one after another,
// and records every answer.
type proxyWriter struct {
	url  string
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	acked    []string // values whose POST answered 201
	failures []string // every other answer, with its status and body
	slowest  time.Duration
}

func startProxyWriter(t testing.TB, proxyURL string) *proxyWriter {
	w := &proxyWriter{url: proxyURL, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	t.Cleanup(w.Stop)
	waitUntil(t, 10*time.Second, "the first write through the proxy", func() bool { return w.Acked() > 0 })
	return w
}

func (w *proxyWriter) run() {
	defer close(w.done)
	client := &http.Client{Timeout: 30 * time.Second}
	for i := 1; ; i++ {
		select {
		case <-w.stop:
			return
		default:
		}
		v := fmt.Sprintf("w-%d", i)
		start := time.Now()
		resp, err := client.PostForm(w.url+"/items", url.Values{"v": {v}})
		took := time.Since(start)
		w.mu.Lock()
		w.slowest = max(w.slowest, took)
		switch {
		case err != nil:
			w.failures = append(w.failures, fmt.Sprintf("%s: %v", v, err))
		case resp.StatusCode != http.StatusCreated:
			b, _ := io.ReadAll(resp.Body)
			w.failures = append(w.failures, fmt.Sprintf("%s: %d %s", v, resp.StatusCode, strings.TrimSpace(string(b))))
		default:
			w.acked = append(w.acked, v)
		}
		w.mu.Unlock()
		if resp != nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
}

func (w *proxyWriter) Acked() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// waitMore waits until n more writes were acknowledged.
func (w *proxyWriter) waitMore(t testing.TB, n int) {
	t.Helper()
	from := w.Acked()
	waitUntil(t, 20*time.Second, fmt.Sprintf("%d more writes through the proxy", n), func() bool { return w.Acked() >= from+n })
}

func (w *proxyWriter) Stop() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// TestProxy_ConsulHandoff: a client writes continuously through a
// replica's proxy while the primary hands off with litefs handoff, and
// then while the new primary hands off on SIGTERM (its app, run by litefs,
// gets the signal and exits first). Not one request fails, and every
// acknowledged write is on the last primary.
func TestProxy_ConsulHandoff(t *testing.T) {
	if testing.Short() {
		t.Skip("a three-node Consul cluster through two handoffs")
	}
	c := &ConsulCluster{Consul: testconsul.Start(t)}
	nodes := make(map[string]*ProxyNode)
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("node%d", i)
		nodes[name] = newProxyNode(t, c.nodeConfig(name), "")
		nodes[name].ExecApp(t) // SIGTERM reaches the app first, as in a deployment
		c.Nodes = append(c.Nodes, nodes[name].Node)
	}
	c.start(t)
	p := c.WaitPrimary(t, 15*time.Second)
	mustSQLite3(t, p.Path("app.db"), "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
	want := p.Pos("app.db").String()
	var writer, target *ProxyNode // a replica written through, and the other one
	for _, n := range c.Nodes {
		waitUntil(t, 20*time.Second, n.Name+" to have the table", func() bool {
			b, err := os.ReadFile(n.Path("app.db-pos"))
			return err == nil && strings.TrimSpace(string(b)) == want
		})
		nodes[n.Name].waitApp(t)
		if n != p {
			if writer == nil {
				writer = nodes[n.Name]
			} else {
				target = nodes[n.Name]
			}
		}
	}
	writer.waitHealth(t, 10*time.Second, http.StatusOK)
	w := startProxyWriter(t, writer.ProxyURL())
	w.waitMore(t, 50)

	// litefs handoff: the primary hands the lease to the other replica.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	res, err := apiClient.Handoff(ctx, p.URL(), target.Name)
	cancel()
	if err != nil {
		t.Fatalf("handoff: %v", err)
	}
	t.Logf("handoff from %s to %s: writes refused for %d ms", res.From, res.To, res.WindowMS)
	waitUntil(t, 15*time.Second, target.Name+" to be primary", func() bool {
		info, err := getAPIInfo(target.Node)
		return err == nil && info.Primary
	})
	w.waitMore(t, 50)

	// SIGTERM: the new primary hands off as it stops.
	target.Stop()
	np := c.WaitPrimary(t, 15*time.Second)
	t.Logf("after SIGTERM of %s the primary is %s", target.Name, np.Name)
	w.waitMore(t, 50)
	w.Stop()

	w.mu.Lock()
	acked, failures, slowest := w.acked, w.failures, w.slowest
	w.mu.Unlock()
	t.Logf("%d writes acknowledged through %s's proxy, %d failed; slowest answer %s", len(acked), writer.Name, len(failures), slowest)
	for _, f := range failures {
		t.Errorf("failed request: %s", f)
	}
	// Every acknowledged write is on the last primary.
	got := make(map[string]bool)
	for _, v := range strings.Split(mustSQLite3(t, np.Path("app.db"), "SELECT v FROM items"), "\n") {
		got[v] = true
	}
	lost := 0
	for _, v := range acked {
		if !got[v] {
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("%d acknowledged writes are not on the primary %s", lost, np.Name)
	}
}
