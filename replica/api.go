package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

// DefaultHeartbeatInterval is how often the primary tells replicas it is
// alive and where its databases are.
const DefaultHeartbeatInterval = time.Second

// maxInfoWait bounds how long GET /info?wait= holds a request.
const maxInfoWait = time.Minute

// Server serves the node's HTTP API: every endpoint is registered in
// Handler, behind one middleware chain. See docs/api.md.
type Server struct {
	Store *Store
	// Hostname is this node's lease.hostname.
	Hostname string
	// ProxyURL is the URL of this node's HTTP proxy as other nodes reach
	// it, sent to replicas when they connect so that their proxies can
	// forward writes here; "" if the node runs no proxy.
	ProxyURL string
	// HeartbeatInterval is how often heartbeats are sent.
	HeartbeatInterval time.Duration
	Logger            *slog.Logger
	// Handoff, if set, serves POST /handoff: it passes the primary lease
	// to the named candidate ("" for the best connected one).
	Handoff func(ctx context.Context, to string) (HandoffResult, error)
	// Secret, if set, is the cluster secret every request must carry as
	// "Authorization: Bearer SECRET"; others get 401 and change nothing.
	Secret string
	// Public says which requests need no secret (nil: none).
	Public func(*http.Request) bool
	// Metrics, if set, serves GET /metrics (Prometheus).
	Metrics http.Handler
	// ProxyHealth, if set, reports the health of this node's HTTP proxy
	// (what its /litefs/health answers), for GET /info.
	ProxyHealth func() (healthy bool, reason string)
	// Gate keeps connections out while POST /import changes a database;
	// nil if the mount is not up.
	Gate Gate
	// Middleware wraps every endpoint, outermost first (metrics and
	// request logs hook in here); authentication runs inside it.
	Middleware []func(http.Handler) http.Handler

	mu       sync.Mutex
	replicas map[*streamRequest]*replicaConn // connected replicas
}

// NewServer returns a server over store with defaults.
func NewServer(store *Store, hostname string) *Server {
	return &Server{Store: store, Hostname: hostname, HeartbeatInterval: DefaultHeartbeatInterval, Logger: store.Logger}
}

// Handler returns the API: every route, wrapped in the middleware chain.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /stream", s.handleStream)
	mux.HandleFunc("GET /info", s.handleInfo)
	mux.HandleFunc("POST /ack", s.handleAck)
	mux.HandleFunc("POST /handoff", s.handleHandoff)
	mux.HandleFunc("POST /import", s.handleImport)
	mux.HandleFunc("GET /export", s.handleExport)
	mux.HandleFunc("GET /events", s.handleEvents)
	if s.Metrics != nil {
		mux.Handle("GET /metrics", s.Metrics)
	}
	var h http.Handler = mux
	if s.Secret != "" {
		h = (&authenticator{secret: []byte(s.Secret), public: s.Public, logger: s.Logger}).wrap(h)
	}
	for i := len(s.Middleware) - 1; i >= 0; i-- {
		h = s.Middleware[i](h)
	}
	return h
}

// ReplicaInfo describes a replica connected to this primary.
type ReplicaInfo struct {
	Node         string            `json:"node"`
	AdvertiseURL string            `json:"advertise_url,omitempty"`
	Candidate    bool              `json:"candidate"`
	Since        time.Time         `json:"connected_since"`
	Positions    map[string]string `json:"positions"` // what this primary sent it
}

// replicaConn is a connected replica's stream, as the server tracks it.
type replicaConn struct {
	since     time.Time
	sent      map[string]string // positions sent, guarded by Server.mu
	session   string            // names the stream in acknowledgements
	candidate bool
	verified  bool // the stream checked the replica's history: its acks count
}

// Replicas returns the replicas connected now, sorted by name.
func (s *Server) Replicas() []ReplicaInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := make([]ReplicaInfo, 0, len(s.replicas))
	for r, c := range s.replicas {
		a = append(a, ReplicaInfo{Node: r.Node, AdvertiseURL: r.AdvertiseURL, Candidate: r.Candidate, Since: c.since, Positions: maps.Clone(c.sent)})
	}
	slices.SortFunc(a, func(x, y ReplicaInfo) int { return strings.Compare(x.Node, y.Node) })
	return a
}

