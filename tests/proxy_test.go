package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ProxyNode is a litefs node with its proxy in front of a web app (the
// test binary's webapp helper) on the node's mount.
type ProxyNode struct {
	*Node
	ProxyAddr string // where the proxy listens
	AppAddr   string // where the app listens (proxy.target)
}

// newProxyNode prepares a node whose config has a proxy section; more is
// extra YAML inside it.
func newProxyNode(t testing.TB, cfg NodeConfig, more string) *ProxyNode {
	t.Helper()
	p := &ProxyNode{ProxyAddr: freeAddr(t), AppAddr: freeAddr(t)}
	cfg.Extra += fmt.Sprintf("proxy:\n  addr: %s\n  target: %s\n  db: app.db\n  always-forward: [\"/forwarded/*\"]\n%s",
		p.ProxyAddr, p.AppAddr, more)
	p.Node = NewNodeWith(t, cfg)
	return p
}

// ExecApp makes litefs run the web app itself (exec), as a deployment
// does: it starts once the mount is up, gets litefs's signals, and ends
// litefs when it exits.
func (p *ProxyNode) ExecApp(t testing.TB) {
	t.Helper()
	args, _ := json.Marshal(helperArgs{Path: p.Path("app.db"), JournalMode: "delete", Addr: p.AppAddr, Name: p.Name})
	b, err := os.ReadFile(p.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	p.WriteConfig(string(b) + fmt.Sprintf("exec: |-\n  %s=webapp %s='%s' exec %s -test.run=NONE\n", helperEnv, helperArgsEnv, args, os.Args[0]))
}

// waitApp waits until the node's app answers.
func (p *ProxyNode) waitApp(t testing.TB) {
	t.Helper()
	waitUntil(t, 15*time.Second, p.Name+"'s app to answer", func() bool {
		resp, err := http.Get("http://" + p.AppAddr + "/stats")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// ProxyURL returns the proxy's URL.
func (p *ProxyNode) ProxyURL() string { return "http://" + p.ProxyAddr }

// StartApp starts the web app on the node's mount and waits until it
// listens. It ends with the test.
func (p *ProxyNode) StartApp(t testing.TB) *exec.Cmd {
	t.Helper()
	cmd, out := startHelper(t, "webapp", helperArgs{Path: p.Path("app.db"), JournalMode: "delete", Addr: p.AppAddr, Name: p.Name})
	lines := make(chan string, 1)
	go func() {
		if out.Scan() {
			lines <- out.Text()
		}
		close(lines)
	}()
	select {
	case l := <-lines:
		if l != "listening" {
			t.Fatalf("webapp on %s: %q", p.Name, l)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("webapp on %s did not start", p.Name)
	}
	return cmd
}

// Health returns the status and body of the proxy's /litefs/health.
func (p *ProxyNode) Health(t testing.TB) (int, string) {
	t.Helper()
	resp, err := http.Get(p.ProxyURL() + "/litefs/health")
	if err != nil {
		t.Fatalf("%s: health: %v", p.Name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitHealth waits until the proxy's health answers status.
func (p *ProxyNode) waitHealth(t testing.TB, d time.Duration, status int) string {
	t.Helper()
	var body string
	waitUntil(t, d, fmt.Sprintf("%s's health to answer %d", p.Name, status), func() bool {
		var got int
		got, body = p.Health(t)
		return got == status
	})
	return body
}

// proxyCluster is a static-lease primary and one replica, each with its
// proxy and web app; items is created on the primary and replicated.
type proxyCluster struct {
	Primary, Replica *ProxyNode
	PrimaryApp       *exec.Cmd
	ReplicaApp       *exec.Cmd
}

func startProxyCluster(t testing.TB, more string) *proxyCluster {
	return startProxyClusterWith(t, more, litefsBin)
}

// startProxyClusterWith starts the cluster with the litefs binary bin.
func startProxyClusterWith(t testing.TB, more, bin string) *proxyCluster {
	t.Helper()
	c := &proxyCluster{Primary: newProxyNode(t, NodeConfig{Name: "primary"}, more)}
	c.Primary.Bin = bin
	c.Primary.Start()
	c.Replica = newProxyNode(t, NodeConfig{Name: "replica1", Replica: true, PrimaryURL: c.Primary.URL()}, more)
	c.Replica.Bin = bin
	c.Replica.Start()
	t.Cleanup(func() {
		if !t.Failed() {
			for _, n := range []*Node{c.Primary.Node, c.Replica.Node} {
				if n.running() {
					n.CheckInvariants()
				}
			}
		}
	})
	mustSQLite3(t, c.Primary.Path("app.db"), "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
	want := c.Primary.Pos("app.db").String()
	waitUntil(t, 30*time.Second, "the replica to have the items table", func() bool {
		b, err := os.ReadFile(c.Replica.Path("app.db-pos"))
		return err == nil && strings.TrimSpace(string(b)) == want
	})
	c.PrimaryApp = c.Primary.StartApp(t)
	c.ReplicaApp = c.Replica.StartApp(t)
	c.Replica.waitHealth(t, 10*time.Second, http.StatusOK)
	return c
}

// call sends a request and returns the response with its body read.
func call(t testing.TB, client *http.Client, method, url string, form url.Values) (*http.Response, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp, string(b)
}

// hasItem reports whether a /items listing holds value v.
func hasItem(list, v string) bool {
	for _, l := range strings.Split(list, "\n") {
		if _, got, ok := strings.Cut(l, " "); ok && got == v {
			return true
		}
	}
	return false
}

var txidCookie = regexp.MustCompile(`^[0-9a-f]{16}$`)

func TestProxy_StaticCluster(t *testing.T) {
	c := startProxyCluster(t, "  primary-redirect-timeout: 3s\n")
	replicaURL := c.Replica.ProxyURL()
	timeout := &http.Client{Timeout: 20 * time.Second}

	t.Run("ForwardedWriteWithCookie", func(t *testing.T) {
		jar, _ := cookiejar.New(nil)
		client := &http.Client{Jar: jar, Timeout: 20 * time.Second}
		resp, body := call(t, client, "POST", replicaURL+"/items", url.Values{"v": {"jar-1"}})
		if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-App-Node") != "primary" {
			t.Fatalf("POST through the replica: %d from %q: %s", resp.StatusCode, resp.Header.Get("X-App-Node"), body)
		}
		var cookie *http.Cookie
		for _, ck := range resp.Cookies() {
			if ck.Name == "__txid" {
				cookie = ck
			}
		}
		if cookie == nil || !txidCookie.MatchString(cookie.Value) || resp.Header.Get("Litefs-Txid") != cookie.Value {
			t.Fatalf("__txid cookie %v, Litefs-Txid %q", cookie, resp.Header.Get("Litefs-Txid"))
		}
		if txid, _ := strconv.ParseUint(cookie.Value, 16, 64); txid != uint64(c.Primary.Pos("app.db").TXID) {
			t.Errorf("cookie names txid %d, the primary is at %s", txid, c.Primary.Pos("app.db"))
		}
		// The write ran on the primary's database...
		if got := dump(t, c.Primary.Node, "app.db", "SELECT v FROM items WHERE v = 'jar-1'"); got != "jar-1" {
			t.Fatalf("the primary does not have the row: %q", got)
		}
		// ...and reads back through the same replica, served there.
		resp, body = call(t, client, "GET", replicaURL+"/items", nil)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-App-Node") != "replica1" || !hasItem(body, "jar-1") {
			t.Fatalf("GET through the replica: %d from %q: %q", resp.StatusCode, resp.Header.Get("X-App-Node"), body)
		}
	})

	t.Run("ReadYourWritesWithoutCookie", func(t *testing.T) {
		// No cookie jar: the forwarded write answers only once the
		// replica has it, so the next read there sees it.
		for i := 0; i < 20; i++ {
			v := fmt.Sprintf("nojar-%d", i)
			resp, body := call(t, timeout, "POST", replicaURL+"/items", url.Values{"v": {v}})
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("POST %s: %d %s", v, resp.StatusCode, body)
			}
			resp, body = call(t, timeout, "GET", replicaURL+"/items", nil)
			if resp.Header.Get("X-App-Node") != "replica1" || !hasItem(body, v) {
				t.Fatalf("read after write %s from %q does not see it: %q", v, resp.Header.Get("X-App-Node"), body)
			}
		}
	})

	t.Run("Curl", func(t *testing.T) {
		out, err := exec.Command("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
			"-X", "POST", "-d", "v=curl-1", replicaURL+"/items").CombinedOutput()
		if err != nil || string(out) != "201" {
			t.Fatalf("curl POST: %v: %s", err, out)
		}
		out, err = exec.Command("curl", "-sS", "--max-time", "20", replicaURL+"/items").CombinedOutput()
		if err != nil || !hasItem(string(out), "curl-1") {
			t.Fatalf("curl GET: %v: %s", err, out)
		}
		// curl with a cookie file carries __txid between its runs.
		jar := t.TempDir() + "/cookies"
		out, err = exec.Command("curl", "-sS", "-c", jar, "--max-time", "20", "-X", "POST", "-d", "v=curl-2", replicaURL+"/items").CombinedOutput()
		if err != nil {
			t.Fatalf("curl POST: %v: %s", err, out)
		}
		out, err = exec.Command("curl", "-sS", "-b", jar, "--max-time", "20", replicaURL+"/items").CombinedOutput()
		if err != nil || !hasItem(string(out), "curl-2") {
			t.Fatalf("curl GET with the cookie: %v: %s", err, out)
		}
	})

	t.Run("Headers", func(t *testing.T) {
		_, local := call(t, timeout, "GET", replicaURL+"/headers", nil)
		_, fwd := call(t, timeout, "GET", replicaURL+"/forwarded/headers", nil)
		for name, body := range map[string]string{"local": local, "forwarded": fwd} {
			for _, want := range []string{"Host: " + c.Replica.ProxyAddr, "X-Forwarded-Host: " + c.Replica.ProxyAddr, "X-Forwarded-Proto: http", "X-Forwarded-For: 127.0.0.1"} {
				if !strings.Contains(body, want) {
					t.Errorf("%s: the app saw\n%s\nwant %q", name, body, want)
				}
			}
		}
		if !strings.Contains(fwd, "X-Forwarded-For: 127.0.0.1, 127.0.0.1") {
			t.Errorf("forwarded: X-Forwarded-For should name the client and the replica's proxy:\n%s", fwd)
		}
	})

	t.Run("ServerSentEvents", func(t *testing.T) {
		for path, node := range map[string]string{"/events": "replica1", "/forwarded/events": "primary"} {
			start := time.Now()
			resp, err := timeout.Get(replicaURL + path)
			if err != nil {
				t.Fatal(err)
			}
			r := bufio.NewReader(resp.Body)
			line, err := r.ReadString('\n')
			first := time.Since(start)
			if err != nil || line != "data: 1 "+node+"\n" {
				t.Errorf("%s: first event %q, %v", path, line, err)
			}
			// The app sends the next events 200 and 400 ms later: the
			// first must arrive before them, not buffered to the end.
			if first > 150*time.Millisecond {
				t.Errorf("%s: the first event took %s: buffered", path, first)
			}
			rest, _ := io.ReadAll(r)
			resp.Body.Close()
			if !strings.Contains(string(rest), "data: 3 "+node) {
				t.Errorf("%s: rest of the stream %q", path, rest)
			}
		}
	})

	t.Run("WebSocket", func(t *testing.T) {
		for path, node := range map[string]string{"/ws": "replica1", "/forwarded/ws": "primary"} {
			if got := wsRoundTrip(t, c.Replica.ProxyAddr, path, "hello"); got != node+": hello" {
				t.Errorf("%s: echo %q, want from %s", path, got, node)
			}
		}
	})

	t.Run("StreamedUpload", func(t *testing.T) {
		const size = 64 << 20
		req, _ := http.NewRequest("POST", replicaURL+"/upload", io.LimitReader(zeros{}, size))
		req.ContentLength = -1 // chunked: nothing knows the size in advance
		resp, err := timeout.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != strconv.Itoa(size) || resp.Header.Get("X-App-Node") != "primary" {
			t.Fatalf("upload through the replica: %d from %q: %s", resp.StatusCode, resp.Header.Get("X-App-Node"), b)
		}
	})

	t.Run("BadCookies", func(t *testing.T) {
		for _, v := range []string{"garbage", "12", "0000000000000000", "zzzzzzzzzzzzzzzz"} {
			req, _ := http.NewRequest("GET", replicaURL+"/items", nil)
			req.AddCookie(&http.Cookie{Name: "__txid", Value: v})
			start := time.Now()
			resp, err := timeout.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || resp.Header.Get("X-App-Node") != "replica1" || time.Since(start) > time.Second {
				t.Errorf("cookie %q: %d from %q in %s", v, resp.StatusCode, resp.Header.Get("X-App-Node"), time.Since(start))
			}
		}
		// A cookie from another history (beyond the primary) is cleared
		// by the primary.
		req, _ := http.NewRequest("GET", c.Primary.ProxyURL()+"/items", nil)
		req.AddCookie(&http.Cookie{Name: "__txid", Value: "7fffffffffffffff"})
		resp, err := timeout.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if sc := resp.Header.Get("Set-Cookie"); resp.StatusCode != http.StatusOK || !strings.Contains(sc, "__txid=;") || !strings.Contains(sc, "Max-Age=0") {
			t.Errorf("stale cookie on the primary: %d, Set-Cookie %q", resp.StatusCode, sc)
		}
	})

	t.Run("PrimaryKilled", func(t *testing.T) {
		c.Primary.Kill()
		body := c.Replica.waitHealth(t, 10*time.Second, http.StatusServiceUnavailable)
		if !strings.Contains(body, "not connected to the primary") {
			t.Errorf("health body %q", body)
		}
		// Reads go on from the replica's data.
		if resp, body := call(t, timeout, "GET", replicaURL+"/items", nil); resp.StatusCode != http.StatusOK || !hasItem(body, "jar-1") {
			t.Errorf("read with the primary down: %d %q", resp.StatusCode, body)
		}
		for i := 0; i < 5; i++ {
			start := time.Now()
			resp, body := call(t, timeout, "POST", replicaURL+"/items", url.Values{"v": {"lost"}})
			took := time.Since(start)
			if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || took >= time.Second {
				t.Errorf("write with the primary down: %d (Retry-After %q) in %s: %s", resp.StatusCode, resp.Header.Get("Retry-After"), took, body)
			}
			if !strings.Contains(body, "primary") || !strings.Contains(body, "refused") {
				t.Errorf("refusal body does not say who was tried and why: %q", body)
			}
		}
		// No write ever reached the replica's app.
		_, stats := call(t, timeout, "GET", "http://"+c.Replica.AppAddr+"/stats", nil)
		if strings.TrimSpace(stats) != "writes=0" {
			t.Errorf("the replica's app received writes: %s", stats)
		}
		if !strings.Contains(c.Replica.Logs(), "proxy: request refused") {
			t.Errorf("refusals not logged")
		}
		// The metrics count the requests by route and outcome: the
		// forwarded writes that succeeded earlier and these refusals.
		f := scrape(t, c.Replica.Node)
		if v, _ := metricValue(f, "litefs_proxy_requests_total", "route", "write", "outcome", "2xx"); v < 1 {
			t.Errorf("forwarded writes counted: %v", v)
		}
		var refused float64
		for _, m := range f["litefs_proxy_requests_total"].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && !strings.HasSuffix(l.GetValue(), "xx") {
					refused += m.GetCounter().GetValue()
				}
			}
		}
		if refused < 5 {
			t.Errorf("refused writes counted: %v, want at least 5", refused)
		}
	})

	t.Run("TargetDown", func(t *testing.T) {
		_ = c.ReplicaApp.Process.Kill()
		_ = c.ReplicaApp.Wait()
		resp, body := call(t, timeout, "GET", replicaURL+"/items", nil)
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, c.Replica.AppAddr) {
			t.Errorf("app down: %d %q", resp.StatusCode, body)
		}
	})
}

// TestProxy_Health: the proxy listens before the replica has a primary,
// answers 503 until it is connected and synced, 200 then, and 503 again
// when the primary is gone.
func TestProxy_Health(t *testing.T) {
	primary := newProxyNode(t, NodeConfig{Name: "primary"}, "")
	replica := newProxyNode(t, NodeConfig{Name: "replica1", Replica: true, PrimaryURL: primary.URL()}, "  max-lag: 2s\n")
	replica.Start() // its primary is not running yet
	status, body := replica.Health(t)
	if status != http.StatusServiceUnavailable || !strings.Contains(body, "not connected to the primary") {
		t.Fatalf("replica without its primary: %d %q", status, body)
	}
	primary.Start()
	if status, body := primary.Health(t); status != http.StatusOK {
		t.Fatalf("primary: %d %q", status, body)
	}
	mustSQLite3(t, primary.Path("app.db"), "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO items (v) VALUES ('a')")
	replica.waitHealth(t, 15*time.Second, http.StatusOK)
	if got := replica.Pos("app.db"); got != primary.Pos("app.db") {
		t.Errorf("healthy at %s, the primary is at %s", got, primary.Pos("app.db"))
	}
	primary.Stop()
	body = replica.waitHealth(t, 10*time.Second, http.StatusServiceUnavailable)
	if !strings.Contains(body, "not connected") {
		t.Errorf("health without the primary: %q", body)
	}
	// /info (and litefs status) carry the same state.
	info, err := getAPIInfo(replica.Node)
	if err != nil || info.Proxy == nil || info.Proxy.Healthy || !strings.Contains(info.Proxy.Reason, "not connected") || info.Proxy.URL == "" {
		t.Errorf("/info's proxy: %+v %v", info.Proxy, err)
	}
	replica.CheckInvariants()
}

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// wsRoundTrip opens a WebSocket at addr+path, sends msg and returns the
// echo.
func wsRoundTrip(t testing.TB, addr, path, msg string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	key := "dGhlIHNhbXBsZSBub25jZQ=="
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", path, addr, key)
	r := bufio.NewReader(conn)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("%s: handshake: %v", path, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != wsAccept(key) {
		t.Fatalf("%s: handshake answered %d %v", path, resp.StatusCode, resp.Header)
	}
	if err := wsWrite(conn, []byte(msg), true); err != nil {
		t.Fatal(err)
	}
	p, err := wsRead(r)
	if err != nil {
		t.Fatalf("%s: read echo: %v", path, err)
	}
	return string(p)
}
