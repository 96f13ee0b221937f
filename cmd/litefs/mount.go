package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/litefs-project/litefs/fuse"
	"github.com/litefs-project/litefs/lease"
	"github.com/litefs-project/litefs/proxy"
	"github.com/litefs-project/litefs/replica"
)

// MountCommand is `litefs mount`.
type MountCommand struct {
	ConfigPath string
	Config     Config
	// Signals delivers SIGINT/SIGTERM; nil means none.
	Signals <-chan os.Signal
	// Stderr receives logs; defaults to os.Stderr.
	Stderr io.Writer

	Logger *slog.Logger
	Store  *replica.Store
	FS     *fuse.FS
	Leaser lease.Leaser
	Role   *replica.Role
	HTTP   *http.Server
	Server *replica.Server
	Proxy  *proxy.Server

	stopRole func()
}

// NewMountCommand returns a mount command with defaults.
func NewMountCommand() *MountCommand {
	return &MountCommand{Config: NewConfig(), Stderr: os.Stderr}
}

// ParseFlags reads the flags and the config file.
func (c *MountCommand) ParseFlags(args []string) error {
	fs := flag.NewFlagSet("litefs-mount", flag.ContinueOnError)
	fs.StringVar(&c.ConfigPath, "config", "", "config file path")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	path := c.ConfigPath
	if path == "" {
		for _, p := range []string{"litefs.yml", "/etc/litefs.yml"} {
			if _, err := os.Stat(p); err == nil {
				path = p
				break
			}
		}
		if path == "" {
			return errors.New("no config file: pass -config PATH, or put litefs.yml in the current directory or /etc")
		}
	}
	cfg, err := ReadConfigFile(path)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	c.ConfigPath, c.Config = path, cfg
	return nil
}

func (c *MountCommand) newLogger() *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if c.Config.Log.Debug {
		opts.Level = slog.LevelDebug
	}
	if c.Config.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(c.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(c.Stderr, opts))
}

// Run opens the store, mounts it, serves the API and runs the node's role
// on the lease, then waits for a signal, the exec'd command's exit, or ctx.
func (c *MountCommand) Run(ctx context.Context) error {
	c.Logger = c.newLogger().With(slog.String(replica.LogKeyNode, c.Config.Lease.Hostname))
	c.Leaser = c.newLeaser()
	c.Store = replica.NewStore(c.Config.Data.Dir)
	c.Store.Retention = c.Config.Data.Retention
	c.Store.RetentionInterval = c.Config.Data.RetentionMonitorInterval
	c.Store.Logger = c.Logger
	c.Store.SyncReplicas, c.Store.SyncTimeout, c.Store.SyncFallback =
		c.Config.Lease.SyncReplicas, c.Config.Lease.SyncTimeout, c.Config.Lease.SyncFallback
	c.Store.SetPrimary(false)
	fatal := make(chan error, 1)
	if c.Config.ExitOnError {
		c.Store.OnError = func(db string, err error) {
			select {
			case fatal <- fmt.Errorf("database %q: %w (exit-on-error is set)", db, err):
			default:
			}
		}
	}
	c.FS = fuse.NewFS(c.Config.FUSE.Dir, c.Store)
	c.FS.AllowOther = c.Config.FUSE.AllowOther
	c.FS.Logger = c.Logger
	if spec := os.Getenv(failpointEnv); spec != "" {
		hook, err := parseFailpoint(spec, c.Logger)
		if err != nil {
			return err
		}
		c.FS.Failpoint = hook
	}
	if dir := os.Getenv(syncShadowEnv); dir != "" {
		hook, err := syncShadow(c.Config.Data.Dir, dir, c.Logger)
		if err != nil {
			return err
		}
		replica.SetSyncHook(hook)
	}
	c.Server = replica.NewServer(c.Store, c.Config.Lease.Hostname)
	c.Server.Secret = c.Config.HTTP.Secret
	c.Server.Gate = c.FS
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	c.Store.Metrics = replica.NewMetrics(reg, c.Store, c.Server)
	c.FS.OnRequest = c.Store.Metrics.FUSERequest
	c.Server.Metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	if c.Config.HTTP.PublicMetrics {
		c.Server.Public = func(r *http.Request) bool { return r.URL.Path == "/metrics" }
	}
	api, err := replica.NewClientWith(c.Config.HTTP.Secret, c.Config.HTTP.TLS.Files())
	if err != nil {
		return err
	}
	if c.Config.Proxy.Enabled() {
		// The proxy listens at once: until this node knows its role and
		// has synced, requests wait or are refused with a reason, never
		// met by a refused connection.
		if err := c.openProxy(); err != nil {
			return err
		}
	}
	cluster := &replica.NetCluster{Store: c.Store, Gate: c.FS, Server: c.Server, API: api, Self: c.Leaser.Self(), Logger: c.Logger}
	c.Role = replica.NewRole(c.Leaser, c.Store, c.FS, cluster)
	c.Role.Promote, c.Role.HandoffTimeout = c.Config.Lease.Promote, c.Config.Lease.HandoffTimeout
	c.Role.SyncReplicas, c.Role.Candidates = c.Config.Lease.SyncReplicas, c.Config.Lease.Candidates
	c.Server.Handoff = c.Role.Handoff

	// A node whose lease never expires and is its own (the static
	// primary) is the primary from the start: it opens its databases as
	// the primary and the kernel may skip opens.
	var tlsConfig *tls.Config
	if files := c.Config.HTTP.TLS.Files(); files.Enabled() {
		if tlsConfig, err = files.ServerConfig(); err != nil {
			return err
		}
	}
	primary, err := c.Role.Begin(ctx)
	if err != nil {
		return fmt.Errorf("acquire lease: %w", err)
	}
	c.FS.NoOpen = primary
	if err := c.Store.Open(); err != nil {
		return fmt.Errorf("open data directory %s: %w%s", c.Config.Data.Dir, err, remedy(err))
	}
	if err := c.FS.Mount(); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.Config.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("http.addr: listen on %s: %w", c.Config.HTTP.Addr, err)
	}
	if c.Config.HTTP.Secret == "" && !isLoopback(ln.Addr()) {
		c.Logger.Warn("the node API listens beyond this host without a cluster secret: anyone who can reach it can read every database (POST /stream) and hand the lease off. Set http.secret (e.g. \"${LITEFS_SECRET}\") to the same value on every node",
			slog.String("http.addr", ln.Addr().String()))
	}
	c.HTTP = &http.Server{Handler: c.Server.Handler(), ReadHeaderTimeout: 10 * time.Second, TLSConfig: tlsConfig,
		ErrorLog: slog.NewLogLogger(c.Logger.Handler(), slog.LevelWarn)}
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	go func() {
		if err := c.HTTP.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.Logger.Error("http server", slog.Any(replica.LogKeyError, err))
		}
	}()

	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Role.Run(rctx) }()
	c.stopRole = func() { cancel(); <-done }

	attrs := []any{slog.String("fuse.dir", c.Config.FUSE.Dir), slog.String("data.dir", c.Config.Data.Dir), slog.String("http.addr", ln.Addr().String())}
	switch {
	case primary:
		c.Logger.Info("mounted; this node is the primary (static lease)", attrs...)
	case c.Leaser.Type() == "static":
		c.Logger.Info("mounted; this node is a replica (static lease), following the primary",
			append(attrs, slog.String("primary", c.Config.Lease.AdvertiseURL))...)
	default:
		c.Logger.Info("mounted; electing or following a primary through Consul",
			append(attrs, slog.String("consul", c.Config.Lease.Consul.URL), slog.String("key", c.Config.Lease.Consul.Key),
				slog.Bool("candidate", c.Config.Lease.Candidate))...)
	}
	return c.wait(ctx, fatal)
}

