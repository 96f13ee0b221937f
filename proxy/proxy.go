// Package proxy is the HTTP proxy in front of the application on every
// node: reads are served by the local app, writes reach the primary's app
// (forwarded by this proxy to the primary's proxy on a replica), responses
// to writes carry the position after them so that a client reads its own
// writes anywhere, and /litefs/health tells a load balancer whether the
// node may serve. See docs/proxy.md.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/litefs-project/litefs/replica"
)

// Defaults, as LiteFS has them where it has them.
const (
	DefaultMaxLag                 = 10 * time.Second
	DefaultPrimaryRedirectTimeout = 5 * time.Second
	DefaultWaitTimeout            = 5 * time.Second
	DefaultCookieExpiry           = 5 * time.Minute
	DefaultReadHeaderTimeout      = 10 * time.Second
	DefaultIdleTimeout            = 30 * time.Second
)

// ForwardMode is how a replica gets a request that needs the primary
// (a write) to it.
type ForwardMode string

const (
	// ForwardProxy: the replica's proxy forwards it to the primary's
	// proxy itself (the default; works on any network).
	ForwardProxy ForwardMode = "proxy"
	// ForwardFlyReplay: the replica answers with a fly-replay header
	// naming the primary's hostname, for Fly.io's edge proxy to replay
	// the request there (LiteFS's behaviour; only behind Fly.io).
	ForwardFlyReplay ForwardMode = "fly-replay"
)

// ParseForwardMode returns the mode named s.
func ParseForwardMode(s string) (ForwardMode, error) {
	switch m := ForwardMode(s); m {
	case ForwardProxy, ForwardFlyReplay:
		return m, nil
	}
	return "", fmt.Errorf("must be %q or %q, got %q", ForwardProxy, ForwardFlyReplay, s)
}

// Names the proxy puts on the wire.
const (
	// CookieName carries the position after a client's last write: the
	// TXID of each tracked database, 16 hex digits, joined by "-" in the
	// order of DBs (with one database, exactly LiteFS's cookie).
	CookieName = "__txid"
	// HeaderTXID carries the same value on the response to a write, for
	// clients without cookies.
	HeaderTXID = "Litefs-Txid"
	// HeaderForwardedBy names each proxy that forwarded a request to
	// another node's proxy; it bounds forwarding chains.
	HeaderForwardedBy = "Litefs-Forwarded-By"
	// HeaderError names why the proxy refused a request.
	HeaderError = "Litefs-Error"
	// HealthPath answers whether the node may serve.
	HealthPath = "/litefs/health"
	// HeaderFlyReplay asks Fly.io's edge proxy to replay the request on
	// another instance (ForwardFlyReplay): "instance=<primary hostname>".
	HeaderFlyReplay = "Fly-Replay"
)

// maxHops bounds how many proxies may forward one request: a replica to
// the primary it knew, which may have just handed off and forward it
// once more.
const maxHops = 3

// downGrace is how long a write waits on a primary known to be down (its
// connection refused or reset, its stream silent) for the role to change
// before it is refused: a handoff's new primary usually shows up within
// it, a dead one never does, and the refusal still comes in under a
// second.
const downGrace = 500 * time.Millisecond

// Server is the proxy of one node.
type Server struct {
	// Store is the node's store: its role, the primary, the positions.
	Store *replica.Store
	// Node is this node's hostname, for logs and HeaderForwardedBy.
	Node string
	// Addr is the address to listen on (proxy.addr).
	Addr string
	// Target is the application's host:port (proxy.target).
	Target string
	// DBs are the databases whose positions the proxy tracks (proxy.db).
	DBs []string
	// MaxLag is the replication lag past which health fails; zero: no limit.
	MaxLag time.Duration
	// PrimaryRedirectTimeout bounds how long a write waits for a primary
	// to be reachable.
	PrimaryRedirectTimeout time.Duration
	// WaitTimeout bounds how long a read waits for this node to reach the
	// position in its cookie, and a forwarded write for this node to
	// reach the position the primary returned.
	WaitTimeout time.Duration
	// CookieExpiry is the lifetime of the position cookie.
	CookieExpiry time.Duration
	// ForwardMode is how a replica sends a write to the primary; empty
	// means ForwardProxy.
	ForwardMode ForwardMode
	// Passthrough and AlwaysForward are path patterns ("*" matches any
	// run of characters, "/" included): the first go straight to the
	// local app, the second are GETs treated as writes.
	Passthrough, AlwaysForward []string
	// Debug logs every routing decision.
	Debug bool
	// OnRequest, if set, is told of every request served: its route
	// (read, write, passthrough, health) and its outcome (the refusal's
	// code, else the status class: 2xx, 3xx, 4xx, 5xx).
	OnRequest func(route, outcome string)
	// Server timeouts; zero: none.
	ReadTimeout, ReadHeaderTimeout, WriteTimeout, IdleTimeout time.Duration
	Logger                                                    *slog.Logger

	stopping atomic.Bool // the node is stopping (see Stopping)

	ln      net.Listener
	srv     *http.Server
	local   *httputil.ReverseProxy
	forward *httputil.ReverseProxy
	buffers *bufferPool
	done    chan struct{}
}

