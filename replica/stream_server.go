package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

// DefaultHeartbeatInterval is how often the primary tells replicas it is
// alive and where its databases are.
const DefaultHeartbeatInterval = time.Second

// Server serves the node's HTTP API: the replication stream (POST /stream)
// and GET /info. See docs/api.md.
type Server struct {
	Store *Store
	// Hostname is this node's lease.hostname.
	Hostname string
	// HeartbeatInterval is how often heartbeats are sent.
	HeartbeatInterval time.Duration
	Logger            *slog.Logger
	// Handoff, if set, serves POST /handoff: it passes the primary lease
	// to the named candidate ("" for the best connected one).
	Handoff func(ctx context.Context, to string) (HandoffResult, error)
	// Gate keeps connections out while POST /import changes a database;
	// nil if the mount is not up.
	Gate Gate
	// PrimaryURL, if set, returns the primary's API URL as this node
	// knows it ("" if unknown), for a replica's answer to POST /import.
	PrimaryURL func() string

	mu       sync.Mutex
	replicas map[*streamRequest]struct{} // connected replicas
}

// ReplicaInfo describes a replica connected to this primary.
type ReplicaInfo struct {
	Node         string
	AdvertiseURL string
	Candidate    bool
}

// Replicas returns the replicas connected now.
func (s *Server) Replicas() []ReplicaInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := make([]ReplicaInfo, 0, len(s.replicas))
	for r := range s.replicas {
		a = append(a, ReplicaInfo{Node: r.Node, AdvertiseURL: r.AdvertiseURL, Candidate: r.Candidate})
	}
	return a
}

// HandoffResult is the body of a successful POST /handoff.
type HandoffResult struct {
	From     string `json:"from"`      // the old primary
	To       string `json:"to"`        // the new primary
	WindowMS int64  `json:"window_ms"` // how long the old primary refused writes
}

// NewServer returns a server over store with defaults.
func NewServer(store *Store, hostname string) *Server {
	return &Server{Store: store, Hostname: hostname, HeartbeatInterval: DefaultHeartbeatInterval, Logger: store.Logger}
}

// Handler returns the API's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /stream", s.handleStream)
	mux.HandleFunc("GET /info", s.handleInfo)
	mux.HandleFunc("POST /handoff", s.handleHandoff)
	mux.HandleFunc("POST /import", s.handleImport)
	mux.HandleFunc("GET /export", s.handleExport)
	return mux
}

// nodeInfo is the body of GET /info.
type nodeInfo struct {
	Node      string            `json:"node"`
	Primary   bool              `json:"primary"`
	PrimaryOf string            `json:"primary_hostname,omitempty"`
	Positions map[string]string `json:"positions"`
}

func (s *Server) handleInfo(w http.ResponseWriter, r *http.Request) {
	info := nodeInfo{Node: s.Hostname, Primary: s.Store.IsPrimary(), PrimaryOf: s.Store.PrimaryHostname(), Positions: s.positions()}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(info)
}

func (s *Server) handleHandoff(w http.ResponseWriter, r *http.Request) {
	if s.Handoff == nil {
		http.Error(w, "handoff needs lease.type consul; this node has a static lease", http.StatusConflict)
		return
	}
	res, err := s.Handoff(r.Context(), r.URL.Query().Get("to"))
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, ErrNotPrimary) || errors.Is(err, ErrNoCandidate) {
			code = http.StatusConflict
		}
		http.Error(w, err.Error(), code)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res)
}

func (s *Server) positions() map[string]string {
	m := make(map[string]string)
	for _, db := range s.Store.DBs() {
		m[db.Name()] = db.Pos().String()
	}
	return m
}

