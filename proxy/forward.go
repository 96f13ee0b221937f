package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/litefs-project/litefs/replica"
)

// mode is how the local app's answer is treated.
type mode int

const (
	modeRead        mode = iota // nothing added
	modeWrite                   // on the primary: the position after it
	modePassthrough             // nothing added, nothing waited for
	modeStaleCookie             // a read whose cookie names a position this primary never had: cleared
)

// reqState travels with a request through a ReverseProxy.
type reqState struct {
	mode   mode
	target *url.URL // the primary's proxy, when forwarding
	// retry is set by a forward that failed before anything was sent
	// (the primary's proxy could not be reached), or by a write the app
	// failed because this node stepped down meanwhile: the request may go
	// to another primary.
	retry error
	// replayable says the request's body is kept and may be sent again.
	replayable bool
	// roleChanged is the store's role notification when it was sent.
	roleChanged <-chan struct{}
	// committed is every database's position when it was sent: a write
	// is sent again only if no commit happened on this node meanwhile,
	// so one that committed before the app failed it is never applied
	// twice.
	committed string
}

// errSteppedDown marks a write the app failed while this node stopped
// being the primary.
var errSteppedDown = errors.New("the app failed the write while this node stepped down")

// errAppGone marks a write the app could not take because the node is
// stopping and the app exited first.
var errAppGone = errors.New("the application exited as this node stops")

type stateKey struct{}

func stateOf(r *http.Request) *reqState {
	if st, ok := r.Context().Value(stateKey{}).(*reqState); ok {
		return st
	}
	return &reqState{}
}

func withState(r *http.Request, st *reqState) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), stateKey{}, st))
}

// maxRetryBody is the largest request body the proxy keeps in memory so
// that a write the app failed because this node stepped down can be sent
// to the next primary. Larger or chunked bodies stream, without that retry.
const maxRetryBody = 1 << 20

// retryBody is a request's body as the proxy sends it, possibly more
// than once.
type retryBody struct {
	buf  []byte // the whole body, if kept; nil: streamed once
	keep bool
	body *untouchedBody
}

// newRetryBody reads a small body of known length into memory.
func newRetryBody(r *http.Request) (*retryBody, error) {
	b := &retryBody{}
	if r.Body == nil || r.Body == http.NoBody {
		b.keep = true // nothing to send again
		return b, nil
	}
	if r.ContentLength >= 0 && r.ContentLength <= maxRetryBody {
		buf, err := io.ReadAll(io.LimitReader(r.Body, maxRetryBody+1))
		if err != nil {
			return nil, err
		}
		if buf == nil {
			buf = []byte{}
		}
		b.buf, b.keep = buf, true
		return b, nil
	}
	b.body = &untouchedBody{ReadCloser: r.Body}
	r.Body = b.body
	return b, nil
}

// rewind gives r a body to send from the start, when it was kept.
func (b *retryBody) rewind(r *http.Request) {
	if b.buf != nil {
		b.body = &untouchedBody{ReadCloser: io.NopCloser(bytes.NewReader(b.buf))}
		r.Body = b.body
	}
}

// untouchedBody is a request body that tells whether anything was read
// from it, and survives a transport closing it: a forward that failed
// before reading it can be sent again.
type untouchedBody struct {
	io.ReadCloser
	touched bool
}

func (b *untouchedBody) Read(p []byte) (int, error) {
	b.touched = true
	return b.ReadCloser.Read(p)
}

// Close does nothing: the server closes the request body itself.
func (b *untouchedBody) Close() error { return nil }

func bodyTouched(r *http.Request) bool {
	b, ok := r.Body.(*untouchedBody)
	return ok && b.touched
}

// newTransport returns the transport of a reverse proxy: connections kept
// alive for up to 128 requests in flight per host (Go's default keeps 2,
// so concurrent requests would open new connections), and bodies passed
// as they are (no gzip added and undone on the way).
func newTransport() *http.Transport {
	return &http.Transport{
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
}

// bufferPool lends the reverse proxies the buffers they copy bodies
// through, rather than allocating 32 KiB for each request.
type bufferPool struct{ pool sync.Pool }

func (p *bufferPool) Get() []byte {
	if b, ok := p.pool.Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 32<<10)
}

func (p *bufferPool) Put(b []byte) { p.pool.Put(&b) }

