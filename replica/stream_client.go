package replica

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

// Defaults for Client.
const (
	DefaultHeartbeatTimeout = 5 * time.Second
	DefaultMinBackoff       = 100 * time.Millisecond
	DefaultMaxBackoff       = 3 * time.Second
)

// StreamClient keeps a replica's databases in step with the primary: it holds one
// stream to the primary's API, applies what arrives, and reconnects with
// bounded backoff when the stream ends.
type StreamClient struct {
	// URL is the primary's API URL (lease.advertise-url on a replica).
	URL string
	// Node is this node's hostname, sent to the primary for its logs.
	Node string
	// AdvertiseURL and Candidate tell the primary how to reach this node
	// and whether it may take over (for handoffs).
	AdvertiseURL string
	Candidate    bool
	Store        *Store
	// Gate keeps readers out while a transaction is applied.
	Gate Gate
	// HeartbeatTimeout is how long the stream may be silent before the
	// replica gives up on it and reconnects.
	HeartbeatTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between reconnections.
	MinBackoff, MaxBackoff time.Duration
	// API calls the primary.
	API    *Client
	Logger *slog.Logger

	full diskFull // episodes of a full disk: applying pauses, then resumes
}

// NewStreamClient returns a client of the primary at url with defaults.
func NewStreamClient(url string, store *Store, gate Gate) *StreamClient {
	return &StreamClient{
		URL: strings.TrimRight(url, "/"), Store: store, Gate: gate,
		HeartbeatTimeout: DefaultHeartbeatTimeout,
		MinBackoff:       DefaultMinBackoff, MaxBackoff: DefaultMaxBackoff,
		API:    NewClient(),
		Logger: store.Logger,
	}
}

// Run streams from the primary until ctx ends.
func (c *StreamClient) Run(ctx context.Context) error {
	backoff := c.MinBackoff
	for {
		progressed, err := c.session(ctx)
		c.Store.setDisconnected(err)
		if ctx.Err() != nil {
			return nil
		}
		if IsDiskFull(err) {
			// Nothing was applied, and nothing will be until space is
			// freed: say so once, keep serving reads, and retry without
			// hammering the primary.
			c.full.fail(c.Logger, c.Store.Dir, err,
				"no space left in the data directory; applying the primary's transactions is paused (reads go on from what this replica has) and retried until space is freed",
				slog.String("primary", c.URL))
			c.Logger.Debug("replication stream ended: disk full; retrying", slog.Any(LogKeyError, err), slog.Duration("backoff", backoff))
		} else {
			if progressed {
				backoff = c.MinBackoff
			}
			c.Logger.Warn("replication stream from the primary ended; reconnecting",
				slog.String("primary", c.URL), slog.Any(LogKeyError, err), slog.Duration("backoff", backoff))
		}
		c.Store.Metrics.reconnected()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, c.MaxBackoff)
	}
}