func (s *Server) handleStream(w http.ResponseWriter, r *http.Request) {
	if !s.Store.IsPrimary() {
		http.Error(w, fmt.Sprintf("%s is not the primary", s.Hostname), http.StatusServiceUnavailable)
		return
	}
	var req streamRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		http.Error(w, "bad stream request: "+err.Error(), http.StatusBadRequest)
		return
	}
	sent := make(map[string]ltx.Pos)
	for name, p := range req.Positions {
		pos, err := ltx.ParsePos(p)
		if err != nil {
			http.Error(w, "bad position for "+name+": "+err.Error(), http.StatusBadRequest)
			return
		}
		sent[name] = pos
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)

	logger := s.Logger.With(slog.String("replica", req.Node))
	logger.Info("replica connected", slog.String("url", req.AdvertiseURL), slog.Bool("candidate", req.Candidate))
	s.mu.Lock()
	if s.replicas == nil {
		s.replicas = make(map[*streamRequest]struct{})
	}
	s.replicas[&req] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.replicas, &req)
		s.mu.Unlock()
	}()
	st := &streamWriter{w: w, flusher: flusher}
	err := s.stream(r.Context(), st, sent, logger)
	if err != nil && r.Context().Err() == nil {
		logger.Warn("replication stream ended", slog.Any(LogKeyError, err))
	} else {
		logger.Info("replica disconnected")
	}
}

type streamWriter struct {
	w       io.Writer
	flusher http.Flusher
}

func (st *streamWriter) json(typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeFrame(st.w, typ, b)
}

func (st *streamWriter) flush() { st.flusher.Flush() }

// stream sends everything the replica lacks, then every change as it
// happens, with heartbeats, until ctx ends or a write fails. sent holds the
// replica's position of each database and is kept up to date.
func (s *Server) stream(ctx context.Context, st *streamWriter, sent map[string]ltx.Pos, logger *slog.Logger) error {
	if err := st.json(frameHello, streamHello{Hostname: s.Hostname}); err != nil {
		return err
	}
	// Databases the replica has and the primary does not.
	for name := range sent {
		if s.Store.DB(name) == nil {
			if err := st.json(frameDelete, streamDelete{DB: name}); err != nil {
				return err
			}
			delete(sent, name)
		}
	}
	heartbeat := time.NewTicker(s.HeartbeatInterval)
	defer heartbeat.Stop()
	for first := true; ; first = false {
		changed := s.Store.Changed()
		if !s.Store.IsPrimary() {
			return ErrNotPrimary // stepped down: the replica finds the new primary
		}
		for _, db := range s.Store.DBs() {
			pos, err := s.sendDB(ctx, st, db, sent[db.Name()], logger)
			if err != nil {
				return fmt.Errorf("send %q: %w", db.Name(), err)
			}
			sent[db.Name()] = pos
		}
		for name := range sent {
			if s.Store.DB(name) == nil {
				if err := st.json(frameDelete, streamDelete{DB: name}); err != nil {
					return err
				}
				delete(sent, name)
			}
		}
		if first { // the replica learns at once where the primary is
			if err := s.heartbeat(st); err != nil {
				return err
			}
		}
		st.flush()
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-heartbeat.C:
			if err := s.heartbeat(st); err != nil {
				return err
			}
		}
	}
}

func (s *Server) heartbeat(st *streamWriter) error {
	return st.json(frameHeartbeat, streamHeartbeat{TimeMS: time.Now().UnixMilli(), Positions: s.positions()})
}