// setSent records the positions sent to a replica.
func (s *Server) setSent(req *streamRequest, sent map[string]ltx.Pos) {
	m := make(map[string]string, len(sent))
	for name, pos := range sent {
		m[name] = pos.String()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.replicas[req]; c != nil {
		c.sent, c.verified = m, true
	}
}

// NodeInfo is the body of GET /info.
type NodeInfo struct {
	Node    string `json:"node"`
	Primary bool   `json:"primary"`
	// PrimaryHostname and PrimaryURL name the primary a replica is
	// connected to (PrimaryURL: the one it streams from, if known).
	PrimaryHostname string `json:"primary_hostname,omitempty"`
	PrimaryURL      string `json:"primary_url,omitempty"`
	// Positions holds every database's position, "TXID/checksum" in hex.
	Positions map[string]string `json:"positions"`

	// Connected says whether a replica's stream to the primary is up, and
	// since when (or since when it is down).
	Connected      bool      `json:"connected"`
	ConnectedSince time.Time `json:"connected_since"`
	// LagSeconds is how long a replica has been behind the primary's last
	// reported positions (0 when caught up, and on the primary).
	LagSeconds float64 `json:"lag_seconds"`
	// PrimaryPositions are the primary's positions as last reported.
	PrimaryPositions map[string]string `json:"primary_positions,omitempty"`
	// WritesUntil, on a primary whose lease can expire, is when it stops
	// writing unless the lease is renewed first.
	WritesUntil *time.Time `json:"writes_until,omitempty"`
	// Replicas, on the primary, are the replicas streaming from it.
	Replicas []ReplicaInfo `json:"replicas,omitempty"`
	// Aside lists the databases kept aside in data.dir/aside.
	Aside []string `json:"aside,omitempty"`
	// SyncMode, on a primary with lease.sync-replicas set, is "sync"
	// while commits wait for candidates, or "async" while it has fallen
	// back to asynchronous replication (lease.sync-fallback: async).
	SyncMode string `json:"sync_mode,omitempty"`
	// Proxy is the state of this node's HTTP proxy, if it runs one.
	Proxy *ProxyInfo `json:"proxy,omitempty"`
}

// ProxyInfo is what GET /info says of the node's HTTP proxy.
type ProxyInfo struct {
	URL     string `json:"url,omitempty"` // as other nodes reach it
	Healthy bool   `json:"healthy"`       // what /litefs/health answers
	Reason  string `json:"reason"`
}

// Pos returns the position of database name, zero if it has none.
func (i NodeInfo) Pos(name string) (ltx.Pos, error) {
	p, ok := i.Positions[name]
	if !ok {
		return ltx.Pos{}, nil
	}
	return ltx.ParsePos(p)
}

// TXIDs returns each database's TXID.
func (i NodeInfo) TXIDs() (map[string]uint64, error) {
	a := make(map[string]uint64, len(i.Positions))
	for name := range i.Positions {
		pos, err := i.Pos(name)
		if err != nil {
			return nil, fmt.Errorf("position of %q: %w", name, err)
		}
		a[name] = uint64(pos.TXID)
	}
	return a, nil
}

// Health returns nil for a healthy node: a primary that is not past its
// fence, or a replica connected to the primary and behind it by at most
// maxLag. Otherwise it says what is wrong.
func (i NodeInfo) Health(maxLag time.Duration) error {
	switch {
	case i.Primary && i.WritesUntil != nil && !time.Now().Before(*i.WritesUntil):
		return fmt.Errorf("the primary's lease was not renewed in time: writes refused since %s", i.WritesUntil.Format(time.RFC3339Nano))
	case i.Primary:
		return nil
	case !i.Connected:
		return fmt.Errorf("not connected to the primary (since %s)", i.ConnectedSince.Format(time.RFC3339))
	case i.LagSeconds > maxLag.Seconds():
		return fmt.Errorf("lags the primary by %.1fs, more than %s", i.LagSeconds, maxLag)
	}
	return nil
}

// Has reports whether the node is at every position in want. A database
// with no transaction is wanted at nothing: there is nothing in it to
// lose, and the stream does not send it.
func (i NodeInfo) Has(want map[string]ltx.Pos) bool {
	for name, pos := range want {
		if pos.TXID == 0 {
			continue
		}
		if i.Positions[name] != pos.String() {
			return false
		}
	}
	return true
}

func (s *Server) info() NodeInfo {
	p := s.Store.Primary()
	info := NodeInfo{Node: s.Hostname, Primary: p.Self, PrimaryHostname: p.Hostname, PrimaryURL: p.URL, Positions: s.positions(),
		Connected: p.Self || p.Connected, ConnectedSince: p.Since, LagSeconds: s.Store.Lag().Seconds()}
	if len(p.Positions) > 0 {
		info.PrimaryPositions = make(map[string]string, len(p.Positions))
		for name, pos := range p.Positions {
			info.PrimaryPositions[name] = pos.String()
		}
	}
	if p.Self {
		if f := s.Store.Fence(); !f.IsZero() {
			info.WritesUntil = &f
		}
		info.Replicas = s.Replicas()
		info.SyncMode = s.Store.SyncMode()
	}
	info.Aside, _ = s.Store.Aside()
	if s.ProxyHealth != nil {
		ok, why := s.ProxyHealth()
		info.Proxy = &ProxyInfo{URL: s.ProxyURL, Healthy: ok, Reason: why}
	}
	return info
}

// handleInfo answers GET /info. With wait=DURATION and want=DB=POS (any
// number), it answers once the node is at every wanted position, or when
// the wait ends, whichever is first; the caller compares.
func (s *Server) handleInfo(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	want := make(map[string]ltx.Pos)
	for _, v := range q["want"] {
		i := strings.LastIndexByte(v, '=')
		if i < 0 {
			writeError(w, fmt.Errorf("%w: want=%q: expected DB=POSITION", errBadRequest, v))
			return
		}
		pos, err := ltx.ParsePos(v[i+1:])
		if err != nil {
			writeError(w, fmt.Errorf("%w: want=%q: %v", errBadRequest, v, err))
			return
		}
		want[v[:i]] = pos
	}
	if v := q.Get("wait"); v != "" && len(want) > 0 {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			writeError(w, fmt.Errorf("%w: wait=%q: expected a duration such as 5s", errBadRequest, v))
			return
		}
		timer := time.NewTimer(min(d, maxInfoWait))
		defer timer.Stop()
	wait:
		for {
			changed := s.Store.Changed()
			if s.info().Has(want) {
				break
			}
			select {
			case <-changed:
			case <-timer.C:
				break wait
			case <-r.Context().Done():
				return
			}
		}
	}
	writeJSON(w, s.info())
}