// isLoopback reports whether addr is a loopback address only.
func isLoopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// openProxy starts the HTTP proxy and has the API advertise it to
// replicas (in the stream's hello) for when this node is the primary.
func (c *MountCommand) openProxy() error {
	cfg := c.Config.Proxy
	p := proxy.NewServer(c.Store, cfg.Addr, cfg.Target, cfg.DB)
	p.Node, p.Logger, p.Debug = c.Config.Lease.Hostname, c.Logger, cfg.Debug
	p.OnRequest = c.Store.Metrics.ProxyRequest
	p.MaxLag, p.PrimaryRedirectTimeout, p.WaitTimeout = cfg.MaxLag, cfg.PrimaryRedirectTimeout, cfg.ReadYourWritesTimeout
	p.ForwardMode = proxy.ForwardMode(cfg.Forward)
	p.Passthrough, p.AlwaysForward = cfg.Passthrough, cfg.AlwaysForward
	p.ReadTimeout, p.ReadHeaderTimeout, p.WriteTimeout, p.IdleTimeout = cfg.ReadTimeout, cfg.ReadHeaderTimeout, cfg.WriteTimeout, cfg.IdleTimeout
	if err := p.Open(); err != nil {
		return fmt.Errorf("proxy.addr: %w", err)
	}
	c.Proxy = p
	c.Server.ProxyURL = c.Config.proxyAdvertiseURL()
	c.Server.ProxyHealth = p.Health
	c.Logger.Info("proxy listening", slog.String("proxy.addr", p.ListenAddr().String()), slog.String("target", cfg.Target),
		slog.Any("db", []string(cfg.DB)), slog.String("advertise_url", c.Server.ProxyURL))
	return nil
}

// proxyStopping tells the proxy, if any, that the node is stopping.
func (c *MountCommand) proxyStopping() {
	if c.Proxy != nil {
		c.Proxy.Stopping()
	}
}

