package tests

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkProxy compares, in one run on one machine, requests straight to
// the web app with the same requests through the proxy. Read: point reads
// on a replica, straight to its app (direct), through a bare
// httputil.ReverseProxy in a process of its own (plain: the floor of any
// proxy hop), and through the replica's proxy (proxy). Write: single-row
// writes to the primary's app (direct), through the primary's proxy
// (primary), and through the replica's proxy (forwarded to the primary,
// answered once the replica has the write). With LITEFS_BENCH_BASELINE
// naming another litefs binary (say, a build of an earlier commit), a
// second cluster runs it: the baseline rows.
//
// One client, one request at a time, connections kept alive; the rows take
// turns request by request, so each b.N counts one request per row. For
// each row it reports p50/p99 latency, and for reads the CPU time per
// request of the process only that row goes through (the plain proxy, the
// replica's litefs), which the noise of a shared machine disturbs less
// than latency.
//
//	go test ./tests -run '^$' -bench Proxy -benchtime 2000x
func BenchmarkProxy(b *testing.B) {
	bin, err := buildLitefs(false)
	if err != nil {
		b.Fatal(err)
	}
	c := startProxyClusterWith(b, "", bin, 1)
	var base *proxyCluster
	if path := os.Getenv("LITEFS_BENCH_BASELINE"); path != "" {
		base = startProxyClusterWith(b, "", path, 1)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}, Timeout: 10 * time.Second}
	// Rows to read.
	for _, c := range []*proxyCluster{c, base} {
		if c == nil {
			continue
		}
		for i := 0; i < 100; i++ {
			resp, body := call(b, client, "POST", c.Primary.ProxyURL()+"/items", url.Values{"v": {fmt.Sprintf("row-%d", i)}})
			if resp.StatusCode != http.StatusCreated {
				b.Fatalf("seed: %d %s", resp.StatusCode, body)
			}
		}
		c.Replica.waitHealth(b, 10*time.Second, http.StatusOK)
	}
	plainAddr := freeAddr(b)
	plain, out := startHelper(b, "plain-proxy", helperArgs{Addr: plainAddr, Target: c.Replica.AppAddr})
	if !out.Scan() || out.Text() != "listening" {
		b.Fatalf("plain proxy: %q", out.Text())
	}

	// A row is one way to the app; rows take turns request by request,
	// so that the machine's noise falls on each alike.
	type row struct {
		name string
		base string // URL
		pids []int  // the processes only this row's requests go through
	}
	run := func(b *testing.B, method string, write bool, rows []row) {
		lat := make([][]time.Duration, len(rows))
		cpu := make([]int64, len(rows))
		for j, r := range rows {
			lat[j] = make([]time.Duration, 0, b.N)
			for _, pid := range r.pids {
				cpu[j] -= cpuTime(b, pid)
			}
		}
		v := strings.Repeat("x", 100)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			for j, r := range rows {
				var req *http.Request
				if write {
					req, _ = http.NewRequest(method, r.base+"/items", strings.NewReader("v="+v))
					req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				} else {
					req, _ = http.NewRequest(method, fmt.Sprintf("%s/item?id=%d", r.base, i%100+1), nil)
				}
				start := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat[j] = append(lat[j], time.Since(start))
				if resp.StatusCode >= 300 {
					b.Fatalf("%s %s: %d", method, r.base, resp.StatusCode)
				}
			}
		}
		b.StopTimer()
		for j, r := range rows {
			for _, pid := range r.pids {
				cpu[j] += cpuTime(b, pid)
			}
			l := lat[j]
			sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
			b.ReportMetric(float64(l[len(l)/2].Microseconds()), r.name+"-p50-us")
			b.ReportMetric(float64(l[len(l)*99/100].Microseconds()), r.name+"-p99-us")
			if len(r.pids) > 0 {
				b.ReportMetric(float64(cpu[j])/1e3/float64(b.N), r.name+"-cpu-us/op")
			}
		}
	}
	reads := []row{
		{"direct", "http://" + c.Replica.AppAddr, nil},
		{"plain", "http://" + plainAddr, []int{plain.Process.Pid}},
		{"proxy", c.Replica.ProxyURL(), []int{c.Replica.PID()}},
	}
	writes := []row{
		{"direct", "http://" + c.Primary.AppAddr, nil},
		{"primary", c.Primary.ProxyURL(), nil},
		{"forwarded", c.Replica.ProxyURL(), nil},
	}
	if base != nil {
		reads = append(reads, row{"baseline", base.Replica.ProxyURL(), []int{base.Replica.PID()}})
		writes = append(writes, row{"baseline-forwarded", base.Replica.ProxyURL(), nil})
	}
	b.Run("Read", func(b *testing.B) { run(b, "GET", false, reads) })
	b.Run("Write", func(b *testing.B) { run(b, "POST", true, writes) })
}

// plainProxy is a bare httputil.ReverseProxy from args.Addr to args.Target,
// with connections to the target kept alive: the floor of any proxy hop.
// It prints "listening" once it accepts connections.
func plainProxy(args helperArgs, out io.Writer) int {
	target := &url.URL{Scheme: "http", Host: args.Target}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport: &http.Transport{MaxIdleConnsPerHost: 128, IdleConnTimeout: 90 * time.Second},
	}
	ln, err := net.Listen("tcp", args.Addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "plain proxy:", err)
		return 2
	}
	fmt.Fprintln(out, "listening")
	if err := http.Serve(ln, rp); err != nil {
		fmt.Fprintln(os.Stderr, "plain proxy:", err)
		return 1
	}
	return 0
}

// cpuTime returns the CPU time process pid has used so far: the sum over
// its threads of /proc/<pid>/task/<tid>/schedstat's first field.
func cpuTime(tb testing.TB, pid int) int64 {
	tb.Helper()
	paths, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(paths) == 0 {
		tb.Fatalf("threads of %d: %v", pid, err)
	}
	var ns int64
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread exited
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			tb.Fatalf("%s: %q", p, b)
		}
		ns += v
	}
	return ns
}