// rewrite points a request at target, keeping the client's Host header
// and adding the X-Forwarded headers. A request forwarded by another node's
// proxy keeps the X-Forwarded-Host and -Proto that proxy set.
func rewrite(pr *httputil.ProxyRequest, target *url.URL) {
	pr.SetURL(target)
	pr.Out.Host = pr.In.Host
	pr.Out.Header["X-Forwarded-For"] = pr.In.Header["X-Forwarded-For"]
	pr.SetXForwarded()
	if len(forwardedBy(pr.In)) > 0 {
		for _, h := range []string{"X-Forwarded-Host", "X-Forwarded-Proto"} {
			if v := pr.In.Header.Get(h); v != "" {
				pr.Out.Header.Set(h, v)
			}
		}
	}
}

// newLocal returns the reverse proxy to the local app. Event streams
// (text/event-stream, or no Content-Length) are flushed as they come;
// upgrades (WebSocket) are spliced both ways.
func (s *Server) newLocal() *httputil.ReverseProxy {
	target := s.targetURL()
	return &httputil.ReverseProxy{
		Rewrite:    func(pr *httputil.ProxyRequest) { rewrite(pr, target) },
		Transport:  newTransport(),
		BufferPool: s.buffers,
		ErrorLog:   slog.NewLogLogger(s.Logger.Handler(), slog.LevelDebug),
		ModifyResponse: func(resp *http.Response) error {
			st := stateOf(resp.Request)
			switch st.mode {
			case modeWrite:
				if resp.StatusCode >= 500 && st.replayable && s.steppedDown(st.roleChanged) && s.allPositions() == st.committed {
					return errSteppedDown
				}
				v := formatTXIDs(s.positions())
				resp.Header.Set(HeaderTXID, v)
				resp.Header.Add("Set-Cookie", (&http.Cookie{Name: CookieName, Value: v, Path: "/",
					Expires: time.Now().Add(s.CookieExpiry), HttpOnly: true, SameSite: http.SameSiteLaxMode}).String())
			case modeStaleCookie:
				resp.Header.Add("Set-Cookie", (&http.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true}).String())
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return // the client went away
			}
			st := stateOf(r)
			if errors.Is(err, errSteppedDown) {
				st.retry = err // answered nothing: the next primary gets it
				return
			}
			if st.mode == modeWrite && st.replayable && s.stopping.Load() && isDialError(err) {
				// The node is stopping and its app has gone first (it
				// got the signal): the write waits for the handoff.
				st.retry = fmt.Errorf("%w: %v", errAppGone, err)
				return
			}
			s.refuse(w, r, refusal{http.StatusBadGateway, "target-unreachable", "-",
				fmt.Sprintf("the application at %s (proxy.target) did not answer: %v", s.Target, err)}, "")
		},
	}
}

// serveLocal sends a request to the local app.
func (s *Server) serveLocal(w http.ResponseWriter, r *http.Request, m mode) {
	if m == modeRead {
		s.local.ServeHTTP(w, r) // stateOf's default: a plain read
		return
	}
	s.local.ServeHTTP(w, withState(r, &reqState{mode: m}))
}

// serveLocalWrite sends a write to the local app on the primary. It
// returns errSteppedDown, having answered nothing, if the app failed it
// (5xx) while this node stopped taking writes and the body can be sent
// again: the write then goes to the next primary.
func (s *Server) serveLocalWrite(w http.ResponseWriter, r *http.Request, body *retryBody) error {
	st := &reqState{mode: modeWrite, replayable: body.keep, roleChanged: s.Store.RoleChanged(), committed: s.allPositions()}
	s.local.ServeHTTP(w, withState(r, st))
	return st.retry
}

// steppedDown reports whether this node stopped taking writes: it is no
// longer the primary (the role changed since roleChanged was taken), or
// it is past its fence, as a handoff leaves it just before it steps down.
func (s *Server) steppedDown(roleChanged <-chan struct{}) bool {
	if s.Store.CheckWrite() != nil {
		return true
	}
	select {
	case <-roleChanged:
		return !s.Store.Primary().Self
	default:
		return false
	}
}

