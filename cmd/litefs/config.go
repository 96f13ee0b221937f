package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/litefs-project/litefs/lease"
	"github.com/litefs-project/litefs/proxy"
	"github.com/litefs-project/litefs/replica"
)

// DefaultHTTPAddr is the API address, as LiteFS has it.
const DefaultHTTPAddr = ":20202"

// Config is the litefs.yml file. Keys follow LiteFS's.
type Config struct {
	Exec        ExecConfig  `yaml:"exec"`
	ExitOnError bool        `yaml:"exit-on-error"`
	Data        DataConfig  `yaml:"data"`
	FUSE        FUSEConfig  `yaml:"fuse"`
	HTTP        HTTPConfig  `yaml:"http"`
	Lease       LeaseConfig `yaml:"lease"`
	Log         LogConfig   `yaml:"log"`
	Proxy       ProxyConfig `yaml:"proxy"`
}

// ProxyConfig is the HTTP proxy in front of the application (LiteFS's
// keys, plus advertise-url). The proxy runs when the section sets any of
// addr, target or db.
type ProxyConfig struct {
	Addr   string     `yaml:"addr"`
	Target string     `yaml:"target"`
	DB     StringList `yaml:"db"`
	// AdvertiseURL is this proxy's URL as other nodes reach it; the
	// primary sends it to replicas so that they forward writes to it.
	// Default: lease.advertise-url's host with addr's port.
	AdvertiseURL           string        `yaml:"advertise-url"`
	MaxLag                 time.Duration `yaml:"max-lag"`
	Debug                  bool          `yaml:"debug"`
	Passthrough            []string      `yaml:"passthrough"`
	AlwaysForward          []string      `yaml:"always-forward"`
	PrimaryRedirectTimeout time.Duration `yaml:"primary-redirect-timeout"`
	// ReadYourWritesTimeout bounds how long a read carrying a position
	// waits for this node to reach it, and a forwarded write for this
	// node to reach the position the primary returned (LiteFS has no key
	// for it; its wait is a fixed 5s). Zero: no wait.
	ReadYourWritesTimeout time.Duration `yaml:"read-your-writes-timeout"`
	// Forward is how a replica sends writes to the primary: "proxy"
	// (forwarded by this proxy) or "fly-replay" (a fly-replay header for
	// Fly.io's edge, as LiteFS does).
	Forward           string        `yaml:"forward"`
	ReadTimeout       time.Duration `yaml:"read-timeout"`
	ReadHeaderTimeout time.Duration `yaml:"read-header-timeout"`
	WriteTimeout      time.Duration `yaml:"write-timeout"`
	IdleTimeout       time.Duration `yaml:"idle-timeout"`
}

// Enabled reports whether the config asks for a proxy.
func (p *ProxyConfig) Enabled() bool { return p.Addr != "" || p.Target != "" || len(p.DB) > 0 }

// StringList is a YAML string or list of strings.
type StringList []string

// UnmarshalYAML accepts a string or a list of strings.
func (l *StringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		var s string
		if err := n.Decode(&s); err != nil {
			return err
		}
		*l = StringList{s}
		return nil
	}
	var a []string
	if err := n.Decode(&a); err != nil {
		return err
	}
	*l = a
	return nil
}

// DataConfig is the data directory: databases and their LTX files.
type DataConfig struct {
	Dir                      string        `yaml:"dir"`
	Retention                time.Duration `yaml:"retention"`
	RetentionMonitorInterval time.Duration `yaml:"retention-monitor-interval"`
}

// FUSEConfig is the mount.
type FUSEConfig struct {
	Dir        string `yaml:"dir"`
	AllowOther bool   `yaml:"allow-other"`
	Debug      bool   `yaml:"debug"`
}

// HTTPConfig is the node's API server.
type HTTPConfig struct {
	Addr string `yaml:"addr"`
	// Secret is the cluster secret: every node sends it to the others'
	// APIs and requires it on its own (typically "${LITEFS_SECRET}").
	Secret string `yaml:"secret"`
	// PublicMetrics serves GET /metrics without the secret.
	PublicMetrics bool `yaml:"public-metrics"`
	// TLS serves the API and the stream over TLS, and verifies peers.
	TLS TLSConfig `yaml:"tls"`
}

// TLSConfig is http.tls: PEM files.
type TLSConfig struct {
	Cert   string `yaml:"cert"`   // this node's certificate
	Key    string `yaml:"key"`    // its key
	CA     string `yaml:"ca"`     // the CA other nodes' certificates are verified against
	Mutual bool   `yaml:"mutual"` // require client certificates signed by ca
}