// session runs one stream. progressed reports whether anything arrived.
func (c *StreamClient) session(ctx context.Context) (progressed bool, err error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	req := streamRequest{Node: c.Node, AdvertiseURL: c.AdvertiseURL, Candidate: c.Candidate, Positions: make(map[string]string)}
	for _, db := range c.Store.DBs() {
		req.Positions[db.Name()] = db.Pos().String()
	}
	body, err := c.API.stream(ctx, c.URL, req)
	if err != nil {
		return false, err
	}
	defer body.Close()

	// A silent stream means a dead primary or network: every frame resets
	// the watchdog; when it fires, the request is cancelled.
	watchdog := time.AfterFunc(c.HeartbeatTimeout, func() {
		cancel(fmt.Errorf("%w for %s", ErrNoHeartbeat, c.HeartbeatTimeout))
	})
	defer watchdog.Stop()

	r := bufio.NewReaderSize(body, 64<<10)
	var (
		file  *incoming
		snap  *snapshotReceiver // a snapshot being received and decoded
		batch []*incoming       // received, not yet applied
		acks  *acker            // nil unless the primary asked for acknowledgements
		beats int
	)
	discardBatch := func() {
		for _, in := range batch {
			in.discard()
		}
		batch = nil
	}
	defer func() { file.discard(); snap.abort(); discardBatch() }()
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := c.apply(ctx, batch)
		discardBatch()
		if err == nil && acks != nil {
			acks.poke()
		}
		return err
	}
	for {
		typ, payload, err := readFrame(r)
		if err != nil {
			if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
				err = cause
			}
			return progressed, err
		}
		watchdog.Reset(c.HeartbeatTimeout)
		progressed = true
		if typ != frameBegin && typ != frameChunk && typ != frameEnd {
			if err := flush(); err != nil {
				return progressed, err
			}
		}
		switch typ {
		case frameHello:
			var h streamHello
			if err := json.Unmarshal(payload, &h); err != nil {
				return progressed, fmt.Errorf("%w: hello: %v", ErrBadFrame, err)
			}
			c.Store.setConnected(h.Hostname, h.ProxyURL)
			if h.Positions != nil {
				pos, err := parsePositions(h.Positions)
				if err != nil {
					return progressed, fmt.Errorf("%w: hello: %v", ErrBadFrame, err)
				}
				c.Store.notePrimaryPositions(pos)
			}
			if h.Acks && c.Candidate && acks == nil {
				acks = c.startAcker(ctx, h.Session)
			}
			level := slog.LevelInfo
			if c.full.active.Load() {
				level = slog.LevelDebug // a retry while the disk is full
			}
			c.Logger.Log(ctx, level, "connected to the primary", slog.String("primary", h.Hostname), slog.String("url", c.URL))
		case frameHeartbeat:
			var h streamHeartbeat
			if err := json.Unmarshal(payload, &h); err != nil {
				return progressed, fmt.Errorf("%w: heartbeat: %v", ErrBadFrame, err)
			}
			pos, err := parsePositions(h.Positions)
			if err != nil {
				return progressed, fmt.Errorf("%w: heartbeat: %v", ErrBadFrame, err)
			}
			c.Store.setPrimaryPositions(pos)
			// The first heartbeat follows the primary's check of this
			// replica's history: from then on its acknowledgements count.
			if beats++; beats == 1 && acks != nil {
				acks.poke()
			}
		case frameBegin:
			var b streamBegin
			if err := json.Unmarshal(payload, &b); err != nil {
				return progressed, fmt.Errorf("%w: begin: %v", ErrBadFrame, err)
			}
			file.discard()
			snap.abort()
			file, snap = nil, nil
			if b.Streamed {
				// Applied as it arrives: what was received before
				// goes first.
				if err := ValidateName(b.DB); err != nil {
					return progressed, fmt.Errorf("%w: %v", ErrBadFrame, err)
				}
				if err := flush(); err != nil {
					return progressed, err
				}
				snap = receiveSnapshot(b, c.Store.TempDir())
			} else if file, err = c.newIncoming(b); err != nil {
				return progressed, err
			}
		case frameChunk:
			if snap != nil {
				if err := snap.write(payload); err != nil {
					return progressed, err
				}
				continue
			}
			if file == nil {
				return progressed, fmt.Errorf("%w: chunk outside a file", ErrBadFrame)
			}
			if err := file.write(payload); err != nil {
				return progressed, err
			}
		case frameEnd:
			if snap != nil {
				sr := snap
				snap = nil
				// Syncing and installing a large snapshot may take
				// longer than the primary's silence is allowed to;
				// nothing is read meanwhile.
				watchdog.Stop()
				if err := c.applySnapshot(ctx, sr); err != nil {
					return progressed, err
				}
				watchdog.Reset(c.HeartbeatTimeout)
				if acks != nil {
					acks.poke()
				}
				continue
			}
			if file == nil {
				return progressed, fmt.Errorf("%w: end outside a file", ErrBadFrame)
			}
			in := file
			file = nil
			if err := in.finish(); err != nil {
				in.discard()
				return progressed, err
			}
			// Files already waiting are applied together; a snapshot, a
			// file of another database, or a full batch starts a new one.
			if len(batch) > 0 && (in.begin.Snapshot || in.begin.DB != batch[0].begin.DB || len(batch) >= maxBatch) {
				if err := flush(); err != nil {
					in.discard()
					return progressed, err
				}
			}
			batch = append(batch, in)
			if r.Buffered() == 0 || in.begin.Snapshot {
				if err := flush(); err != nil {
					return progressed, err
				}
			}
		case frameDelete:
			var d streamDelete
			if err := json.Unmarshal(payload, &d); err != nil {
				return progressed, fmt.Errorf("%w: delete: %v", ErrBadFrame, err)
			}
			if err := c.delete(d.DB); err != nil {
				return progressed, err
			}
		}
	}
}

// parsePositions parses the positions of a hello or heartbeat frame.
func parsePositions(m map[string]string) (map[string]ltx.Pos, error) {
	pos := make(map[string]ltx.Pos, len(m))
	for name, p := range m {
		var err error
		if pos[name], err = ltx.ParsePos(p); err != nil {
			return nil, err
		}
	}
	return pos, nil
}

// acker sends a candidate's acknowledgements to the primary: after each
// apply, the positions it holds durably (an apply syncs before it moves a
// position). One request is in flight at a time; pokes meanwhile coalesce
// into the next, so a burst of applies costs a round trip, not one each.
type acker struct {
	ch chan struct{}
}

func (a *acker) poke() {
	select {
	case a.ch <- struct{}{}:
	default:
	}
}

// startAcker starts acknowledging on the stream session until ctx ends.
func (c *StreamClient) startAcker(ctx context.Context, session string) *acker {
	a := &acker{ch: make(chan struct{}, 1)}
	go func() {
		var warned time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case <-a.ch:
			}
			req := ackRequest{Session: session, Positions: make(map[string]string), Stamp: uint64(c.Store.Stamp())}
			for _, db := range c.Store.DBs() {
				req.Positions[db.Name()] = db.Pos().String()
			}
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := c.API.ack(actx, c.URL, req)
			cancel()
			if err != nil && ctx.Err() == nil && time.Since(warned) > 5*time.Second {
				c.Logger.Warn("acknowledge to the primary", slog.Any(LogKeyError, err))
				warned = time.Now()
			}
		}
	}()
	return a
}

