package replica

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/litefs-project/litefs/ltx"
)

// Metrics are the node's Prometheus metrics. Gauges are read from the
// store when scraped; counters and histograms are updated where things
// happen. A nil *Metrics records nothing.
type Metrics struct {
	commits         *prometheus.CounterVec
	commitDuration  prometheus.Histogram
	applyDuration   prometheus.Histogram
	replicationLag  prometheus.Histogram
	handoffDuration prometheus.Histogram
	handoffWindow   prometheus.Histogram
	fenced          prometheus.Counter
	demotions       prometheus.Counter
	reconnects      prometheus.Counter
	snapshotsSent   prometheus.Counter
	movedAside      prometheus.Counter
	fuseRequests    *prometheus.CounterVec
	proxyRequests   *prometheus.CounterVec
	syncTimeouts    prometheus.Counter
	syncAsync       prometheus.Gauge
}

// latencyBuckets run from 100µs to about 13s.
var latencyBuckets = prometheus.ExponentialBuckets(0.0001, 2, 18)

// NewMetrics registers the node's metrics with reg: those read from store
// and server when scraped, and the ones the store, its databases, the
// stream and the role update. Set it as Store.Metrics before Store.Open.
func NewMetrics(reg prometheus.Registerer, store *Store, server *Server) *Metrics {
	h := func(name, help string) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, Buckets: latencyBuckets})
	}
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := &Metrics{
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "litefs_db_commit_count",
			Help: "Transactions committed on this node as primary, per database."}, []string{"db"}),
		commitDuration: h("litefs_commit_duration_seconds", "Time to turn a SQLite commit into a durable LTX file, on the primary."),
		applyDuration:  h("litefs_apply_duration_seconds", "Time to apply received LTX files to a replica's database (one batch)."),
		replicationLag: h("litefs_replication_lag_seconds", "Time from a transaction's commit on the primary to its apply on this replica (clocks of both nodes)."),
		handoffDuration: h("litefs_handoff_duration_seconds",
			"Time a handoff from this node took, from its start until the new primary was seen."),
		handoffWindow: h("litefs_handoff_writes_refused_seconds", "Time writes were refused during a handoff from this node."),
		fenced:        c("litefs_fenced_commits_total", "Commits refused because the primary lease was not renewed in time."),
		demotions:     c("litefs_demotions_total", "Times this node stepped down from primary to replica."),
		reconnects:    c("litefs_stream_reconnects_total", "Times this replica's stream to the primary ended and was retried."),
		snapshotsSent: c("litefs_snapshots_sent_total", "Snapshots this node sent to replicas as primary."),
		movedAside:    c("litefs_databases_moved_aside_total", "Databases moved aside into data.dir/aside."),
		fuseRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "litefs_fuse_requests_total",
			Help: "FUSE requests the mount served, by kind (Write, Fsync, Getattr, ...)."}, []string{"kind"}),
		proxyRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "litefs_proxy_requests_total",
			Help: "Requests the HTTP proxy served, by route (read, write, passthrough, health) and outcome (a refusal's code, else the status class)."},
			[]string{"route", "outcome"}),
		syncTimeouts: c("litefs_sync_timeouts_total",
			"Commits that too few candidates acknowledged within lease.sync-timeout (failed, or fell back to asynchronous replication)."),
		syncAsync: prometheus.NewGauge(prometheus.GaugeOpts{Name: "litefs_sync_async",
			Help: "1 while a primary with lease.sync-replicas has fallen back to asynchronous replication (lease.sync-fallback: async), else 0."}),
	}
	reg.MustRegister(m.commits, m.commitDuration, m.applyDuration, m.replicationLag, m.handoffDuration,
		m.handoffWindow, m.fenced, m.demotions, m.reconnects, m.snapshotsSent, m.movedAside, m.fuseRequests, m.proxyRequests,
		m.syncTimeouts, m.syncAsync,
		&storeCollector{store: store, server: server})
	return m
}

// FUSERequest counts a request the mount served.
func (m *Metrics) FUSERequest(kind string) {
	if m != nil {
		m.fuseRequests.WithLabelValues(kind).Inc()
	}
}

// ProxyRequest counts a request the HTTP proxy served.
func (m *Metrics) ProxyRequest(route, outcome string) {
	if m != nil {
		m.proxyRequests.WithLabelValues(route, outcome).Inc()
	}
}