// handleAck answers POST /ack: a candidate reports what it holds durably
// (see ackRequest). Reports from non-candidates, from streams that ended,
// and from streams whose replica's history is not yet checked do not count.
func (s *Server) handleAck(w http.ResponseWriter, r *http.Request) {
	var req ackRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, fmt.Errorf("%w: ack: %v", errBadRequest, err))
		return
	}
	t := s.Store.syncTracker()
	if t == nil || !s.Store.IsPrimary() {
		w.WriteHeader(http.StatusOK)
		return
	}
	pos := make(map[string]ltx.Pos, len(req.Positions))
	for name, p := range req.Positions {
		var err error
		if pos[name], err = ltx.ParsePos(p); err != nil {
			writeError(w, fmt.Errorf("%w: ack: position of %q: %v", errBadRequest, name, err))
			return
		}
	}
	s.mu.Lock()
	counts := false
	for _, c := range s.replicas {
		if c.session == req.Session {
			counts = c.candidate && c.verified
			break
		}
	}
	s.mu.Unlock()
	if counts {
		t.ack(req.Session, pos, ltx.Stamp(req.Stamp))
	}
	w.WriteHeader(http.StatusOK)
}

// HandoffResult is the body of a successful POST /handoff.
type HandoffResult struct {
	From     string `json:"from"`      // the old primary
	To       string `json:"to"`        // the new primary
	WindowMS int64  `json:"window_ms"` // how long the old primary refused writes
}

var errNoHandoff = errors.New("handoff needs lease.type consul; this node has a static lease")

func (s *Server) handleHandoff(w http.ResponseWriter, r *http.Request) {
	if s.Handoff == nil {
		writeError(w, errNoHandoff)
		return
	}
	res, err := s.Handoff(r.Context(), r.URL.Query().Get("to"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, res)
}

func (s *Server) positions() map[string]string {
	m := make(map[string]string)
	for _, db := range s.Store.DBs() {
		m[db.Name()] = db.Pos().String()
	}
	return m
}

// errBadRequest marks a request the API cannot read.
var errBadRequest = errors.New("bad request")

// apiErrors maps the errors the API returns to status codes and to the
// codes that carry them back to the client, which returns them wrapped
// around the same sentinel (see Client).
var apiErrors = []struct {
	err    error
	status int
	code   string
}{
	{ErrUnauthorized, http.StatusUnauthorized, "unauthorized"},
	{ErrNotPrimary, http.StatusConflict, "not-primary"},
	{ErrNoCandidate, http.StatusConflict, "no-candidate"},
	{errNoHandoff, http.StatusConflict, "no-handoff"},
	{ErrReadOnly, http.StatusConflict, "read-only"},
	{ErrJournalModeBusy, http.StatusConflict, "journal-mode-busy"},
	{ErrFenced, http.StatusServiceUnavailable, "fenced"},
	{ErrClosed, http.StatusServiceUnavailable, "closed"},
	{ErrDatabaseNotFound, http.StatusNotFound, "database-not-found"},
	{ErrInvalidName, http.StatusBadRequest, "invalid-name"},
	{ErrNotSQLite, http.StatusBadRequest, "not-sqlite"},
	{ErrInvalidDatabase, http.StatusBadRequest, "invalid-database"},
	{errUploadCut, http.StatusBadRequest, "upload-cut"},
	{errBadRequest, http.StatusBadRequest, "bad-request"},
	{syscall.ENOSPC, http.StatusInsufficientStorage, "disk-full"},
	{syscall.EDQUOT, http.StatusInsufficientStorage, "disk-full"},
}

// apiError is the JSON body of an error answer.
type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code,omitempty"`
}

// apiStatus returns the status code and error code err answers with.
func apiStatus(err error) (status int, code string) {
	for _, e := range apiErrors {
		if errors.Is(err, e.err) {
			return e.status, e.code
		}
	}
	return http.StatusInternalServerError, ""
}

// writeError answers with err's status code and a JSON body naming it.
func writeError(w http.ResponseWriter, err error) {
	status, code := apiStatus(err)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(apiError{Error: err.Error(), Code: code})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