// Files returns the TLS files for replica.
func (t TLSConfig) Files() replica.TLSFiles {
	return replica.TLSFiles{Cert: t.Cert, Key: t.Key, CA: t.CA, Mutual: t.Mutual}
}

// LeaseConfig decides the primary.
type LeaseConfig struct {
	Type         string `yaml:"type"`
	Candidate    bool   `yaml:"candidate"`
	Hostname     string `yaml:"hostname"`
	AdvertiseURL string `yaml:"advertise-url"`
	// Promote asks the primary to hand off to this candidate once it has
	// caught up (rolling deploys).
	Promote bool         `yaml:"promote"`
	Consul  ConsulConfig `yaml:"consul"`
	// HandoffTimeout bounds how long a handoff waits for the target to
	// catch up before it releases the lease to any candidate.
	HandoffTimeout time.Duration `yaml:"handoff-timeout"`
	// SyncReplicas is how many candidates must hold a transaction
	// durably before its COMMIT returns on the primary; 0 (the default)
	// replicates asynchronously.
	SyncReplicas int `yaml:"sync-replicas"`
	// SyncTimeout bounds how long a COMMIT waits for them.
	SyncTimeout time.Duration `yaml:"sync-timeout"`
	// SyncFallback is what happens when they do not acknowledge in time:
	// "fail" (the COMMIT fails) or "async" (the primary goes on
	// asynchronously until a candidate catches up).
	SyncFallback string `yaml:"sync-fallback"`
	// Candidates is how many candidates the cluster has, this one
	// included; with sync-replicas k, an election waits for the positions
	// of max(k, candidates-1-k) other candidates, so that it always sees
	// one holding every acknowledged transaction. 0: at most 2k+1.
	Candidates int `yaml:"candidates"`
}

// ConsulConfig is the Consul lease.
type ConsulConfig struct {
	URL       string        `yaml:"url"`
	Key       string        `yaml:"key"`
	TTL       time.Duration `yaml:"ttl"`
	LockDelay time.Duration `yaml:"lock-delay"`
}

// LogConfig is the log output.
type LogConfig struct {
	Format string `yaml:"format"`
	Debug  bool   `yaml:"debug"`
}

// ExecConfig is the command started once the mount is ready. The YAML may
// be a string (run through sh -c) or a list of {cmd: "..."} entries, run in
// order, the last one kept running.
type ExecConfig []ExecCmd

// ExecCmd is one command.
type ExecCmd struct {
	Cmd string `yaml:"cmd"`
}

// UnmarshalYAML accepts a string or a list of commands.
func (e *ExecConfig) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		var s string
		if err := n.Decode(&s); err != nil {
			return err
		}
		*e = ExecConfig{{Cmd: s}}
		return nil
	}
	var a []ExecCmd
	if err := n.Decode(&a); err != nil {
		return err
	}
	*e = a
	return nil
}

// NewConfig returns a config with defaults.
func NewConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Data: DataConfig{Retention: replica.DefaultRetention, RetentionMonitorInterval: replica.DefaultRetentionInterval},
		HTTP: HTTPConfig{Addr: DefaultHTTPAddr},
		Lease: LeaseConfig{Type: "static", Candidate: true, Hostname: host, HandoffTimeout: replica.DefaultHandoffTimeout,
			SyncTimeout: replica.DefaultSyncTimeout, SyncFallback: replica.SyncFallbackFail,
			Consul: ConsulConfig{Key: lease.DefaultConsulKey, TTL: lease.DefaultConsulTTL, LockDelay: lease.DefaultConsulLockDelay}},
		Log: LogConfig{Format: "text"},
		Proxy: ProxyConfig{MaxLag: proxy.DefaultMaxLag, PrimaryRedirectTimeout: proxy.DefaultPrimaryRedirectTimeout,
			ReadYourWritesTimeout: proxy.DefaultWaitTimeout, Forward: string(proxy.ForwardProxy),
			ReadHeaderTimeout: proxy.DefaultReadHeaderTimeout, IdleTimeout: proxy.DefaultIdleTimeout},
	}
}

// ReadConfigFile reads path into a config with defaults, expanding ${VAR}
// references from the environment. Unknown keys are errors.
func ReadConfigFile(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, err
	}
	return ParseConfig(b)
}

// ParseConfig parses YAML into a config with defaults.
func ParseConfig(b []byte) (Config, error) {
	c := NewConfig()
	b = []byte(os.ExpandEnv(string(b)))
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, fmt.Errorf("parse config: %w", err)
	}
	return c, nil
}