// NewServer returns a proxy in front of the app at target with defaults.
func NewServer(store *replica.Store, addr, target string, dbs []string) *Server {
	return &Server{
		Store: store, Addr: addr, Target: target, DBs: dbs,
		MaxLag:                 DefaultMaxLag,
		PrimaryRedirectTimeout: DefaultPrimaryRedirectTimeout,
		WaitTimeout:            DefaultWaitTimeout,
		CookieExpiry:           DefaultCookieExpiry,
		ReadHeaderTimeout:      DefaultReadHeaderTimeout,
		IdleTimeout:            DefaultIdleTimeout,
		Logger:                 store.Logger,
	}
}

// Open starts listening and serving at once; requests that need what the
// node does not have yet (a synced database, a primary) wait or are
// refused as documented, never met by a refused connection.
func (s *Server) Open() error {
	if len(s.DBs) == 0 {
		return errors.New("proxy: no database to track")
	}
	if _, _, err := net.SplitHostPort(s.Target); err != nil {
		return fmt.Errorf("proxy: target %q: %w", s.Target, err)
	}
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		return fmt.Errorf("proxy: listen on %s: %w", s.Addr, err)
	}
	s.ln = ln
	s.buffers = &bufferPool{}
	s.local = s.newLocal()
	s.forward = s.newForward()
	s.srv = &http.Server{
		Handler:     s,
		ReadTimeout: s.ReadTimeout, ReadHeaderTimeout: s.ReadHeaderTimeout,
		WriteTimeout: s.WriteTimeout, IdleTimeout: s.IdleTimeout,
		ErrorLog: slog.NewLogLogger(s.Logger.Handler(), slog.LevelDebug),
	}
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.Logger.Error("proxy server", slog.Any(replica.LogKeyError, err))
		}
	}()
	return nil
}

// ListenAddr returns the address the proxy listens on, once open.
func (s *Server) ListenAddr() net.Addr { return s.ln.Addr() }

// Close stops the proxy: it stops accepting connections, and requests in
// flight get PrimaryRedirectTimeout and a second more to finish (a write
// held for a new primary is then forwarded to it); what still runs then
// (event streams, upgraded connections) is cut. Safe to call twice.
func (s *Server) Close() error {
	if s.srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.PrimaryRedirectTimeout+time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = s.srv.Close()
	}
	<-s.done
	s.srv = nil
	return err
}

// Stopping tells the proxy that the node is stopping: from then on, a
// write the local app cannot take because it exited first (it got the
// signal) waits for the handoff and goes to the next primary instead of
// failing with 502.
func (s *Server) Stopping() { s.stopping.Store(true) }

// ServeHTTP routes one request: health, passthrough, read or write.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var route string
	if s.OnRequest != nil {
		rec := &statusRecorder{ResponseWriter: w}
		w = rec
		defer func() { s.OnRequest(route, rec.outcome()) }()
	}
	read := r.Method == http.MethodGet || r.Method == http.MethodHead
	switch {
	case read && r.URL.Path == HealthPath:
		route = "health"
		s.serveHealth(w, r)
	case matchAny(s.Passthrough, r.URL.Path):
		route = "passthrough"
		s.debug(r, "passthrough: served by the local app")
		s.serveLocal(w, r, modePassthrough)
	case read && !matchAny(s.AlwaysForward, r.URL.Path):
		route = "read"
		s.serveRead(w, r)
	default:
		route = "write"
		s.serveWrite(w, r)
	}
}

// statusRecorder notes the status of an answer, for OnRequest. Unwrap
// lets the reverse proxy flush and hijack (server-sent events, WebSocket)
// through it.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusRecorder) outcome() string {
	if code := w.Header().Get(HeaderError); code != "" {
		return code
	}
	if w.Header().Get(HeaderFlyReplay) != "" {
		return "fly-replay"
	}
	switch {
	case w.status == 0:
		return "none" // the client went away first
	case w.status == http.StatusSwitchingProtocols:
		return "upgraded"
	}
	return fmt.Sprintf("%dxx", w.status/100)
}

