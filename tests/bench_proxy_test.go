package tests

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"
)

// BenchmarkProxy compares, in one run on one machine, requests straight to
// the web app with the same requests through the proxy: point reads on a
// replica, and single-row writes sent to the primary's app directly, through
// the primary's proxy, and through a replica's proxy (forwarded to the
// primary, answered once the replica has the write). One client, one
// request at a time, connections kept alive; it reports requests per
// second and p50/p99 latency.
//
//	go test ./tests -run '^$' -bench Proxy -benchtime 2000x
func BenchmarkProxy(b *testing.B) {
	bin, err := buildLitefs(false)
	if err != nil {
		b.Fatal(err)
	}
	c := startProxyClusterWith(b, "", bin, 1)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}, Timeout: 10 * time.Second}
	// Rows to read.
	for i := 0; i < 100; i++ {
		resp, body := call(b, client, "POST", c.Primary.ProxyURL()+"/items", url.Values{"v": {fmt.Sprintf("row-%d", i)}})
		if resp.StatusCode != http.StatusCreated {
			b.Fatalf("seed: %d %s", resp.StatusCode, body)
		}
	}
	c.Replica.waitHealth(b, 10*time.Second, http.StatusOK)

	run := func(b *testing.B, method, base string, write bool) {
		lat := make([]time.Duration, 0, b.N)
		v := strings.Repeat("x", 100)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			var req *http.Request
			if write {
				req, _ = http.NewRequest(method, base+"/items", strings.NewReader("v="+v))
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			} else {
				req, _ = http.NewRequest(method, fmt.Sprintf("%s/item?id=%d", base, i%100+1), nil)
			}
			start := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			lat = append(lat, time.Since(start))
			if resp.StatusCode >= 300 {
				b.Fatalf("%s %s: %d", method, base, resp.StatusCode)
			}
		}
		b.StopTimer()
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-us")
	}
	b.Run("Read/replica-app-direct", func(b *testing.B) { run(b, "GET", "http://"+c.Replica.AppAddr, false) })
	b.Run("Read/replica-proxy", func(b *testing.B) { run(b, "GET", c.Replica.ProxyURL(), false) })
	b.Run("Write/primary-app-direct", func(b *testing.B) { run(b, "POST", "http://"+c.Primary.AppAddr, true) })
	b.Run("Write/primary-proxy", func(b *testing.B) { run(b, "POST", c.Primary.ProxyURL(), true) })
	b.Run("Write/replica-proxy-forwarded", func(b *testing.B) { run(b, "POST", c.Replica.ProxyURL(), true) })
}
