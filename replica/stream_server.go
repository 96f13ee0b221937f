package replica

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sort"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

func (s *Server) handleStream(w http.ResponseWriter, r *http.Request) {
	if !s.Store.IsPrimary() {
		writeError(w, fmt.Errorf("%w: %s cannot stream", ErrNotPrimary, s.Hostname))
		return
	}
	var req streamRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, fmt.Errorf("%w: stream request: %v", errBadRequest, err))
		return
	}
	sent := make(map[string]ltx.Pos)
	for name, p := range req.Positions {
		pos, err := ltx.ParsePos(p)
		if err != nil {
			writeError(w, fmt.Errorf("%w: position of %q: %v", errBadRequest, name, err))
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
		s.replicas = make(map[*streamRequest]*replicaConn)
	}
	session := newSession()
	s.replicas[&req] = &replicaConn{since: time.Now(), sent: req.Positions, session: session, candidate: req.Candidate}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.replicas, &req)
		s.mu.Unlock()
		if t := s.Store.syncTracker(); t != nil {
			t.drop(session)
		}
	}()
	st := &streamWriter{w: w, flusher: flusher}
	hello := streamHello{Hostname: s.Hostname, ProxyURL: s.ProxyURL, Session: session, Acks: req.Candidate && s.Store.syncTracker() != nil,
		Positions: s.positions()}
	err := s.stream(r.Context(), st, &req, hello, sent, logger)
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

// newSession returns a random name for a stream.
func newSession() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (st *streamWriter) flush() { st.flusher.Flush() }

