package tests

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
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

// proxyCluster is a static-lease primary and its replicas, each with its
// proxy and web app; items is created on the primary and replicated.
// Replica is the first replica.
type proxyCluster struct {
	Primary     *ProxyNode
	Replicas    []*ProxyNode
	Replica     *ProxyNode
	PrimaryApp  *exec.Cmd
	ReplicaApps []*exec.Cmd
	ReplicaApp  *exec.Cmd
}

// startProxyCluster starts a three-node cluster: the primary and two
// replicas.
func startProxyCluster(t testing.TB, more string) *proxyCluster {
	return startProxyClusterWith(t, more, litefsBin, 2)
}

// startProxyClusterWith starts the primary and n replicas with the litefs
// binary bin.
func startProxyClusterWith(t testing.TB, more, bin string, n int) *proxyCluster {
	t.Helper()
	c := &proxyCluster{Primary: newProxyNode(t, NodeConfig{Name: "primary"}, more)}
	c.Primary.Bin = bin
	c.Primary.Start()
	for i := 1; i <= n; i++ {
		r := newProxyNode(t, NodeConfig{Name: fmt.Sprintf("replica%d", i), Replica: true, PrimaryURL: c.Primary.URL()}, more)
		r.Bin = bin
		r.Start()
		c.Replicas = append(c.Replicas, r)
	}
	c.Replica = c.Replicas[0]
	t.Cleanup(func() {
		if !t.Failed() {
			for _, n := range c.nodes() {
				if n.running() {
					n.CheckInvariants()
				}
			}
		}
	})
	mustSQLite3(t, c.Primary.Path("app.db"), "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
	want := c.Primary.Pos("app.db").String()
	for _, r := range c.Replicas {
		waitUntil(t, 30*time.Second, r.Name+" to have the items table", func() bool {
			b, err := os.ReadFile(r.Path("app.db-pos"))
			return err == nil && strings.TrimSpace(string(b)) == want
		})
	}
	c.PrimaryApp = c.Primary.StartApp(t)
	for _, r := range c.Replicas {
		c.ReplicaApps = append(c.ReplicaApps, r.StartApp(t))
		r.waitHealth(t, 10*time.Second, http.StatusOK)
	}
	c.ReplicaApp = c.ReplicaApps[0]
	return c
}

// nodes returns every node of the cluster.
func (c *proxyCluster) nodes() []*Node {
	a := []*Node{c.Primary.Node}
	for _, r := range c.Replicas {
		a = append(a, r.Node)
	}
	return a
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

// TestProxy_StaticCluster: a primary and two replicas on the static lease,
// each with its proxy in front of the web app. Every scenario runs through
// each replica.
func TestProxy_StaticCluster(t *testing.T) {
	c := startProxyCluster(t, "  primary-redirect-timeout: 3s\n  read-your-writes-timeout: 1s\n")
	replicaURL := c.Replica.ProxyURL()
	timeout := &http.Client{Timeout: 20 * time.Second}

	t.Run("ForwardedWriteWithCookie", func(t *testing.T) {
		for i, r := range c.Replicas {
			other := c.Replicas[(i+1)%len(c.Replicas)]
			jar, _ := cookiejar.New(nil)
			client := &http.Client{Jar: jar, Timeout: 20 * time.Second}
			v := "jar-" + r.Name
			resp, body := call(t, client, "POST", r.ProxyURL()+"/items", url.Values{"v": {v}})
			if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-App-Node") != "primary" {
				t.Fatalf("POST through %s: %d from %q: %s", r.Name, resp.StatusCode, resp.Header.Get("X-App-Node"), body)
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
			if got := dump(t, c.Primary.Node, "app.db", "SELECT v FROM items WHERE v = '"+v+"'"); got != v {
				t.Fatalf("the primary does not have the row: %q", got)
			}
			// ...reads back through the same replica, served there, and
			// through the other replica, whose proxy waits for the
			// cookie's position.
			for _, rr := range []*ProxyNode{r, other} {
				resp, body = call(t, client, "GET", rr.ProxyURL()+"/items", nil)
				if resp.StatusCode != http.StatusOK || resp.Header.Get("X-App-Node") != rr.Name || !hasItem(body, v) {
					t.Fatalf("GET through %s after a write through %s: %d from %q: %q", rr.Name, r.Name, resp.StatusCode, resp.Header.Get("X-App-Node"), body)
				}
			}
		}
	})

	t.Run("ReadYourWritesWithoutCookie", func(t *testing.T) {
		// No cookie jar: the forwarded write answers only once the
		// replica has it, so the next read there sees it.
		for _, r := range c.Replicas {
			for i := 0; i < 10; i++ {
				v := fmt.Sprintf("nojar-%s-%d", r.Name, i)
				resp, body := call(t, timeout, "POST", r.ProxyURL()+"/items", url.Values{"v": {v}})
				if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-App-Node") != "primary" {
					t.Fatalf("POST %s through %s: %d from %q: %s", v, r.Name, resp.StatusCode, resp.Header.Get("X-App-Node"), body)
				}
				resp, body = call(t, timeout, "GET", r.ProxyURL()+"/items", nil)
				if resp.Header.Get("X-App-Node") != r.Name || !hasItem(body, v) {
					t.Fatalf("read after write %s through %s from %q does not see it: %q", v, r.Name, resp.Header.Get("X-App-Node"), body)
				}
			}
		}
	})

	t.Run("Curl", func(t *testing.T) {
		// curl is a separate process; the app names the node that served
		// each request in X-App-Node.
		curl := func(args ...string) (node, body string) {
			t.Helper()
			hdr := t.TempDir() + "/headers"
			out, err := exec.Command("curl", append([]string{"-sS", "--fail-with-body", "--max-time", "20", "-D", hdr}, args...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("curl %v: %v: %s", args, err, out)
			}
			h, _ := os.ReadFile(hdr)
			for _, l := range strings.Split(string(h), "\r\n") {
				if k, v, ok := strings.Cut(l, ": "); ok && strings.EqualFold(k, "X-App-Node") {
					node = v
				}
			}
			return node, string(out)
		}
		for _, r := range c.Replicas {
			// Without a cookie: the forwarded write's answer waited for
			// this replica.
			v := "curl-" + r.Name
			if node, out := curl("-X", "POST", "-d", "v="+v, r.ProxyURL()+"/items"); node != "primary" {
				t.Fatalf("curl POST through %s ran on %q: %s", r.Name, node, out)
			}
			if node, out := curl(r.ProxyURL() + "/items"); node != r.Name || !hasItem(out, v) {
				t.Fatalf("curl GET through %s from %q: %s", r.Name, node, out)
			}
			// With a cookie file, curl carries __txid between its runs.
			jar := t.TempDir() + "/cookies"
			v = "curl-jar-" + r.Name
			if node, out := curl("-c", jar, "-X", "POST", "-d", "v="+v, r.ProxyURL()+"/items"); node != "primary" {
				t.Fatalf("curl POST through %s ran on %q: %s", r.Name, node, out)
			}
			if b, err := os.ReadFile(jar); err != nil || !strings.Contains(string(b), "__txid") {
				t.Fatalf("curl's cookie file: %q %v", b, err)
			}
			if node, out := curl("-b", jar, r.ProxyURL()+"/items"); node != r.Name || !hasItem(out, v) {
				t.Fatalf("curl GET with the cookie through %s from %q: %s", r.Name, node, out)
			}
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
		for _, r := range c.Replicas {
			for path, node := range map[string]*ProxyNode{"/events": r, "/forwarded/events": c.Primary} {
				// The app holds the stream after the first event until it
				// is acknowledged (straight to the app): a proxy that
				// buffered the stream would keep that event from the client
				// until the app gave up ("timeout" in the second event).
				id := fmt.Sprintf("%s-%d", r.Name, time.Now().UnixNano())
				resp, err := timeout.Get(r.ProxyURL() + path + "?id=" + id)
				if err != nil {
					t.Fatal(err)
				}
				br := bufio.NewReader(resp.Body)
				line, err := br.ReadString('\n')
				if err != nil || line != "data: 1 "+node.Name+"\n" {
					t.Errorf("%s%s: first event %q, %v", r.Name, path, line, err)
				}
				if ack, body := call(t, timeout, "GET", "http://"+node.AppAddr+"/ack?id="+id, nil); ack.StatusCode != http.StatusOK {
					t.Errorf("%s%s: ack: %d %s", r.Name, path, ack.StatusCode, body)
				}
				rest, _ := io.ReadAll(br)
				resp.Body.Close()
				if !strings.Contains(string(rest), "data: 2 "+node.Name+" acked\n") || !strings.Contains(string(rest), "data: 3 "+node.Name) {
					t.Errorf("%s%s: rest of the stream %q", r.Name, path, rest)
				}
			}
		}
	})

	t.Run("WebSocket", func(t *testing.T) {
		for _, r := range c.Replicas {
			for path, node := range map[string]string{"/ws": r.Name, "/forwarded/ws": "primary"} {
				if got := wsRoundTrip(t, r.ProxyAddr, path, "hello"); got != node+": hello" {
					t.Errorf("%s%s: echo %q, want from %s", r.Name, path, got, node)
				}
			}
		}
	})

	t.Run("LargeUpload", func(t *testing.T) {
		// 100 MB through a replica's proxy to the primary's proxy and
		// app: the body streams through both proxies, whose peak memory
		// grows by far less than the body.
		for _, chunked := range []bool{false, true} {
			if chunked && testing.Short() {
				continue
			}
			t.Run(fmt.Sprintf("chunked=%t", chunked), func(t *testing.T) {
				const size = 100 << 20
				procs := []*ProxyNode{c.Replica, c.Primary}
				before := make([]int64, len(procs))
				for i, n := range procs {
					before[i] = resetPeakRSS(t, n.PID())
				}
				h := sha256.New()
				src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{1}), size), h)
				req, _ := http.NewRequest("POST", replicaURL+"/upload", src)
				req.ContentLength = size
				if chunked {
					req.ContentLength = -1 // nothing knows the size in advance
				}
				resp, err := timeout.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				body := string(b)
				want := fmt.Sprintf("%d %x", size, h.Sum(nil))
				if resp.StatusCode != http.StatusOK || strings.TrimSpace(body) != want || resp.Header.Get("X-App-Node") != "primary" {
					t.Fatalf("upload through the replica: %d from %q: %q, want %q", resp.StatusCode, resp.Header.Get("X-App-Node"), body, want)
				}
				for i, n := range procs {
					peak := peakRSS(t, n.PID())
					t.Logf("%s's litefs: peak RSS %d MiB -> %d MiB during the upload", n.Name, before[i]>>20, peak>>20)
					if grew := peak - before[i]; grew >= 32<<20 {
						t.Errorf("%s's litefs grew by %d MiB during a %d MiB upload: the body was buffered", n.Name, grew>>20, size>>20)
					}
				}
			})
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

	t.Run("CookieAheadOfReplica", func(t *testing.T) {
		// A position this replica cannot reach: the read waits
		// read-your-writes-timeout (1s here) for it, then the primary
		// serves it (and clears the cookie, which names a position it
		// never had).
		req, _ := http.NewRequest("GET", replicaURL+"/items", nil)
		req.AddCookie(&http.Cookie{Name: "__txid", Value: "0000000000f00000"})
		start := time.Now()
		resp, err := timeout.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		took := time.Since(start)
		t.Logf("served by %s after %s", resp.Header.Get("X-App-Node"), took)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("X-App-Node") != "primary" || took < time.Second {
			t.Errorf("read with a cookie ahead of the replica: %d from %q after %s, want the primary's answer after at least read-your-writes-timeout (1s)",
				resp.StatusCode, resp.Header.Get("X-App-Node"), took)
		}
		if sc := resp.Header.Get("Set-Cookie"); !strings.Contains(sc, "__txid=;") {
			t.Errorf("the cookie was not cleared: Set-Cookie %q", sc)
		}
	})

	t.Run("PrimaryKilled", func(t *testing.T) {
		c.Primary.Kill()
		for _, r := range c.Replicas {
			body := r.waitHealth(t, 10*time.Second, http.StatusServiceUnavailable)
			if !strings.Contains(body, "not connected to the primary") {
				t.Errorf("%s: health body %q", r.Name, body)
			}
			// Reads go on from the replica's data.
			if resp, body := call(t, timeout, "GET", r.ProxyURL()+"/items", nil); resp.StatusCode != http.StatusOK || resp.Header.Get("X-App-Node") != r.Name || !hasItem(body, "jar-"+r.Name) {
				t.Errorf("%s: read with the primary down: %d %q", r.Name, resp.StatusCode, body)
			}
			for i := 0; i < 5; i++ {
				start := time.Now()
				resp, body := call(t, timeout, "POST", r.ProxyURL()+"/items", url.Values{"v": {"lost"}})
				took := time.Since(start)
				if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || took >= time.Second {
					t.Errorf("%s: write with the primary down: %d (Retry-After %q) in %s: %s", r.Name, resp.StatusCode, resp.Header.Get("Retry-After"), took, body)
				}
				if !strings.Contains(body, "primary") || !strings.Contains(body, "refused") {
					t.Errorf("%s: refusal body does not say who was tried and why: %q", r.Name, body)
				}
			}
			// No write ever reached a replica's app.
			_, stats := call(t, timeout, "GET", "http://"+r.AppAddr+"/stats", nil)
			if strings.TrimSpace(stats) != "writes=0" {
				t.Errorf("%s's app received writes: %s", r.Name, stats)
			}
			if !strings.Contains(r.Logs(), "proxy: request refused") {
				t.Errorf("%s: refusals not logged", r.Name)
			}
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

// TestProxy_FlyReplay: with proxy.forward: fly-replay a replica answers a
// write with a fly-replay header naming the primary, for Fly.io's edge to
// replay it there, and sends nothing on itself.
func TestProxy_FlyReplay(t *testing.T) {
	c := startProxyClusterWith(t, "  forward: fly-replay\n", litefsBin, 1)
	client := &http.Client{Timeout: 20 * time.Second}
	resp, body := call(t, client, "POST", c.Replica.ProxyURL()+"/items", url.Values{"v": {"replayed"}})
	if resp.StatusCode != http.StatusMisdirectedRequest || resp.Header.Get("Fly-Replay") != "instance=primary" || !strings.Contains(body, "primary") {
		t.Fatalf("write through the replica: %d, Fly-Replay %q: %q", resp.StatusCode, resp.Header.Get("Fly-Replay"), body)
	}
	// curl, a separate process, sees the same header.
	out, err := exec.Command("curl", "-sS", "-i", "--max-time", "20", "-X", "POST", "-d", "v=replayed", c.Replica.ProxyURL()+"/items").CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?i)\r\nfly-replay: instance=primary\r\n`).Match(out) {
		t.Fatalf("curl: %v: %s", err, out)
	}
	// Nothing ran anywhere.
	for _, n := range []*ProxyNode{c.Primary, c.Replica} {
		if _, stats := call(t, client, "GET", "http://"+n.AppAddr+"/stats", nil); strings.TrimSpace(stats) != "writes=0" {
			t.Errorf("%s's app received writes: %s", n.Name, stats)
		}
	}
	// Replayed by the edge to the instance named, the write runs there
	// and carries the position; reads stay local.
	req, _ := http.NewRequest("POST", c.Primary.ProxyURL()+"/items", strings.NewReader("v=replayed"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Fly-Replay-Src", "instance=replica1;state=")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-App-Node") != "primary" || resp.Header.Get("Litefs-Txid") == "" {
		t.Fatalf("the replayed write on the primary: %d from %q, Litefs-Txid %q", resp.StatusCode, resp.Header.Get("X-App-Node"), resp.Header.Get("Litefs-Txid"))
	}
	req, _ = http.NewRequest("GET", c.Replica.ProxyURL()+"/items", nil)
	req.AddCookie(&http.Cookie{Name: "__txid", Value: resp.Header.Get("Litefs-Txid")})
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-App-Node") != "replica1" || !hasItem(string(b), "replayed") {
		t.Fatalf("read through the replica with the cookie: %d from %q: %q", resp.StatusCode, resp.Header.Get("X-App-Node"), b)
	}
	if v, _ := metricValue(scrape(t, c.Replica.Node), "litefs_proxy_requests_total", "route", "write", "outcome", "fly-replay"); v != 2 {
		t.Errorf("fly-replay answers counted: %v, want 2", v)
	}
	// With no primary to name, a write is refused as in the default mode.
	c.Primary.Kill()
	c.Replica.waitHealth(t, 10*time.Second, http.StatusServiceUnavailable)
	resp, body = call(t, client, "POST", c.Replica.ProxyURL()+"/items", url.Values{"v": {"lost"}})
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Fly-Replay") != "" || resp.Header.Get("Litefs-Error") != "no-primary" {
		t.Errorf("write with the primary down: %d, Fly-Replay %q, Litefs-Error %q: %s", resp.StatusCode, resp.Header.Get("Fly-Replay"), resp.Header.Get("Litefs-Error"), body)
	}
}

// TestProxy_Health: on a primary and two replicas, each replica's proxy
// listens before it has a primary, answers 503 until it is connected and
// synced, 200 then, and 503 again when the primary is gone.
func TestProxy_Health(t *testing.T) {
	primary := newProxyNode(t, NodeConfig{Name: "primary"}, "")
	var replicas []*ProxyNode
	for i := 1; i <= 2; i++ {
		r := newProxyNode(t, NodeConfig{Name: fmt.Sprintf("replica%d", i), Replica: true, PrimaryURL: primary.URL()}, "  max-lag: 2s\n")
		r.Start() // its primary is not running yet
		replicas = append(replicas, r)
	}
	for _, r := range replicas {
		status, body := r.Health(t)
		if status != http.StatusServiceUnavailable || !strings.Contains(body, "not connected to the primary") {
			t.Fatalf("%s without its primary: %d %q", r.Name, status, body)
		}
	}
	primary.Start()
	if status, body := primary.Health(t); status != http.StatusOK {
		t.Fatalf("primary: %d %q", status, body)
	}
	mustSQLite3(t, primary.Path("app.db"), "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO items (v) VALUES ('a')")
	want := primary.Pos("app.db")
	for _, r := range replicas {
		r.waitHealth(t, 15*time.Second, http.StatusOK)
		// Healthy means synced once and within max-lag (2s), not at the
		// primary's newest position: the second transaction may still
		// be on its way. It has the database, and reaches the position.
		if got := r.Pos("app.db"); got.TXID == 0 {
			t.Errorf("%s healthy before it synced app.db", r.Name)
		}
		waitUntil(t, 10*time.Second, r.Name+" to reach the primary's position", func() bool { return r.Pos("app.db") == want })
	}
	primary.Stop()
	for _, r := range replicas {
		body := r.waitHealth(t, 10*time.Second, http.StatusServiceUnavailable)
		if !strings.Contains(body, "not connected") {
			t.Errorf("%s: health without the primary: %q", r.Name, body)
		}
		// /info (and litefs status) carry the same state.
		info, err := getAPIInfo(r.Node)
		if err != nil || info.Proxy == nil || info.Proxy.Healthy || !strings.Contains(info.Proxy.Reason, "not connected") || info.Proxy.URL == "" {
			t.Errorf("%s: /info's proxy: %+v %v", r.Name, info.Proxy, err)
		}
		r.CheckInvariants()
	}
}

// resetPeakRSS resets the peak resident set size (VmHWM) of process pid
// to its current one, and returns that.
func resetPeakRSS(t testing.TB, pid int) int64 {
	t.Helper()
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		t.Fatalf("reset the peak RSS of %d: %v", pid, err)
	}
	return peakRSS(t, pid)
}

// peakRSS returns the peak resident set size (VmHWM) of process pid, in
// bytes.
func peakRSS(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
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