// sendDB brings a replica at position from up to the database's position
// and returns the position sent. It sends the LTX files after from when the
// log still has them and from is on the primary's history; otherwise a
// snapshot, marked divergent when the replica's history differs.
func (s *Server) sendDB(ctx context.Context, st *streamWriter, db *DB, from ltx.Pos, logger *slog.Logger) (ltx.Pos, error) {
	cur := db.Pos()
	if from == cur || cur.TXID == 0 {
		return from, nil
	}
	files := db.Log().Files()
	divergent, ok, unknown := false, true, false
	switch {
	case from.TXID == 0:
		ok = false
	case from.TXID > cur.TXID:
		divergent, ok = true, false
	default:
		want, found := cur.Checksum, from.TXID == cur.TXID
		for _, f := range files {
			if f.MaxTXID == from.TXID {
				var err error
				if want, err = ltx.ReadTrailer(db.Log().Path(f.MinTXID, f.MaxTXID)); err != nil {
					return from, err
				}
				found = true
			}
		}
		if !found {
			// Past retention, or a log that starts with a snapshot: the
			// log cannot tell whether the replica's transactions are the
			// primary's, so its state is kept aside, as if it diverged.
			divergent, ok, unknown = true, false, true
		} else if want != from.Checksum {
			divergent, ok = true, false
		}
	}
	if ok {
		pos, err := s.sendLog(st, db, files, from, cur)
		if err == nil {
			return pos, nil
		} else if !errors.Is(err, errLogGap) {
			return from, err
		}
	}
	if unknown {
		logger.Warn("the log no longer reaches back to the replica's position, so it cannot tell whether the replica's history is the primary's; sending a snapshot, and the replica keeps its state aside",
			slog.String(LogKeyDB, db.Name()), slog.String("replica_pos", from.String()), slog.String("pos", cur.String()))
	} else if divergent {
		logger.Warn("replica's history differs from the primary's; sending a snapshot",
			slog.String(LogKeyDB, db.Name()), slog.String("replica_pos", from.String()), slog.String("pos", cur.String()))
	}
	return s.sendSnapshot(ctx, st, db, divergent)
}

var errLogGap = errors.New("log no longer holds the files")

// sendLog sends the LTX files from from.TXID+1 up to cur.
func (s *Server) sendLog(st *streamWriter, db *DB, files []ltx.FileInfo, from, cur ltx.Pos) (ltx.Pos, error) {
	next := from.TXID + 1
	for _, f := range files {
		if f.MaxTXID < next {
			continue
		}
		if f.MaxTXID > cur.TXID {
			// Logged but not yet published (or its commit failed):
			// sending it would put the replica ahead of the position
			// this stream compares it with.
			break
		}
		if f.MinTXID != next {
			return from, errLogGap
		}
		path := db.Log().Path(f.MinTXID, f.MaxTXID)
		if err := s.sendFile(st, path, streamBegin{DB: db.Name()}); errors.Is(err, os.ErrNotExist) {
			return from, errLogGap // removed by retention meanwhile
		} else if err != nil {
			return from, err
		}
		post, err := ltx.ReadTrailer(path)
		if err != nil {
			return from, err
		}
		from = ltx.Pos{TXID: f.MaxTXID, Checksum: post}
		next = f.MaxTXID + 1
	}
	if from.TXID < cur.TXID {
		return from, errLogGap
	}
	return from, nil
}

func (s *Server) sendSnapshot(ctx context.Context, st *streamWriter, db *DB, divergent bool) (ltx.Pos, error) {
	f, err := os.CreateTemp(s.Store.TempDir(), "snapshot-*.ltx")
	if err != nil {
		return ltx.Pos{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	hdr, post, err := db.WriteSnapshot(ctx, f)
	if err != nil {
		return ltx.Pos{}, err
	}
	if err := f.Close(); err != nil {
		return ltx.Pos{}, err
	}
	if err := s.sendFile(st, f.Name(), streamBegin{DB: db.Name(), Snapshot: true, Divergent: divergent}); err != nil {
		return ltx.Pos{}, err
	}
	return ltx.Pos{TXID: hdr.MaxTXID, Checksum: post}, nil
}

// sendFile sends the file at path as begin, chunks and end frames.
func (s *Server) sendFile(st *streamWriter, path string, begin streamBegin) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	begin.Size = fi.Size()
	if err := st.json(frameBegin, begin); err != nil {
		return err
	}
	buf := make([]byte, chunkSize)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if err := writeFrame(st.w, frameChunk, buf[:n]); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return err
		}
	}
	return writeFrame(st.w, frameEnd, nil)
}