// stream sends everything the replica lacks, then every change as it
// happens, with heartbeats, until ctx ends or a write fails. sent holds the
// replica's position of each database and is kept up to date.
func (s *Server) stream(ctx context.Context, st *streamWriter, req *streamRequest, hello streamHello, sent map[string]ltx.Pos, logger *slog.Logger) error {
	if err := st.json(frameHello, hello); err != nil {
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
		err := s.sendRound(ctx, st, sent, logger)
		if err != nil {
			return err
		}
		for name := range sent {
			if s.Store.DB(name) == nil {
				if err := st.json(frameDelete, streamDelete{DB: name}); err != nil {
					return err
				}
				delete(sent, name)
			}
		}
		s.setSent(req, sent)
		// The replica learns at once where the primary is; then with
		// every heartbeat. (A heartbeat after every batch sent, tried,
		// slowed a WAL handoff's catch-up from 25 to 39 ms p50.)
		if first {
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

// sendRound sends every database's changes since sent, which it keeps up
// to date.
func (s *Server) sendRound(ctx context.Context, st *streamWriter, sent map[string]ltx.Pos, logger *slog.Logger) error {
	if t := s.Store.syncTracker(); t != nil {
		return s.sendOrdered(ctx, st, t, sent, logger)
	}
	for _, db := range s.Store.DBs() {
		pos, err := s.sendDB(ctx, st, db, sent[db.Name()], logger)
		if err != nil {
			return fmt.Errorf("send %q: %w", db.Name(), err)
		}
		sent[db.Name()] = pos
	}
	return nil
}

// sendOrdered is a round of the stream with lease.sync-replicas set: the
// LTX files of every database go in stamp order (see ltx.Stamp: the
// order their commits were published, over every term), up to the
// tracker's watermark when the round began, below which every commit is
// published or given up. The replica applies in the order it receives,
// so it holds every transaction of the primary's history stamped up to
// its own stamp (Store.Stamp: the newest stamp it holds), which is what
// elections compare. Snapshots (a replica whose history differs, or that
// the log no longer reaches) go first and carry no stamp: one brings its
// database past transactions of other databases the replica has yet to
// receive, and its stamp would claim them too. Files without a stamp
// (from an older version) go right after their database's previous file.
// sent is kept up to date.
func (s *Server) sendOrdered(ctx context.Context, st *streamWriter, t *syncTracker, sent map[string]ltx.Pos, logger *slog.Logger) error {
	type item struct {
		stamp ltx.Stamp
		db    *DB
		file  ltx.FileInfo
	}
	var items []item
	last := t.watermark()
	for _, db := range s.Store.DBs() {
		name, from := db.Name(), sent[db.Name()]
		plan, err := planSend(db, from, true)
		if err != nil {
			return fmt.Errorf("send %q: %w", name, err)
		}
		if plan.snapshot {
			logSnapshot(logger, db, plan, from)
			pos, err := s.sendSnapshot(ctx, st, db, plan.divergent, snapshotUnstamped)
			if err != nil {
				return fmt.Errorf("send %q: %w", name, err)
			}
			sent[name] = pos
			continue // its files after the snapshot: next round
		}
		prev := ltx.Stamp(0)
		for _, f := range plan.files {
			stamp, err := db.Log().Stamp(f)
			if errors.Is(err, os.ErrNotExist) {
				break // removed by retention meanwhile: a snapshot next round
			} else if err != nil {
				return fmt.Errorf("send %q: %w", name, err)
			}
			stamp = max(stamp, prev)
			if stamp > last {
				break // published after the round began: the next round sends it
			}
			items = append(items, item{stamp: stamp, db: db, file: f})
			prev = stamp
		}
	}
	sort.SliceStable(items, func(i, j int) bool { return items[i].stamp < items[j].stamp })
	gone := make(map[*DB]bool) // removed by retention meanwhile: a snapshot next round
	for _, it := range items {
		if gone[it.db] {
			continue
		}
		name := it.db.Name()
		pos, err := s.sendLog(st, it.db, []ltx.FileInfo{it.file}, sent[name])
		if errors.Is(err, os.ErrNotExist) {
			gone[it.db] = true
			continue
		} else if err != nil {
			return fmt.Errorf("send %q: %w", name, err)
		}
		sent[name] = pos
	}
	return nil
}

func (s *Server) heartbeat(st *streamWriter) error {
	return st.json(frameHeartbeat, streamHeartbeat{TimeMS: time.Now().UnixMilli(), Positions: s.positions()})
}

// sendPlan is what the primary sends a replica to bring one database up
// to its position.
type sendPlan struct {
	cur   ltx.Pos        // the primary's position
	files []ltx.FileInfo // the LTX files after the replica's position, in order
	// snapshot says to send a snapshot instead; divergent marks it as
	// replacing a history that differs from the primary's (or, unknown,
	// that the log can no longer check), which the replica keeps aside.
	snapshot, divergent, unknown bool
}

// planSend decides what brings a replica at position from up to db's
// position: the LTX files after from when the log still has them all and
// from is on the primary's history; otherwise a snapshot, marked divergent
// when the replica's history differs or cannot be checked. Nothing to send
// when from is the position (or the database has no transaction). With
// fromLog, a replica without the database gets the log's files when the
// log still starts at TXID 1 (its first file holds every page): a snapshot
// would wait for a commit in progress, and with lease.sync-replicas that
// commit waits for this replica.
func planSend(db *DB, from ltx.Pos, fromLog bool) (sendPlan, error) {
	cur := db.Pos()
	plan := sendPlan{cur: cur}
	if from == cur || cur.TXID == 0 {
		return plan, nil
	}
	files := db.Log().Files()
	switch {
	case from.TXID == 0 && fromLog && len(files) > 0 && files[0].MinTXID == 1:
		return planFiles(plan, files, 1), nil
	case from.TXID == 0:
		plan.snapshot = true
		return plan, nil
	case from.TXID > cur.TXID:
		plan.snapshot, plan.divergent = true, true
		return plan, nil
	}
	want, found := cur.Checksum, from.TXID == cur.TXID
	for _, f := range files {
		if f.MaxTXID == from.TXID {
			var err error
			if want, err = ltx.ReadTrailer(db.Log().Path(f.MinTXID, f.MaxTXID)); err != nil {
				return plan, err
			}
			found = true
		}
	}
	if !found {
		// Past retention, or a log that starts with a snapshot: the log
		// cannot tell whether the replica's transactions are the
		// primary's, so its state is kept aside, as if it diverged.
		plan.snapshot, plan.divergent, plan.unknown = true, true, true
		return plan, nil
	} else if want != from.Checksum {
		plan.snapshot, plan.divergent = true, true
		return plan, nil
	}
	return planFiles(plan, files, from.TXID+1), nil
}

// planFiles plans to send the log's files from TXID next up to the
// position, or a snapshot if they do not all chain.
func planFiles(plan sendPlan, files []ltx.FileInfo, next ltx.TXID) sendPlan {
	cur := plan.cur
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
			break // a gap: retention removed files, or a snapshot starts the log
		}
		plan.files = append(plan.files, f)
		next = f.MaxTXID + 1
	}
	if next <= cur.TXID {
		plan.files, plan.snapshot = nil, true
	}
	return plan
}

// sendDB brings a replica at position from up to the database's position
// and returns the position sent (see planSend).
func (s *Server) sendDB(ctx context.Context, st *streamWriter, db *DB, from ltx.Pos, logger *slog.Logger) (ltx.Pos, error) {
	plan, err := planSend(db, from, s.Store.syncTracker() != nil)
	if err != nil {
		return from, err
	}
	if !plan.snapshot && len(plan.files) == 0 {
		return from, nil
	}
	if !plan.snapshot {
		pos, err := s.sendLog(st, db, plan.files, from)
		if err == nil {
			return pos, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return from, err
		}
		// Removed by retention meanwhile: a snapshot instead.
	}
	logSnapshot(logger, db, plan, from)
	return s.sendSnapshot(ctx, st, db, plan.divergent, snapshotStamped)
}

// logSnapshot says why a replica at from is sent a snapshot, before it is
// written: writing one waits for a transaction in progress.
func logSnapshot(logger *slog.Logger, db *DB, plan sendPlan, from ltx.Pos) {
	if plan.unknown {
		logger.Warn("the log no longer reaches back to the replica's position, so it cannot tell whether the replica's history is the primary's; sending a snapshot, and the replica keeps its state aside",
			slog.String(LogKeyDB, db.Name()), slog.String("replica_pos", from.String()), slog.String("pos", plan.cur.String()))
	} else if plan.divergent {
		logger.Warn("replica's history differs from the primary's; sending a snapshot",
			slog.String(LogKeyDB, db.Name()), slog.String("replica_pos", from.String()), slog.String("pos", plan.cur.String()))
	}
}

// sendLog sends the LTX files of a plan and returns the position reached.
func (s *Server) sendLog(st *streamWriter, db *DB, files []ltx.FileInfo, from ltx.Pos) (ltx.Pos, error) {
	for _, f := range files {
		path := db.Log().Path(f.MinTXID, f.MaxTXID)
		if err := s.sendFile(st, path, streamBegin{DB: db.Name()}); err != nil {
			return from, err
		}
		post, err := ltx.ReadTrailer(path)
		if err != nil {
			return from, err
		}
		from = ltx.Pos{TXID: f.MaxTXID, Checksum: post}
	}
	return from, nil
}

// sendSnapshot streams a snapshot of db: the database is copied at its
// position (commits wait only for the copy), then the copy is encoded
// straight into the stream as an LTX snapshot, with no file built first.
// Its size is not known ahead (the pages are compressed), so it is marked
// streamed: the end frame ends it, and the replica relies on the LTX
// file's own checksums and trailer to know it is whole.
func (s *Server) sendSnapshot(ctx context.Context, st *streamWriter, db *DB, divergent bool, stamping snapshotStamp) (ltx.Pos, error) {
	f, err := os.CreateTemp(s.Store.TempDir(), "snapshot-*.db")
	if err != nil {
		return ltx.Pos{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	hdr, post, err := db.CopySnapshot(ctx, f, stamping)
	if err != nil {
		return ltx.Pos{}, err
	}
	if err := st.json(frameBegin, streamBegin{DB: db.Name(), Snapshot: true, Divergent: divergent, Streamed: true}); err != nil {
		return ltx.Pos{}, err
	}
	cw := newChunkWriter(st.w)
	if err := EncodeSnapshot(ctx, f, hdr, post, cw); err != nil {
		return ltx.Pos{}, err
	}
	if err := cw.flush(); err != nil {
		return ltx.Pos{}, err
	}
	if err := writeFrame(st.w, frameEnd, nil); err != nil {
		return ltx.Pos{}, err
	}
	s.Store.Metrics.snapshotSent()
	return ltx.Pos{TXID: hdr.MaxTXID, Checksum: post}, nil
}

// chunkWriter cuts what is written to it into chunk frames of chunkSize,
// each built in place (no copy of the payload to frame it).
type chunkWriter struct {
	w   io.Writer
	buf []byte // the frame being filled: type and length, then the payload
}

const frameHeaderSize = 5

func newChunkWriter(w io.Writer) *chunkWriter {
	return &chunkWriter{w: w, buf: make([]byte, frameHeaderSize, frameHeaderSize+chunkSize+4)}
}

func (cw *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(len(p), frameHeaderSize+chunkSize-len(cw.buf))
		cw.buf = append(cw.buf, p[:k]...)
		p = p[k:]
		if len(cw.buf) == frameHeaderSize+chunkSize {
			if err := cw.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

// flush sends the frame filled so far, as writeFrame would.
func (cw *chunkWriter) flush() error {
	if len(cw.buf) == frameHeaderSize {
		return nil
	}
	cw.buf[0] = frameChunk
	binary.BigEndian.PutUint32(cw.buf[1:], uint32(len(cw.buf)-frameHeaderSize))
	b := binary.BigEndian.AppendUint32(cw.buf, crc32.Checksum(cw.buf, castagnoli))
	_, err := cw.w.Write(b)
	cw.buf = cw.buf[:frameHeaderSize]
	return err
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