// newForward returns the reverse proxy to the primary's proxy.
func (s *Server) newForward() *httputil.ReverseProxy {
	node := s.Node
	if node == "" {
		node = "unknown"
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			rewrite(pr, stateOf(pr.In).target)
			pr.Out.Header.Add(HeaderForwardedBy, node)
		},
		Transport:  newTransport(),
		BufferPool: s.buffers,
		ErrorLog:   slog.NewLogLogger(s.Logger.Handler(), slog.LevelDebug),
		ModifyResponse: func(resp *http.Response) error {
			// The primary answered a write with its position: answer once
			// this node has it too, so the client reads its write here.
			v := resp.Header.Get(HeaderTXID)
			want, ok := parseTXIDs(v, len(s.DBs))
			if !ok {
				return nil
			}
			start := time.Now()
			caught := s.waitFor(resp.Request.Context(), want)
			if s.Debug || !caught {
				level := slog.LevelInfo
				if !caught {
					level = slog.LevelWarn
				}
				s.Logger.Log(resp.Request.Context(), level, "proxy: forwarded write answered; waited for this replica to reach its position",
					slog.String("path", resp.Request.URL.Path), slog.String("txid", v), slog.Bool("caught_up", caught),
					slog.Duration("waited", time.Since(start)))
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			st := stateOf(r)
			if r.Context().Err() != nil {
				return
			}
			if !bodyTouched(r) && isDialError(err) {
				st.retry = err // nothing sent: another try may reach a primary
				return
			}
			s.refuse(w, r, refusal{http.StatusBadGateway, "primary-failed", st.target.String(),
				fmt.Sprintf("the primary's proxy failed while serving it (it may or may not have been applied): %v", err)}, "")
		},
	}
}

// serveForwarded forwards a request to the primary's proxy. It returns an
// error, having answered nothing, if the primary's proxy could not be
// reached before anything was sent.
func (s *Server) serveForwarded(w http.ResponseWriter, r *http.Request, p replica.PrimaryStatus) error {
	target, err := url.Parse(p.ProxyURL)
	if err != nil {
		return fmt.Errorf("the primary's proxy URL %q: %w", p.ProxyURL, err)
	}
	s.debug(r, "forwarded to the primary's proxy", slog.String("primary", p.Hostname), slog.String("url", p.ProxyURL))
	st := &reqState{target: target}
	s.forward.ServeHTTP(w, withState(r, st))
	if st.retry != nil {
		return fmt.Errorf("its proxy at %s: %w", p.ProxyURL, st.retry)
	}
	return nil
}

// isDialError reports whether err is a failure to connect.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// isDown reports whether the stream to the primary ended in a way that
// says the primary, or the network to it, is down (as opposed to a
// primary that stepped down or stopped gracefully, or one not tried yet).
func isDown(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	return isDialError(err) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, replica.ErrNoHeartbeat) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// positions returns the TXID of every tracked database (zero for one this
// node does not have).
// allPositions returns the position of every database of the node.
func (s *Server) allPositions() string {
	var b strings.Builder
	for _, db := range s.Store.DBs() {
		fmt.Fprintf(&b, "%s=%s,", db.Name(), db.Pos())
	}
	return b.String()
}

func (s *Server) positions() []uint64 {
	a := make([]uint64, len(s.DBs))
	for i, name := range s.DBs {
		if db := s.Store.DB(name); db != nil {
			a[i] = uint64(db.Pos().TXID)
		}
	}
	return a
}

// reached reports whether this node has every TXID in want.
func (s *Server) reached(want []uint64) bool {
	have := s.positions()
	for i := range want {
		if have[i] < want[i] {
			return false
		}
	}
	return true
}

// waitFor waits, on the store's change notifications and at most
// WaitTimeout, until this node has every TXID in want. It reports whether
// it does.
func (s *Server) waitFor(ctx context.Context, want []uint64) bool {
	timer := time.NewTimer(s.WaitTimeout)
	defer timer.Stop()
	for {
		changed := s.Store.Changed()
		if s.reached(want) {
			return true
		}
		select {
		case <-changed:
		case <-timer.C:
			return s.reached(want)
		case <-ctx.Done():
			return false
		}
	}
}

// cookiePositions returns the TXIDs in the request's cookie; a missing,
// malformed or empty one is ignored.
func (s *Server) cookiePositions(r *http.Request) ([]uint64, bool) {
	c, err := r.Cookie(CookieName)
	if err != nil {
		return nil, false
	}
	return parseTXIDs(c.Value, len(s.DBs))
}