// Validate checks the config, naming the key at fault.
func (c *Config) Validate() error {
	if c.FUSE.Dir == "" {
		return errors.New("fuse.dir: required (the directory to mount the databases at)")
	}
	if c.Data.Dir == "" {
		return errors.New("data.dir: required (the directory that holds the databases and their LTX files)")
	}
	fuseDir, err := filepath.Abs(c.FUSE.Dir)
	if err != nil {
		return fmt.Errorf("fuse.dir: %w", err)
	}
	dataDir, err := filepath.Abs(c.Data.Dir)
	if err != nil {
		return fmt.Errorf("data.dir: %w", err)
	}
	c.FUSE.Dir, c.Data.Dir = fuseDir, dataDir
	if within(fuseDir, dataDir) {
		return fmt.Errorf("fuse.dir: %s must not be data.dir or inside it (%s)", fuseDir, dataDir)
	}
	if within(dataDir, fuseDir) {
		return fmt.Errorf("data.dir: %s must not be inside fuse.dir (%s)", dataDir, fuseDir)
	}
	if c.Data.Retention <= 0 {
		return fmt.Errorf("data.retention: must be positive, got %s", c.Data.Retention)
	}
	if c.Data.RetentionMonitorInterval <= 0 {
		return fmt.Errorf("data.retention-monitor-interval: must be positive, got %s", c.Data.RetentionMonitorInterval)
	}
	switch c.Lease.Type {
	case "static":
		if !c.Lease.Candidate && c.Lease.AdvertiseURL == "" {
			return errors.New("lease.advertise-url: required on a node that is not a candidate (the primary's API URL)")
		}
		if c.Lease.Promote {
			return errors.New("lease.promote: needs lease.type consul (a static lease has a fixed primary)")
		}
		if c.Lease.SyncReplicas != 0 {
			return errors.New("lease.sync-replicas: needs lease.type consul (a static lease has no other candidate to acknowledge commits)")
		}
	case "consul":
		if err := c.Lease.validateConsul(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("lease.type: must be static or consul, got %q", c.Lease.Type)
	}
	if err := c.Lease.validateSync(); err != nil {
		return err
	}
	if err := c.HTTP.TLS.validate(c.Lease.AdvertiseURL); err != nil {
		return err
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		return fmt.Errorf("log.format: must be text or json, got %q", c.Log.Format)
	}
	for i, e := range c.Exec {
		if strings.TrimSpace(e.Cmd) == "" {
			return fmt.Errorf("exec[%d].cmd: empty command", i)
		}
	}
	if c.Proxy.Enabled() {
		return c.Proxy.validate()
	}
	return nil
}

func (p *ProxyConfig) validate() error {
	if p.Addr == "" {
		return errors.New(`proxy.addr: required (the address the proxy listens on, e.g. ":8080")`)
	}
	if _, _, err := net.SplitHostPort(p.Addr); err != nil {
		return fmt.Errorf("proxy.addr: %q: %w", p.Addr, err)
	}
	if p.Target == "" {
		return errors.New(`proxy.target: required (the application's host:port, e.g. "localhost:8081")`)
	}
	if host, port, err := net.SplitHostPort(p.Target); err != nil || host == "" || port == "" || strings.Contains(p.Target, "/") {
		return fmt.Errorf("proxy.target: %q: must be host:port, e.g. localhost:8081", p.Target)
	}
	if len(p.DB) == 0 {
		return errors.New("proxy.db: required (the database, or list of databases, whose position the proxy tracks)")
	}
	seen := make(map[string]bool)
	for _, name := range p.DB {
		if err := replica.ValidateName(name); err != nil {
			return fmt.Errorf("proxy.db: %w", err)
		}
		if seen[name] {
			return fmt.Errorf("proxy.db: %q listed twice", name)
		}
		seen[name] = true
	}
	if p.AdvertiseURL != "" {
		if u, err := url.Parse(p.AdvertiseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("proxy.advertise-url: %q: must be an http(s) URL such as http://node1:8080", p.AdvertiseURL)
		}
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{{"max-lag", p.MaxLag}, {"primary-redirect-timeout", p.PrimaryRedirectTimeout},
		{"read-your-writes-timeout", p.ReadYourWritesTimeout}, {"read-timeout", p.ReadTimeout},
		{"read-header-timeout", p.ReadHeaderTimeout}, {"write-timeout", p.WriteTimeout}, {"idle-timeout", p.IdleTimeout}} {
		if d.v < 0 {
			return fmt.Errorf("proxy.%s: must not be negative, got %s", d.key, d.v)
		}
	}
	if _, err := proxy.ParseForwardMode(p.Forward); err != nil {
		return fmt.Errorf("proxy.forward: %w", err)
	}
	for i, pat := range p.Passthrough {
		if err := proxy.ValidatePattern(pat); err != nil {
			return fmt.Errorf("proxy.passthrough[%d]: %w", i, err)
		}
	}
	for i, pat := range p.AlwaysForward {
		if err := proxy.ValidatePattern(pat); err != nil {
			return fmt.Errorf("proxy.always-forward[%d]: %w", i, err)
		}
	}
	return nil
}

func (l *LeaseConfig) validateSync() error {
	switch {
	case l.SyncReplicas < 0:
		return fmt.Errorf("lease.sync-replicas: must be 0 (asynchronous) or more, got %d", l.SyncReplicas)
	case l.SyncTimeout <= 0:
		return fmt.Errorf("lease.sync-timeout: must be positive, got %s", l.SyncTimeout)
	case l.SyncFallback != replica.SyncFallbackFail && l.SyncFallback != replica.SyncFallbackAsync:
		return fmt.Errorf("lease.sync-fallback: must be fail or async, got %q", l.SyncFallback)
	case l.Candidates < 0:
		return fmt.Errorf("lease.candidates: must be 0 (at most 2 x sync-replicas + 1) or the number of candidate nodes, got %d", l.Candidates)
	case l.SyncReplicas > 0 && l.Candidates > 0 && l.Candidates < l.SyncReplicas+1:
		// The primary and k other candidates must exist for a commit to
		// be acknowledged at all.
		return fmt.Errorf("lease.candidates: %d candidates cannot acknowledge commits with lease.sync-replicas %d: a commit needs the primary and %d other candidates",
			l.Candidates, l.SyncReplicas, l.SyncReplicas)
	}
	return nil
}

// proxyAdvertiseURL returns the URL other nodes reach this node's proxy
// at: proxy.advertise-url, else lease.advertise-url's host (else the
// proxy's own host, else this machine's hostname) with proxy.addr's port.
func (c *Config) proxyAdvertiseURL() string {
	if c.Proxy.AdvertiseURL != "" {
		return strings.TrimRight(c.Proxy.AdvertiseURL, "/")
	}
	host, port, _ := net.SplitHostPort(c.Proxy.Addr)
	if u, err := url.Parse(c.Lease.AdvertiseURL); err == nil && u.Hostname() != "" && (c.Lease.Candidate || c.Lease.Type == "consul") {
		host = u.Hostname()
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host, _ = os.Hostname()
	}
	return "http://" + net.JoinHostPort(host, port)
}

func (l *LeaseConfig) validateConsul() error {
	switch {
	case l.Consul.URL == "":
		return errors.New("lease.consul.url: required with lease.type consul (the Consul agent's HTTP address, e.g. http://127.0.0.1:8500)")
	case l.Consul.Key == "":
		return errors.New("lease.consul.key: must not be empty")
	case l.Consul.TTL < time.Second:
		return fmt.Errorf("lease.consul.ttl: must be at least 1s, got %s", l.Consul.TTL)
	case l.Consul.LockDelay < 0:
		return fmt.Errorf("lease.consul.lock-delay: must not be negative, got %s", l.Consul.LockDelay)
	case l.Hostname == "":
		return errors.New("lease.hostname: required with lease.type consul (this node's name in the cluster)")
	case l.AdvertiseURL == "":
		return errors.New("lease.advertise-url: required with lease.type consul (this node's API URL, as other nodes reach it)")
	case l.Promote && !l.Candidate:
		return errors.New("lease.promote: a node that is not a candidate cannot be promoted")
	case l.HandoffTimeout <= 0:
		return fmt.Errorf("lease.handoff-timeout: must be positive, got %s", l.HandoffTimeout)
	}
	if _, err := url.Parse(l.AdvertiseURL); err != nil {
		return fmt.Errorf("lease.advertise-url: %w", err)
	}
	return nil
}

func (t TLSConfig) validate(advertiseURL string) error {
	switch {
	case (t.Cert == "") != (t.Key == ""):
		return errors.New("http.tls: cert and key go together: set both to serve TLS, or neither")
	case t.Mutual && (t.CA == "" || t.Cert == ""):
		return errors.New("http.tls.mutual: needs http.tls.ca (the CA that signs every node's certificate) and this node's cert and key")
	case t.Cert != "" && strings.HasPrefix(advertiseURL, "http://"):
		return fmt.Errorf("lease.advertise-url: %s is plain http, but http.tls serves https: use https://", advertiseURL)
	}
	for key, path := range map[string]string{"cert": t.Cert, "key": t.Key, "ca": t.CA} {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("http.tls.%s: %w", key, err)
		}
	}
	return nil
}

// within reports whether path is dir or inside it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && (rel == "." || (rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))))
}