// serveRead serves a read locally once this node has the client's last
// write; the primary serves it when this node cannot catch up in time or
// has never synced.
func (s *Server) serveRead(w http.ResponseWriter, r *http.Request) {
	st := s.Store.Primary()
	want, ok := s.cookiePositions(r)
	if st.Self {
		s.debug(r, "read on the primary")
		mode := modeRead
		if ok && !s.reached(want) {
			mode = modeStaleCookie // from another history: cleared
		}
		s.serveLocal(w, r, mode)
		return
	}
	if !st.Synced && st.Connected {
		s.debug(r, "read on a replica that has not synced yet: forwarded to the primary")
		s.serveOnPrimary(w, r, "this replica has not synced with the primary yet")
		return
	}
	if ok && !s.waitFor(r.Context(), want) {
		if r.Context().Err() != nil {
			return
		}
		s.debug(r, "read: this replica did not reach the client's position in time: forwarded to the primary", slog.String("want", formatTXIDs(want)))
		s.serveOnPrimary(w, r, fmt.Sprintf("this replica did not reach the client's position %s within %s", formatTXIDs(want), s.WaitTimeout))
		return
	}
	s.debug(r, "read on a replica: served locally")
	s.serveLocal(w, r, modeRead)
}

// serveWrite serves a write on the primary, or forwards it there.
func (s *Server) serveWrite(w http.ResponseWriter, r *http.Request) {
	s.serveOnPrimary(w, r, "")
}

// refusal is why a request that needs the primary could not reach it.
type refusal struct {
	status  int
	code    string
	primary string // who was tried
	reason  string
}

// serveOnPrimary gets a request served by the primary's app: locally on
// the primary, else forwarded to the primary's proxy. While no primary is
// reachable it waits, up to PrimaryRedirectTimeout (half a second for a
// primary known to be down), for the role to change, then refuses with 503.
// why says why a read needs the primary ("" for a write).
func (s *Server) serveOnPrimary(w http.ResponseWriter, r *http.Request, why string) {
	start := time.Now()
	deadline := start.Add(s.PrimaryRedirectTimeout)
	var downSince time.Time
	body, err := newRetryBody(r)
	if err != nil {
		return // the client went away while sending it
	}
	hops := forwardedBy(r)
	for {
		changed := s.Store.RoleChanged()
		st := s.Store.Primary()
		var down error // why the primary is known to be unreachable now
		held := s.Store.CheckWrite()
		switch {
		case st.Self && held != nil:
			// Handing off or stepping down: the write waits for the
			// next primary rather than fail in the app.
			s.debug(r, "write on a primary that stopped taking writes: held", slog.Any("why", held))
		case st.Self:
			s.debug(r, "write on the primary: served by the local app")
			body.rewind(r)
			err := s.serveLocalWrite(w, r, body)
			if err == nil {
				return
			}
			s.Logger.Info("proxy: the local app could not take a write as this node stops being the primary; holding it for the next primary",
				slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Any(replica.LogKeyError, err))
			held = err
		case st.Connected && s.ForwardMode == ForwardFlyReplay:
			s.replay(w, r, st, why)
			return
		case len(hops) >= maxHops:
			s.refuse(w, r, refusal{http.StatusServiceUnavailable, "too-many-hops", describe(st),
				fmt.Sprintf("the request was forwarded by %s and this node is not the primary either", strings.Join(hops, ", "))}, why)
			return
		case st.Connected && st.ProxyURL == "":
			s.refuse(w, r, refusal{http.StatusServiceUnavailable, "primary-has-no-proxy", describe(st),
				"the primary runs no proxy (no proxy section in its config), so writes cannot be forwarded to it"}, why)
			return
		case st.Connected:
			body.rewind(r)
			err := s.serveForwarded(w, r, st)
			if err == nil {
				return
			}
			down = err // not sent: the primary's proxy could not be reached
		case isDown(st.Err):
			down = st.Err
		}
		now := time.Now()
		limit := deadline
		if down != nil {
			if downSince.IsZero() {
				downSince = now
			}
			limit = minTime(deadline, downSince.Add(downGrace))
		} else {
			downSince = time.Time{}
		}
		if !now.Before(limit) {
			reason := "no primary reachable within proxy.primary-redirect-timeout (" + s.PrimaryRedirectTimeout.String() + ")"
			switch {
			case down != nil:
				reason = "the primary is down: " + down.Error()
			case st.Self && errors.Is(held, errAppGone):
				s.refuse(w, r, refusal{http.StatusBadGateway, "target-unreachable", "-",
					fmt.Sprintf("the application at %s (proxy.target) did not answer, and no other primary appeared as this node stops: %v", s.Target, held)}, why)
				return
			case st.Self:
				reason += ": this node stopped taking writes (" + held.Error() + ") and no other primary appeared"
			case st.URL == "":
				reason += ": the lease names no primary"
			case st.Err != nil:
				reason += ": " + st.Err.Error()
			default:
				reason += ": not connected to it"
			}
			s.refuse(w, r, refusal{http.StatusServiceUnavailable, "no-primary", describe(st), reason}, why)
			return
		}
		timer := time.NewTimer(limit.Sub(now))
		select {
		case <-changed:
		case <-timer.C:
		case <-r.Context().Done():
			timer.Stop()
			return
		}
		timer.Stop()
	}
}

