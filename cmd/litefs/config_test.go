package main

import (
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/replica"
)

func TestParseConfig(t *testing.T) {
	t.Setenv("LITEFS_TEST_DIR", "/var/lib/x")
	c, err := ParseConfig([]byte(`
fuse:
  dir: /litefs
  allow-other: true
data:
  dir: ${LITEFS_TEST_DIR}
  retention: 1m
exec: "myapp serve"
exit-on-error: true
http:
  addr: ":1234"
lease:
  type: static
  candidate: true
  hostname: primary-1
  advertise-url: http://primary-1:20202
log:
  format: json
  debug: true
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Data.Dir != "/var/lib/x" || c.Data.Retention != time.Minute || !c.FUSE.AllowOther ||
		len(c.Exec) != 1 || c.Exec[0].Cmd != "myapp serve" || c.HTTP.Addr != ":1234" ||
		c.Lease.Hostname != "primary-1" || c.Log.Format != "json" || !c.Log.Debug || !c.ExitOnError {
		t.Fatalf("parsed %+v", c)
	}

	t.Run("Defaults", func(t *testing.T) {
		c, err := ParseConfig([]byte("fuse:\n  dir: /litefs\ndata:\n  dir: /data\n"))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		if c.HTTP.Addr != DefaultHTTPAddr || c.Lease.Type != "static" || !c.Lease.Candidate || c.Data.Retention <= 0 || c.Log.Format != "text" {
			t.Fatalf("defaults %+v", c)
		}
	})
	t.Run("Consul", func(t *testing.T) {
		c, err := ParseConfig([]byte(`
fuse:
  dir: /litefs
data:
  dir: /data
lease:
  type: consul
  hostname: node-a
  advertise-url: http://node-a:20202
  promote: true
  consul:
    url: http://127.0.0.1:8500
    ttl: 5s
`))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		l := c.Lease
		if l.Consul.URL != "http://127.0.0.1:8500" || l.Consul.Key != "litefs/primary" || l.Consul.TTL != 5*time.Second ||
			l.Consul.LockDelay != time.Second || !l.Promote || !l.Candidate || l.HandoffTimeout != replica.DefaultHandoffTimeout {
			t.Fatalf("lease %+v", l)
		}
	})
	t.Run("ExecList", func(t *testing.T) {
		c, err := ParseConfig([]byte("exec:\n  - cmd: migrate\n  - cmd: serve\n"))
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Exec) != 2 || c.Exec[1].Cmd != "serve" {
			t.Fatalf("exec %+v", c.Exec)
		}
	})
}

func TestParseConfig_Proxy(t *testing.T) {
	base := "fuse:\n  dir: /a\ndata:\n  dir: /d\nlease:\n  advertise-url: http://node1:20202\n"
	t.Run("Defaults", func(t *testing.T) {
		c, err := ParseConfig([]byte(base + "proxy:\n  addr: \":8080\"\n  target: localhost:8081\n  db: app.db\n"))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		p := c.Proxy
		if !p.Enabled() || len(p.DB) != 1 || p.DB[0] != "app.db" || p.MaxLag != 10*time.Second || p.PrimaryRedirectTimeout != 5*time.Second ||
			p.ReadHeaderTimeout != 10*time.Second || p.IdleTimeout != 30*time.Second || p.ReadTimeout != 0 || p.WriteTimeout != 0 ||
			p.ReadYourWritesTimeout != 5*time.Second || p.Forward != "proxy" {
			t.Fatalf("proxy %+v", p)
		}
		if got := c.proxyAdvertiseURL(); got != "http://node1:8080" {
			t.Fatalf("advertise URL %q", got)
		}
	})
	t.Run("Full", func(t *testing.T) {
		c, err := ParseConfig([]byte(base + `proxy:
  addr: 127.0.0.2:9090
  target: localhost:8081
  db: [app.db, other.db]
  advertise-url: http://public:80/
  max-lag: 2s
  debug: true
  passthrough: ["*.png", "/static/*"]
  always-forward: ["/login"]
  primary-redirect-timeout: 1s
  read-timeout: 1m
  read-header-timeout: 2s
  write-timeout: 3m
  idle-timeout: 4s
  read-your-writes-timeout: 750ms
  forward: fly-replay
`))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		p := c.Proxy
		if len(p.DB) != 2 || p.DB[1] != "other.db" || p.MaxLag != 2*time.Second || !p.Debug || len(p.Passthrough) != 2 ||
			p.AlwaysForward[0] != "/login" || p.PrimaryRedirectTimeout != time.Second || p.ReadTimeout != time.Minute ||
			p.ReadHeaderTimeout != 2*time.Second || p.WriteTimeout != 3*time.Minute || p.IdleTimeout != 4*time.Second ||
			p.ReadYourWritesTimeout != 750*time.Millisecond || p.Forward != "fly-replay" {
			t.Fatalf("proxy %+v", p)
		}
		if got := c.proxyAdvertiseURL(); got != "http://public:80" {
			t.Fatalf("advertise URL %q", got)
		}
	})
	t.Run("Disabled", func(t *testing.T) {
		c, err := ParseConfig([]byte(base))
		if err != nil {
			t.Fatal(err)
		}
		if c.Proxy.Enabled() {
			t.Fatal("proxy enabled without a proxy section")
		}
	})
}

func TestConfig_Validate(t *testing.T) {
	for _, tt := range []struct {
		name, yaml, key string
	}{
		{"UnknownKey", "fuse:\n  dir: /a\n  dri: /b\ndata:\n  dir: /d\n", "dri"},
		{"UnknownTopLevel", "fuse:\n  dir: /a\ndata:\n  dir: /d\nbogus: 1\n", "bogus"},
		{"MissingFUSEDir", "data:\n  dir: /d\n", "fuse.dir"},
		{"MissingDataDir", "fuse:\n  dir: /a\n", "data.dir"},
		{"FUSEDirIsDataDir", "fuse:\n  dir: /d\ndata:\n  dir: /d\n", "fuse.dir"},
		{"FUSEDirInsideDataDir", "fuse:\n  dir: /d/mnt\ndata:\n  dir: /d\n", "fuse.dir"},
		{"DataDirInsideFUSEDir", "fuse:\n  dir: /m\ndata:\n  dir: /m/data\n", "data.dir"},
		{"BadLeaseType", "fuse:\n  dir: /a\ndata:\n  dir: /d\nlease:\n  type: etcd\n", "lease.type"},
		{"ReplicaWithoutPrimaryURL", "fuse:\n  dir: /a\ndata:\n  dir: /d\nlease:\n  candidate: false\n", "lease.advertise-url"},
		{"BadLogFormat", "fuse:\n  dir: /a\ndata:\n  dir: /d\nlog:\n  format: xml\n", "log.format"},
		{"BadRetention", "fuse:\n  dir: /a\ndata:\n  dir: /d\n  retention: -1s\n", "data.retention"},
		{"NotYAML", "fuse: [", "parse config"},
		{"ConsulWithoutURL", "{consul}", "lease.consul.url"},
		{"ConsulShortTTL", "{consul}  consul:\n    url: http://c:8500\n    ttl: 100ms\n", "lease.consul.ttl"},
		{"ConsulNegativeLockDelay", "{consul}  consul:\n    url: http://c:8500\n    lock-delay: -1s\n", "lease.consul.lock-delay"},
		{"ConsulWithoutAdvertiseURL", "{base}lease:\n  type: consul\n  hostname: a\n  consul:\n    url: http://c:8500\n", "lease.advertise-url"},
		{"ConsulUnknownKey", "{consul}  consul:\n    url: http://c:8500\n    tll: 5s\n", "tll"},
		{"PromoteNotCandidate", "{consul}  candidate: false\n  promote: true\n  consul:\n    url: http://c:8500\n", "lease.promote"},
		{"SyncReplicasStatic", "{base}lease:\n  sync-replicas: 1\n", "lease.sync-replicas"},
		{"SyncReplicasNegative", "{consul}  sync-replicas: -1\n  consul:\n    url: http://c:8500\n", "lease.sync-replicas"},
		{"SyncTimeoutZero", "{consul}  sync-replicas: 1\n  sync-timeout: 0s\n  consul:\n    url: http://c:8500\n", "lease.sync-timeout"},
		{"SyncFallbackBad", "{consul}  sync-replicas: 1\n  sync-fallback: wait\n  consul:\n    url: http://c:8500\n", "lease.sync-fallback"},
		{"CandidatesNegative", "{consul}  sync-replicas: 1\n  candidates: -1\n  consul:\n    url: http://c:8500\n", "lease.candidates"},
		{"CandidatesTooFew", "{consul}  sync-replicas: 2\n  candidates: 2\n  consul:\n    url: http://c:8500\n", "lease.candidates"},
		{"PromoteStatic", "{base}lease:\n  promote: true\n", "lease.promote"},
		{"TLSCertWithoutKey", "{base}http:\n  tls:\n    cert: /c.crt\n", "http.tls"},
		{"TLSMutualWithoutCA", "{base}http:\n  tls:\n    cert: /c.crt\n    key: /c.key\n    mutual: true\n", "http.tls.mutual"},
		{"TLSPlainAdvertiseURL", "{consul}  consul:\n    url: http://c:8500\nhttp:\n  tls:\n    cert: /c.crt\n    key: /c.key\n", "https://"},
		{"TLSMissingFile", "{base}http:\n  tls:\n    cert: /nonexistent.crt\n    key: /nonexistent.key\n", "/nonexistent"},
		{"ProxyWithoutAddr", "{base}proxy:\n  target: localhost:8081\n  db: app.db\n", "proxy.addr"},
		{"ProxyWithoutTarget", "{base}proxy:\n  addr: :8080\n  db: app.db\n", "proxy.target"},
		{"ProxyBadTarget", "{base}proxy:\n  addr: :8080\n  target: http://app\n  db: app.db\n", "proxy.target"},
		{"ProxyWithoutDB", "{base}proxy:\n  addr: :8080\n  target: localhost:8081\n", "proxy.db"},
		{"ProxyBadDB", "{base}proxy:\n  addr: :8080\n  target: localhost:8081\n  db: [app.db, x-wal]\n", "proxy.db"},
		{"ProxyNegativeMaxLag", "{base}proxy:\n  addr: :8080\n  target: localhost:8081\n  db: a\n  max-lag: -1s\n", "proxy.max-lag"},
		{"ProxyNegativeReadYourWritesTimeout", "{base}proxy:\n  addr: :8080\n  target: localhost:8081\n  db: a\n  read-your-writes-timeout: -2s\n", "proxy.read-your-writes-timeout"},
		{"ProxyBadForward", "{base}proxy:\n  addr: :8080\n  target: localhost:8081\n  db: a\n  forward: redirect\n", "proxy.forward"},
		{"ProxyBadPattern", "{base}proxy:\n  addr: :8080\n  target: localhost:8081\n  db: a\n  passthrough: [\"x\"]\n", "proxy.passthrough[0]"},
		{"ProxyBadAdvertiseURL", "{base}proxy:\n  addr: :8080\n  target: localhost:8081\n  db: a\n  advertise-url: node1:8080\n", "proxy.advertise-url"},
		{"ProxyUnknownKey", "{base}proxy:\n  addr: :8080\n  targt: localhost:8081\n", "targt"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(strings.NewReplacer("{base}", "fuse:\n  dir: /a\ndata:\n  dir: /d\n", "{consul}", "fuse:\n  dir: /a\ndata:\n  dir: /d\nlease:\n  type: consul\n  hostname: a\n  advertise-url: http://a:1\n").Replace(tt.yaml)))
			if err == nil {
				err = c.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tt.key) {
				t.Fatalf("got %v, want an error naming %q", err, tt.key)
			}
		})
	}
}

func TestWithin(t *testing.T) {
	for _, tt := range []struct {
		path, dir string
		want      bool
	}{
		{"/a", "/a", true},
		{"/a/b", "/a", true},
		{"/ab", "/a", false},
		{"/", "/a", false},
		{"/a/..b", "/a", true},
	} {
		if got := within(tt.path, tt.dir); got != tt.want {
			t.Errorf("within(%q, %q) = %v, want %v", tt.path, tt.dir, got, tt.want)
		}
	}
}
