package tests

import (
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape reads a node's /metrics with the Prometheus text parser.
func scrape(t testing.TB, n *Node) map[string]*dto.MetricFamily {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, n.URL()+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	if n.Secret != "" {
		req.Header.Set("Authorization", "Bearer "+n.Secret)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", n.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s", n.Name, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse the metrics of %s: %v", n.Name, err)
	}
	return fams
}

// metricValue returns the value of the family's sample whose labels match
// (name=value pairs), its count for a histogram; ok is false if none.
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	fam := fams[name]
	if fam == nil {
		return 0, false
	}
next:
	for _, m := range fam.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

func wantMetric(t testing.TB, fams map[string]*dto.MetricFamily, node, name string, want float64, labels ...string) {
	t.Helper()
	got, ok := metricValue(fams, name, labels...)
	if !ok || got != want {
		t.Fatalf("%s: %s%v = %v (present %v), want %v", node, name, labels, got, ok, want)
	}
}

// TestMetrics_Replication scrapes a primary and a replica through a write
// load: positions, commit counts, roles, subscribers, apply and lag
// histograms; the scrape needs the secret unless http.public-metrics is
// set.
func TestMetrics_Replication(t *testing.T) {
	const secret = "metrics-secret"
	p := NewNodeWith(t, NodeConfig{Name: "primary", Secret: secret})
	p.Start()
	r := NewNodeWith(t, NodeConfig{Name: "replica", Replica: true, PrimaryURL: p.URL(), Secret: secret})
	r.Start()

	const n = 25
	var sql strings.Builder
	sql.WriteString("CREATE TABLE t (x INTEGER);")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&sql, "INSERT INTO t VALUES (%d);", i)
	}
	mustSQLite3(t, p.Path("db"), sql.String())
	want := p.Pos("db")
	waitUntil(t, 30*time.Second, "the replica to catch up", func() bool { return r.Pos("db") == want })

	pf, rf := scrape(t, p), scrape(t, r)
	wantMetric(t, pf, "primary", "litefs_is_primary", 1)
	wantMetric(t, rf, "replica", "litefs_is_primary", 0)
	wantMetric(t, pf, "primary", "litefs_db_txid", float64(want.TXID), "db", "db")
	wantMetric(t, rf, "replica", "litefs_db_txid", float64(want.TXID), "db", "db")
	// Every transaction the sqlite3 CLI ran is one commit: the table and
	// each insert.
	wantMetric(t, pf, "primary", "litefs_db_commit_count", n+1, "db", "db")
	wantMetric(t, pf, "primary", "litefs_commit_duration_seconds", n+1)
	wantMetric(t, pf, "primary", "litefs_subscriber_count", 1)
	wantMetric(t, rf, "replica", "litefs_primary_connected", 1)
	wantMetric(t, rf, "replica", "litefs_lag_seconds", 0)
	wantMetric(t, rf, "replica", "litefs_db_lag_seconds", 0, "db", "db")
	if v, _ := metricValue(rf, "litefs_apply_duration_seconds"); v < 1 {
		t.Fatalf("replica applied %v batches, want at least one", v)
	}
	// The first transaction arrives as a snapshot (no lag measured); the
	// others, one at a time or in batches, are each measured.
	if v, _ := metricValue(rf, "litefs_replication_lag_seconds"); v < 1 || v > n {
		t.Fatalf("replica measured the lag of %v transactions, want 1..%d", v, n)
	}
	if v, _ := metricValue(pf, "litefs_db_ltx_count", "db", "db"); v < 1 {
		t.Fatalf("primary has %v ltx files", v)
	}
	for _, name := range []string{"litefs_fenced_commits_total", "litefs_demotions_total", "litefs_databases_moved_aside_total"} {
		wantMetric(t, pf, "primary", name, 0)
	}

	// Without the secret, /metrics is refused.
	out, err := exec.Command("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", p.URL()+"/metrics").CombinedOutput()
	if err != nil || string(out) != "401" {
		t.Fatalf("curl /metrics without the secret: %v %s", err, out)
	}

	// The primary goes away: the replica says it is disconnected and
	// counts its reconnection attempts.
	p.Stop()
	waitUntil(t, 30*time.Second, "the replica to see the primary gone", func() bool {
		f := scrape(t, r)
		c, _ := metricValue(f, "litefs_primary_connected")
		rc, _ := metricValue(f, "litefs_stream_reconnects_total")
		return c == 0 && rc >= 1
	})
}

// TestMetrics_Public serves /metrics without the secret when
// http.public-metrics is set; the other endpoints still need it.
func TestMetrics_Public(t *testing.T) {
	p := NewNodeWith(t, NodeConfig{Name: "primary", Secret: "x"})
	p.WriteConfig(strings.Replace(readFile(t, p.ConfigPath), "  secret:", "  public-metrics: true\n  secret:", 1))
	p.Start()
	for path, want := range map[string]string{"/metrics": "200", "/info": "401"} {
		out, err := exec.Command("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", p.URL()+path).CombinedOutput()
		if err != nil || string(out) != want {
			t.Fatalf("curl %s without the secret: %v %s, want %s", path, err, out, want)
		}
	}
}
