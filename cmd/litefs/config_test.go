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
		{"PromoteStatic", "{base}lease:\n  promote: true\n", "lease.promote"},
		{"TLSCertWithoutKey", "{base}http:\n  tls:\n    cert: /c.crt\n", "http.tls"},
		{"TLSMutualWithoutCA", "{base}http:\n  tls:\n    cert: /c.crt\n    key: /c.key\n    mutual: true\n", "http.tls.mutual"},
		{"TLSPlainAdvertiseURL", "{consul}  consul:\n    url: http://c:8500\nhttp:\n  tls:\n    cert: /c.crt\n    key: /c.key\n", "https://"},
		{"TLSMissingFile", "{base}http:\n  tls:\n    cert: /nonexistent.crt\n    key: /nonexistent.key\n", "/nonexistent"},
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
