package replica

import (
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

// Synchronous replication (lease.sync-replicas): a commit on the primary
// returns only once enough candidates hold it durably. Candidates report
// what they hold (POST /ack, see StreamClient); the commit path waits on a
// notification from those reports, never by polling.
const (
	// DefaultSyncTimeout is how long a commit waits for acknowledgements.
	DefaultSyncTimeout = 2 * time.Second
	// SyncFallbackFail fails a commit no candidate acknowledged in time.
	SyncFallbackFail = "fail"
	// SyncFallbackAsync lets the primary go on asynchronously instead,
	// until a candidate has caught up.
	SyncFallbackAsync = "async"
)

// Values of NodeInfo.SyncMode on a primary with sync-replicas set.
const (
	SyncModeSync  = "sync"  // commits wait for candidates
	SyncModeAsync = "async" // fallen back: commits do not wait
)

// syncTracker decides when a waiting commit may return. It keeps, per
// candidate stream, the positions the candidate holds durably, and the
// positions of the commits it let return ("released"). A commit is
// released once sync-replicas candidates hold it and everything released
// before it, decided one commit at a time under mu: the candidates that
// released the newest commit therefore hold every released commit, in
// every database, whatever order the stream sent them in. That is what
// the election needs (see Role.elect).
type syncTracker struct {
	replicas int
	timeout  time.Duration
	fallback string
	logger   *slog.Logger
	metrics  *Metrics

	mu       sync.Mutex
	acks     map[string]syncAck // stream session -> what that candidate holds
	released map[string]ltx.Pos // db -> newest released (or inherited) position
	latest   map[string]ltx.Pos // db -> newest committed position
	// The newest stamps released and committed. A candidate counts for a
	// commit only if its own stamp (Store.Stamp, what the election
	// compares) is at least the commit's: a candidate that holds a commit
	// by a snapshot (which carries no stamp, see sendOrdered) but has not
	// yet received a newer file would otherwise be a holder an election
	// could pass over.
	releasedStamp, latestStamp ltx.Stamp
	waiters                    []*syncWaiter // in commit order
	async                      bool          // fallen back to asynchronous replication
	err                        error         // set while demoting: waiting commits fail with it

	// Publish order: every commit reserves the next place (its stamp,
	// see ltx.Stamp) before its LTX file is written, and the stream sends
	// files in stamp order up to the watermark, below which every place
	// is filled (published) or given up (see Server.sendOrdered). So a
	// candidate always holds a prefix of the primary's history across
	// databases, and any two candidates' positions are ordered by their
	// newest stamps: the one with the newer stamp has everything the
	// other has of every acknowledged transaction. The election needs it.
	term    uint64                 // the lease term this primary writes under
	seq     uint64                 // the last place given out
	pending map[ltx.Stamp]struct{} // places reserved, not yet filled or given up
}

// syncAck is what a candidate reported holding.
type syncAck struct {
	pos   map[string]ltx.Pos
	stamp ltx.Stamp
}

type syncWaiter struct {
	db    string
	pos   ltx.Pos
	stamp ltx.Stamp
	done  chan struct{} // closed when released or aborted
	err   error         // why it was aborted
}

func newSyncTracker(replicas int, timeout time.Duration, fallback string, logger *slog.Logger, m *Metrics) *syncTracker {
	if timeout <= 0 {
		timeout = DefaultSyncTimeout
	}
	return &syncTracker{
		replicas: replicas, timeout: timeout, fallback: fallback, logger: logger, metrics: m,
		acks: make(map[string]syncAck), released: make(map[string]ltx.Pos), latest: make(map[string]ltx.Pos),
		pending: make(map[ltx.Stamp]struct{}),
	}
}

// reset starts a term as primary at positions, writing under the lease
// term: everything this node holds counts as released, since it cannot
// tell which of it the previous primary acknowledged.
func (t *syncTracker) reset(positions map[string]ltx.Pos, term uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.acks = make(map[string]syncAck)
	t.released, t.latest = make(map[string]ltx.Pos), make(map[string]ltx.Pos)
	t.releasedStamp, t.latestStamp = 0, 0
	maps.Copy(t.released, positions)
	maps.Copy(t.latest, positions)
	t.async, t.err = false, nil
	t.term, t.seq, t.pending = term, 0, make(map[ltx.Stamp]struct{})
	t.metrics.syncMode(false)
}

// reserve returns the stamp of a commit about to be logged: the next
// place in the publish order, which stays reserved, holding the watermark
// below it, until the commit is published or cancelled.
func (t *syncTracker) reserve() ltx.Stamp {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.seq++
	s := ltx.NewStamp(t.term, t.seq)
	t.pending[s] = struct{}{}
	return s
}

// cancel gives up a reserved place: its commit was not logged.
func (t *syncTracker) cancel(s ltx.Stamp) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.pending, s)
}

// watermark returns the stamp up to which every place in the publish
// order is published or given up (and every earlier term's).
func (t *syncTracker) watermark() ltx.Stamp {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := ltx.NewStamp(t.term, t.seq)
	for s := range t.pending {
		w = min(w, s-1)
	}
	return w
}

// abort fails every waiting commit with err, and those that start until
// the next reset: the node is stepping down.
func (t *syncTracker) abort(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.err = err
	for _, w := range t.waiters {
		w.err = err
		close(w.done)
	}
	t.waiters = nil
}

// mode returns SyncModeSync or SyncModeAsync.
func (t *syncTracker) mode() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.async {
		return SyncModeAsync
	}
	return SyncModeSync
}