// replay answers a request that needs the primary with a fly-replay
// header naming it, for Fly.io's edge proxy to send it there. Without
// that proxy in front, the client sees 421 Misdirected Request: the
// request was not served.
func (s *Server) replay(w http.ResponseWriter, r *http.Request, st replica.PrimaryStatus, why string) {
	s.debug(r, "answered with fly-replay", slog.String("primary", st.Hostname))
	h := w.Header()
	h.Set(HeaderFlyReplay, "instance="+st.Hostname)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusMisdirectedRequest)
	what := "write"
	if why != "" {
		what = "read (" + why + ")"
	}
	fmt.Fprintf(w, "litefs proxy on %s: %s %s %s is for the primary %s: replay it there (%s: instance=%s)\n",
		s.nodeName(), what, r.Method, r.URL.Path, st.Hostname, HeaderFlyReplay, st.Hostname)
}

// describe names the primary a node knows of, for refusals.
func describe(st replica.PrimaryStatus) string {
	switch {
	case st.Self:
		return "this node"
	case st.Hostname != "" && st.ProxyURL != "":
		return fmt.Sprintf("%s (proxy %s)", st.Hostname, st.ProxyURL)
	case st.Hostname != "":
		return st.Hostname
	case st.URL != "":
		return "the primary at " + st.URL
	}
	return "none (the lease names no primary)"
}

// refuse answers a request the proxy could not get served, and logs why
// once.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, ref refusal, why string) {
	what := "write"
	if why != "" {
		what = "read (" + why + ")"
	}
	msg := fmt.Sprintf("litefs proxy on %s: %s %s %s refused: %s; primary tried: %s", s.nodeName(), what, r.Method, r.URL.Path, ref.reason, ref.primary)
	s.Logger.Warn("proxy: request refused", slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.Int("status", ref.status), slog.String("code", ref.code), slog.String("primary", ref.primary), slog.String("reason", ref.reason))
	h := w.Header()
	h.Set(HeaderError, ref.code)
	if ref.status == http.StatusServiceUnavailable {
		h.Set("Retry-After", "1")
	}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(ref.status)
	fmt.Fprintln(w, msg)
}

func (s *Server) nodeName() string {
	if s.Node == "" {
		return "this node"
	}
	return s.Node
}

// forwardedBy returns the proxies that forwarded r.
func forwardedBy(r *http.Request) []string {
	var a []string
	for _, v := range r.Header.Values(HeaderForwardedBy) {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				a = append(a, p)
			}
		}
	}
	return a
}

// serveHealth answers 200 on the primary and on a connected replica that
// synced at least once and lags by at most MaxLag; 503 and why otherwise.
func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	ok, reason := s.Health()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "unhealthy: %s\n", reason)
		return
	}
	fmt.Fprintf(w, "OK\n%s\n", reason)
}

// Health reports whether the node may serve, and why or why not.
func (s *Server) Health() (bool, string) {
	st := s.Store.Primary()
	switch {
	case st.Self:
		return true, "this node is the primary"
	case !st.Connected:
		reason := "not connected to the primary"
		if st.URL != "" {
			reason += " at " + st.URL
		} else {
			reason += ": the lease names none"
		}
		if st.Err != nil {
			reason += ": " + st.Err.Error()
		}
		return false, reason
	case !st.Synced:
		return false, "connected to the primary " + st.Hostname + " but not synced with it yet"
	}
	lag := s.Store.Lag()
	if s.MaxLag > 0 && lag > s.MaxLag {
		return false, fmt.Sprintf("replication lag %s exceeds proxy.max-lag %s", lag.Round(time.Millisecond), s.MaxLag)
	}
	return true, fmt.Sprintf("replica of %s, lag %s", st.Hostname, lag.Round(time.Millisecond))
}

func (s *Server) debug(r *http.Request, msg string, attrs ...any) {
	if !s.Debug {
		return
	}
	s.Logger.Info("proxy: "+msg, append([]any{slog.String("method", r.Method), slog.String("path", r.URL.Path)}, attrs...)...)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// targetURL returns the app's URL.
func (s *Server) targetURL() *url.URL { return &url.URL{Scheme: "http", Host: s.Target} }