// newLeaser returns the configured lease.
func (c *MountCommand) newLeaser() lease.Leaser {
	cfg := c.Config.Lease
	if cfg.Type == "consul" {
		l := lease.NewConsul(cfg.Consul.URL)
		l.Key, l.TTL, l.LockDelay = cfg.Consul.Key, cfg.Consul.TTL, cfg.Consul.LockDelay
		l.Candidate, l.Hostname, l.AdvertiseURL = cfg.Candidate, cfg.Hostname, cfg.AdvertiseURL
		return l
	}
	return &lease.Static{Candidate: cfg.Candidate, Hostname: cfg.Hostname, AdvertiseURL: cfg.AdvertiseURL}
}

// wait runs the exec'd command, or waits for a signal, a fatal error or ctx.
func (c *MountCommand) wait(ctx context.Context, fatal <-chan error) error {
	if len(c.Config.Exec) == 0 {
		select {
		case <-ctx.Done():
		case err := <-fatal:
			return err
		case sig := <-c.Signals:
			c.Logger.Info("signal received; unmounting", slog.String("signal", sig.String()))
			c.proxyStopping()
		}
		return nil
	}
	return c.runExec(ctx, fatal)
}

// execCommand returns the command for an exec entry: run directly when it
// is words without shell syntax (as LiteFS does), so that signals reach
// the program itself and its exit status is its own; through sh -c
// otherwise.
func execCommand(ctx context.Context, line string) *exec.Cmd {
	if !strings.ContainsAny(line, "|&;<>()$`\\\"'*?[]#~=%{}!\n") {
		if f := strings.Fields(line); len(f) > 0 {
			return exec.CommandContext(ctx, f[0], f[1:]...)
		}
	}
	return exec.CommandContext(ctx, "sh", "-c", line)
}

// remedy says what an operator can do about a store that will not open.
func remedy(err error) string {
	if errors.Is(err, replica.ErrChecksumMismatch) {
		return "\nthe database file does not match its transaction log; nothing was changed. " +
			"Move the database's directory out of data.dir/dbs to keep it aside and restart; then load the copy you trust with sqlite3 MOUNT/DB \".restore FILE\" (a replica needs nothing: it moves the database aside and takes a snapshot by itself)"
	}
	if errors.Is(err, replica.ErrCorruptLTX) {
		return "\nan LTX file is damaged; nothing was changed. Move the named file (or the database's directory) " +
			"out of the data directory and restart, then load the database you trust with sqlite3 MOUNT/DB \".restore FILE\" if needed"
	}
	return ""
}

// runExec runs the configured commands in order; the last keeps running
// and receives forwarded signals. Its exit ends litefs with its code.
func (c *MountCommand) runExec(ctx context.Context, fatal <-chan error) error {
	for i, e := range c.Config.Exec {
		cmd := execCommand(ctx, e.Cmd)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		// Its own process group: signals go to the command and to every
		// process it started (a shell's children too).
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		c.Logger.Info("starting exec command", slog.String("cmd", e.Cmd))
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("exec %q: %w", e.Cmd, err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var err error
	wait:
		for {
			select {
			case sig := <-c.Signals:
				c.Logger.Info("forwarding signal to exec command", slog.String("signal", sig.String()))
				c.proxyStopping()
				if s, ok := sig.(syscall.Signal); ok {
					_ = syscall.Kill(-cmd.Process.Pid, s)
				} else {
					_ = cmd.Process.Signal(sig)
				}
			case err = <-done:
				break wait
			case ferr := <-fatal:
				c.Logger.Error("stopping the exec command", slog.Any(replica.LogKeyError, ferr))
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
				<-done
				return ferr
			}
		}
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			code := exitErr.ExitCode()
			if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
			c.Logger.Info("exec command exited; unmounting", slog.String("cmd", e.Cmd), slog.Int("code", code))
			return &ExitError{Code: code}
		} else if err != nil {
			return fmt.Errorf("exec %q: %w", e.Cmd, err)
		}
		if i == len(c.Config.Exec)-1 {
			c.Logger.Info("exec command exited; unmounting", slog.String("cmd", e.Cmd), slog.Int("code", 0))
		}
	}
	return nil
}

// Close hands the lease off, unmounts and closes the store. Safe to call
// twice.
func (c *MountCommand) Close() error {
	var first error
	if c.stopRole != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*c.Config.Lease.HandoffTimeout+5*time.Second)
		c.Role.Stop(ctx)
		cancel()
		// The proxy drains while the role still runs: writes it held
		// during the handoff follow this node to the new primary.
		if c.Proxy != nil {
			_ = c.Proxy.Close()
			c.Proxy = nil
		}
		c.stopRole()
		c.stopRole = nil
		c.Role.Close()
	}
	if c.Proxy != nil {
		_ = c.Proxy.Close()
		c.Proxy = nil
	}
	if c.HTTP != nil {
		_ = c.HTTP.Close()
	}
	if c.FS != nil {
		if err := c.FS.Unmount(); err != nil {
			first = fmt.Errorf("unmount %s: %w", c.Config.FUSE.Dir, err)
		}
	}
	if c.Store != nil {
		if err := c.Store.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