// incoming is a file being received, spooled to disk.
type incoming struct {
	begin streamBegin
	f     *os.File
	n     int64
}

func (c *StreamClient) newIncoming(b streamBegin) (*incoming, error) {
	if err := ValidateName(b.DB); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	f, err := os.CreateTemp(c.Store.TempDir(), "recv-*.ltx")
	if err != nil {
		return nil, err
	}
	return &incoming{begin: b, f: f}, nil
}

func (in *incoming) write(p []byte) error {
	if in.n+int64(len(p)) > in.begin.Size {
		return fmt.Errorf("%w: file for %q longer than the %d bytes announced", ErrBadFrame, in.begin.DB, in.begin.Size)
	}
	n, err := in.f.Write(p)
	in.n += int64(n)
	return err
}

func (in *incoming) discard() {
	if in == nil {
		return
	}
	in.f.Close()
	os.Remove(in.f.Name())
}

// maxBatch bounds how many received files are applied in one step.
const maxBatch = 64

// finish checks that a received file is complete and makes it durable.
func (in *incoming) finish() error {
	if in.n != in.begin.Size {
		return fmt.Errorf("%w: file for %q has %d of %d bytes", ErrBadFrame, in.begin.DB, in.n, in.begin.Size)
	}
	if err := in.f.Sync(); err != nil {
		return err
	}
	return in.f.Close()
}

// apply applies received files of one database, in order: a snapshot is
// always alone in its batch.
func (c *StreamClient) apply(ctx context.Context, batch []*incoming) error {
	first := batch[0].begin
	name := first.DB
	db := c.Store.DB(name)
	if db != nil && first.Divergent {
		if _, err := c.Store.MoveAside(name, "its history differs from the primary's, or the primary can no longer tell (its log does not reach back this far); the primary's snapshot replaces it"); err != nil {
			return err
		}
		db = nil
	}
	if db == nil {
		var err error
		if db, err = c.Store.CreateDB(name); err != nil {
			return err
		}
		if c.Gate != nil {
			if err := c.Gate.Forget(name); err != nil {
				return err
			}
		}
	}
	paths := make([]string, len(batch))
	for i, in := range batch {
		paths[i] = in.f.Name()
	}
	if err := db.ApplyAll(ctx, paths, c.Gate); err != nil {
		return fmt.Errorf("apply to %q: %w", name, err)
	}
	c.Store.updateLag()
	c.full.ok(c.Logger, c.Store.Dir, "applying resumed", slog.String(LogKeyDB, name), slog.String("pos", db.Pos().String()))
	return nil
}

// applySnapshot finishes receiving a streamed snapshot and makes it the
// database, replacing (and, if the primary marked it divergent, keeping
// aside) what this replica had. A snapshot that fails to verify changes
// nothing.
func (c *StreamClient) applySnapshot(ctx context.Context, sr *snapshotReceiver) error {
	name := sr.begin.DB
	rs, err := sr.finish()
	if err != nil {
		return fmt.Errorf("receive snapshot of %q: %w", name, err)
	}
	defer rs.remove() // nothing left once installed
	db := c.Store.DB(name)
	if db != nil && sr.begin.Divergent {
		if _, err := c.Store.MoveAside(name, "its history differs from the primary's, or the primary can no longer tell (its log does not reach back this far); the primary's snapshot replaces it"); err != nil {
			return err
		}
		db = nil
	}
	if db == nil {
		if db, err = c.Store.CreateDB(name); err != nil {
			return err
		}
		if c.Gate != nil {
			if err := c.Gate.Forget(name); err != nil {
				return err
			}
		}
	}
	if err := db.installSnapshot(ctx, rs, c.Gate); err != nil {
		return fmt.Errorf("apply snapshot to %q: %w", name, err)
	}
	c.Logger.Debug("snapshot applied", slog.String(LogKeyDB, name), slog.String("pos", db.Pos().String()),
		slog.Int64("bytes", int64(rs.hdr.Commit)*int64(rs.hdr.PageSize)), slog.Duration("elapsed", time.Since(sr.start)))
	c.Store.updateLag()
	c.full.ok(c.Logger, c.Store.Dir, "applying resumed", slog.String(LogKeyDB, name), slog.String("pos", db.Pos().String()))
	return nil
}

func (c *StreamClient) delete(name string) error {
	db := c.Store.DB(name)
	if db == nil {
		return nil
	}
	// The primary may have deleted it, or may never have had it (a node
	// that became primary without this node's data): either way the data
	// is kept aside, not destroyed.
	if db.Pos().TXID > 0 {
		if _, err := c.Store.MoveAside(name, "the primary does not have this database (deleted there, or never replicated to it)"); err != nil {
			return err
		}
	} else if err := c.Store.DeleteDB(name); err != nil {
		return err
	}
	if c.Gate != nil {
		return c.Gate.Forget(name)
	}
	return nil
}