func (m *Metrics) committed(db string, d time.Duration) {
	if m != nil {
		m.commits.WithLabelValues(db).Inc()
		m.commitDuration.Observe(d.Seconds())
	}
}

func (m *Metrics) applied(hdrs []ltx.Header, d time.Duration) {
	if m == nil {
		return
	}
	m.applyDuration.Observe(d.Seconds())
	now := time.Now()
	for _, hdr := range hdrs {
		if !hdr.IsSnapshot() && hdr.Timestamp > 0 {
			m.replicationLag.Observe(max(0, now.Sub(time.UnixMilli(hdr.Timestamp)).Seconds()))
		}
	}
}

func (m *Metrics) handedOff(d, window time.Duration) {
	if m != nil {
		m.handoffDuration.Observe(d.Seconds())
		m.handoffWindow.Observe(window.Seconds())
	}
}

func (m *Metrics) inc(c func(*Metrics) prometheus.Counter) {
	if m != nil {
		c(m).Inc()
	}
}

func (m *Metrics) fencedCommit() { m.inc(func(m *Metrics) prometheus.Counter { return m.fenced }) }
func (m *Metrics) demoted()      { m.inc(func(m *Metrics) prometheus.Counter { return m.demotions }) }
func (m *Metrics) snapshotSent() {
	m.inc(func(m *Metrics) prometheus.Counter { return m.snapshotsSent })
}
func (m *Metrics) syncTimedOut() {
	m.inc(func(m *Metrics) prometheus.Counter { return m.syncTimeouts })
}

func (m *Metrics) syncMode(async bool) {
	if m == nil {
		return
	}
	if async {
		m.syncAsync.Set(1)
	} else {
		m.syncAsync.Set(0)
	}
}
func (m *Metrics) reconnected()   { m.inc(func(m *Metrics) prometheus.Counter { return m.reconnects }) }
func (m *Metrics) movedAsideOne() { m.inc(func(m *Metrics) prometheus.Counter { return m.movedAside }) }

// storeCollector reads the gauges from the store when scraped.
type storeCollector struct {
	store  *Store
	server *Server
}

var (
	descTXID        = prometheus.NewDesc("litefs_db_txid", "The database's position: its last TXID.", []string{"db"}, nil)
	descDBLag       = prometheus.NewDesc("litefs_db_lag_seconds", "How long this replica has been behind the primary's last reported position of the database; 0 when caught up and on the primary.", []string{"db"}, nil)
	descLTXCount    = prometheus.NewDesc("litefs_db_ltx_count", "LTX files in the database's log.", []string{"db"}, nil)
	descLTXBytes    = prometheus.NewDesc("litefs_db_ltx_bytes", "Bytes of LTX files in the database's log.", []string{"db"}, nil)
	descLag         = prometheus.NewDesc("litefs_lag_seconds", "How long this replica has been behind the primary's last reported positions; 0 when caught up and on the primary.", nil, nil)
	descIsPrimary   = prometheus.NewDesc("litefs_is_primary", "1 on the primary, 0 on a replica.", nil, nil)
	descSubscribers = prometheus.NewDesc("litefs_subscriber_count", "Replicas streaming from this node.", nil, nil)
	descConnected   = prometheus.NewDesc("litefs_primary_connected", "1 while this replica's stream to the primary is up (1 on the primary).", nil, nil)
)

func (c *storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTXID, descDBLag, descLTXCount, descLTXBytes, descLag, descIsPrimary, descSubscribers, descConnected} {
		ch <- d
	}
}

func (c *storeCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.store.Primary()
	lag := c.store.Lag()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, db := range c.store.DBs() {
		pos := db.Pos()
		gauge(descTXID, float64(pos.TXID), db.Name())
		dbLag := 0.0
		if want, ok := p.Positions[db.Name()]; ok && pos.TXID < want.TXID {
			dbLag = lag.Seconds()
		}
		gauge(descDBLag, dbLag, db.Name())
		var n int
		var size int64
		for _, f := range db.Log().Files() {
			n++
			size += f.Size
		}
		gauge(descLTXCount, float64(n), db.Name())
		gauge(descLTXBytes, float64(size), db.Name())
	}
	gauge(descLag, lag.Seconds())
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	gauge(descIsPrimary, b(p.Self))
	gauge(descConnected, b(p.Self || p.Connected))
	subs := 0
	if c.server != nil {
		subs = len(c.server.Replicas())
	}
	gauge(descSubscribers, float64(subs))
}