// ack records that the candidate on stream session holds positions
// durably, with stamp its newest (see Store.Stamp), and releases the
// commits that now may return.
func (t *syncTracker) ack(session string, positions map[string]ltx.Pos, stamp ltx.Stamp) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.acks[session] = syncAck{pos: positions, stamp: stamp}
	t.releaseLocked()
}

// drop forgets a candidate whose stream ended.
func (t *syncTracker) drop(session string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.acks, session)
}

// forget forgets a deleted database.
func (t *syncTracker) forget(db string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.released, db)
	delete(t.latest, db)
	t.releaseLocked()
}

// covers reports whether a candidate holding have holds every position
// in want. A TXID beyond the wanted one counts: the stream verified the
// candidate's history before its acknowledgements count, and a history
// that a take-back (see DB.awaitSync) left behind never goes past the
// TXID taken back.
func covers(have, want map[string]ltx.Pos) bool {
	for db, w := range want {
		if w.TXID == 0 {
			continue
		}
		h := have[db]
		if h.TXID < w.TXID || (h.TXID == w.TXID && h != w) {
			return false
		}
	}
	return true
}

// holders counts the candidates holding every position in want, with a
// stamp of at least stamp.
func (t *syncTracker) holders(want map[string]ltx.Pos, stamp ltx.Stamp) int {
	n := 0
	for _, have := range t.acks {
		if have.stamp >= stamp && covers(have.pos, want) {
			n++
		}
	}
	return n
}

// releaseLocked releases, in commit order, each waiting commit that
// enough candidates hold together with everything released before it,
// and returns to synchronous mode once enough candidates hold every
// committed position. t.mu held.
func (t *syncTracker) releaseLocked() {
	if t.async {
		if t.holders(t.latest, t.latestStamp) >= t.replicas {
			t.async = false
			t.released, t.releasedStamp = maps.Clone(t.latest), t.latestStamp
			t.metrics.syncMode(false)
			t.logger.Warn("a candidate caught up: replication is synchronous again; commits wait for candidates' acknowledgements",
				slog.Int("sync_replicas", t.replicas))
		}
		return
	}
	kept := t.waiters[:0]
	for _, w := range t.waiters {
		want := maps.Clone(t.released)
		want[w.db] = w.pos
		stamp := max(t.releasedStamp, w.stamp)
		if t.holders(want, stamp) >= t.replicas {
			t.released, t.releasedStamp = want, stamp
			close(w.done)
			continue
		}
		kept = append(kept, w)
	}
	clear(t.waiters[len(kept):])
	t.waiters = kept
}

// publish publishes the commit, stamped s, that moves database db to pos
// (publish makes the position visible), and returns what to wait on: nil
// in asynchronous mode, when the commit need not wait. It fails if the
// node is stepping down; s's place is filled either way.
func (t *syncTracker) publish(db string, pos ltx.Pos, s ltx.Stamp, publish func()) (*syncWaiter, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.pending, s)
	if t.err != nil {
		return nil, t.err
	}
	t.latest[db] = pos
	t.latestStamp = max(t.latestStamp, s)
	publish()
	if t.async {
		t.releaseLocked() // the new position may be what a candidate already holds
		return nil, nil
	}
	w := &syncWaiter{db: db, pos: pos, stamp: s, done: make(chan struct{})}
	t.waiters = append(t.waiters, w)
	t.releaseLocked()
	return w, nil
}

// wait reserves a place, publishes as publish does and waits as await
// does.
func (t *syncTracker) wait(db string, prev, pos ltx.Pos) error {
	w, err := t.publish(db, pos, t.reserve(), func() {})
	if err != nil || w == nil {
		return err
	}
	return t.await(w, prev)
}

// await returns once enough candidates hold the commit w waits for (and
// every commit released before it). With no acknowledgement within the
// timeout it takes the commit out of the publish order, back to prev, and
// returns an error wrapping ErrSyncTimeout, or, with fallback async,
// switches to asynchronous replication and returns nil.
func (t *syncTracker) await(w *syncWaiter, prev ltx.Pos) error {
	db, pos := w.db, w.pos
	timer := time.NewTimer(t.timeout)
	defer timer.Stop()
	select {
	case <-w.done:
		return w.err
	case <-timer.C:
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-w.done: // released (or aborted) as the timer fired
		return w.err
	default:
	}
	for i, x := range t.waiters {
		if x == w {
			t.waiters = append(t.waiters[:i], t.waiters[i+1:]...)
			break
		}
	}
	t.metrics.syncTimedOut()
	if t.fallback == SyncFallbackAsync {
		// Every waiting commit goes on: the mode changes for all.
		t.async = true
		for _, x := range t.waiters {
			close(x.done)
		}
		t.waiters = nil
		t.metrics.syncMode(true)
		t.logger.Error("no candidate acknowledged a commit within lease.sync-timeout; replication is now asynchronous (lease.sync-fallback: async) until a candidate catches up: a failover now may lose the newest transactions",
			slog.String(LogKeyDB, db), slog.String(LogKeyTXID, pos.TXID.String()), slog.Duration("sync_timeout", t.timeout),
			slog.Int("candidates_acknowledging", len(t.acks)))
		return nil
	}
	t.latest[db] = prev
	return fmt.Errorf("%w: database %q txid %s, %d of %d candidates (waited %s)",
		ErrSyncTimeout, db, pos.TXID, t.holders(map[string]ltx.Pos{db: pos}, w.stamp), t.replicas, t.timeout)
}
