package replica

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/litefs-project/litefs/lease"
	"github.com/litefs-project/litefs/ltx"
)

// DefaultHandoffTimeout bounds how long a handoff waits for its target.
const DefaultHandoffTimeout = 5 * time.Second

const (
	// defaultElectionWait is how long a candidate waits, after
	// publishing its position, for the other candidates to publish theirs.
	defaultElectionWait = 200 * time.Millisecond
	// candidateFresh is how recent a published position must be to count.
	candidateFresh = 3 * time.Second
	// handoffGrace is how long other candidates leave a lease handed to
	// one of them before they elect among themselves.
	handoffGrace = 2 * time.Second
)

// WriteGate is the mount as the role sees it: the Gate the apply path
// uses, and a way to stop writes to a database for a handoff.
type WriteGate interface {
	Gate
	// LockWrites waits until no connection writes to db and keeps
	// writers out until unlock is called.
	LockWrites(ctx context.Context, db string) (unlock func() error, err error)
}

// Cluster is how the role reaches the other nodes. NetCluster is the real
// one: the replication stream and the node API over HTTP.
type Cluster interface {
	// Follow streams from the primary p until stop is called.
	Follow(ctx context.Context, p lease.PrimaryInfo) (stop func())
	// Connected returns the replicas connected to this node as primary.
	Connected() []ReplicaInfo
	// Info returns a node's positions.
	Info(ctx context.Context, url string) (NodeInfo, error)
	// WaitPositions waits until a node is at every position in want.
	WaitPositions(ctx context.Context, url string, want map[string]ltx.Pos) (NodeInfo, error)
	// Handoff asks the primary at url to hand its lease to node to.
	Handoff(ctx context.Context, url, to string) (HandoffResult, error)
}

// Role manages the node's role on a lease: it follows the primary the
// lease names, takes the lease when it is free and this node is the best
// candidate, ends the session of a primary that stopped renewing, renews
// its own lease and steps down before it could expire, and hands the lease
// off on request or at stop. Every lease takes this path; the static one
// simply hands the lease to its candidate and never expires.
type Role struct {
	Leaser  lease.Leaser
	Store   *Store
	Gate    WriteGate
	Cluster Cluster
	Logger  *slog.Logger
	// Promote asks the primary for the lease once this candidate has
	// caught up (lease.promote).
	Promote bool
	// HandoffTimeout bounds how long a handoff waits for its target.
	HandoffTimeout time.Duration
	// SyncReplicas is lease.sync-replicas: with it set, a candidate wins
	// an election only if it saw the positions of enough other candidates
	// (see ElectionQuorum) and none was ahead (see elect).
	SyncReplicas int
	// Candidates is lease.candidates: how many candidates the cluster
	// has, the primary included; zero: at most 2*SyncReplicas+1.
	Candidates int

	self                  lease.Node
	ttl, interval, margin time.Duration
	electionWait          time.Duration // see defaultElectionWait

	// mu serialises role changes: renewals, handoffs and promotions.
	mu        sync.Mutex
	lease     lease.Lease // held while primary
	following string      // the primary's URL the stream follows
	stopRepl  func()      // stops following

	handingOff bool      // a handoff is in progress
	stopping   bool      // the node is stopping: it must not take the lease
	promoted   bool      // lease.promote: the handoff to this node was asked for
	promotedAt time.Time // when it was last asked for

	// run loop state
	index       uint64
	session     string    // the holder's session last seen
	changed     time.Time // when the key last changed while held by it
	handoffSeen time.Time // when a lease handed to another node was seen
	lastErr     time.Time

	warnedCandidates int // the candidate count checkCandidates last logged
}

// NewRole returns the role manager of a node on leaser.
func NewRole(leaser lease.Leaser, store *Store, gate WriteGate, cluster Cluster) *Role {
	ttl := leaser.Expiry()
	interval := time.Second
	if ttl > 0 {
		interval = min(max(ttl/10, 100*time.Millisecond), time.Second)
	}
	return &Role{
		Leaser: leaser, Store: store, Gate: gate, Cluster: cluster, Logger: store.Logger,
		HandoffTimeout: DefaultHandoffTimeout,
		self:           leaser.Self(),
		ttl:            ttl,
		electionWait:   defaultElectionWait,
		interval:       interval,
		// The primary stops writing this long before its lease could
		// expire; candidates wait the full TTL after the last renewal
		// they saw, and the lock delay after that.
		margin: max(ttl/5, 2*interval),
	}
}

// Begin takes, before the store opens, a lease that never expires and is
// handed to this node (the static lease's primary): such a node is the
// primary from its start. It reports whether it did.
func (r *Role) Begin(ctx context.Context) (bool, error) {
	if r.ttl != 0 || !r.self.Candidate {
		return false, nil
	}
	st, err := r.Leaser.Watch(ctx, 0, 0)
	if err != nil || st.HandoffTo != r.self.Hostname {
		return false, err
	}
	l, err := r.Leaser.Acquire(ctx)
	if err != nil {
		return false, err
	}
	r.mu.Lock()
	r.lease = l
	r.mu.Unlock()
	r.Store.SetTerm(l.Term())
	r.Store.SetPrimary(true)
	r.Store.SetFence(time.Time{})
	return true, nil
}

// IsPrimary reports whether this node holds the lease.
func (r *Role) IsPrimary() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lease != nil
}

// Run manages the node's role until ctx ends. It never releases the lease
// itself: Stop hands it off, while Run goes on renewing it.
func (r *Role) Run(ctx context.Context) {
	for ctx.Err() == nil {
		r.Step(ctx)
	}
}

// Step runs one round of the role: on the primary, renewals until the
// lease is lost or handed off; on a replica, one look at the lease and
// what follows from it.
func (r *Role) Step(ctx context.Context) {
	if r.IsPrimary() {
		r.renewLoop(ctx)
		r.index, r.session = 0, ""
		return
	}
	sent := time.Now()
	st, err := r.Leaser.Watch(ctx, r.index, r.interval)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		if time.Since(r.lastErr) > 5*time.Second {
			r.Logger.Warn("cannot reach the lease; replicas keep serving reads from local data, and no node can become primary until it is back",
				slog.String("lease", r.Leaser.Type()), slog.Any(LogKeyError, err))
			r.lastErr = time.Now()
		}
		sleep(ctx, r.interval)
		return
	}
	now := time.Now()
	if st.Index != r.index || st.Session != r.session {
		r.changed = now
	}
	// The answer tells the key's state when it was given, between sent
	// and now. A prompt answer counts as of now; one held up in the
	// network (by a partition that has healed) only as of when it was
	// asked for: it tells nothing of the time it spent there, while the
	// primary may have renewed all along.
	seen := now
	if now.Sub(sent) > 2*r.interval {
		seen = sent
	}
	if st.Index < r.index { // the lease's store restarted with new state
		st.Index = 0
	}
	r.index, r.session = st.Index, st.Session

	if st.Session != "" {
		r.handoffSeen = time.Time{}
		if st.Primary.Hostname == r.self.Hostname {
			// This node does not hold the lease, so the session is a
			// previous run's: end it rather than wait it out.
			r.Logger.Info("ending the lease session of this node's previous run", slog.String("session", st.Session))
			if err := r.Leaser.EndSession(ctx, st.Session); err != nil {
				r.Logger.Warn("end session", slog.Any(LogKeyError, err))
			}
			return
		}
		r.follow(ctx, st.Primary)
		if r.self.Candidate && r.ttl > 0 && seen.Sub(r.changed) > r.ttl {
			r.Logger.Warn("the primary has not renewed its lease within the TTL; ending its session so that a candidate takes over",
				slog.String("primary", st.Primary.Hostname), slog.Duration("ttl", r.ttl))
			if err := r.Leaser.EndSession(ctx, st.Session); err != nil {
				r.Logger.Warn("end session", slog.Any(LogKeyError, err))
			}
			return
		}
		r.maybePromote(ctx, st.Primary)
		return
	}
	if !r.self.Candidate {
		return
	}
	if st.HandoffTo != "" && st.HandoffTo != r.self.Hostname {
		if r.handoffSeen.IsZero() {
			r.handoffSeen = now
		}
		if now.Sub(r.handoffSeen) < handoffGrace {
			return // the lease is meant for another candidate
		}
	}
	if !r.elect(ctx, st.HandoffTo == r.self.Hostname, st.Term) {
		r.index = 0 // look again soon: the lock delay may be passing
		sleep(ctx, 50*time.Millisecond)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// txids returns the node's position in every database.
func (r *Role) txids() map[string]uint64 {
	a := make(map[string]uint64)
	for _, db := range r.Store.DBs() {
		a[db.Name()] = uint64(db.Pos().TXID)
	}
	return a
}

// position returns the node's position as the election compares it.
func (r *Role) position() lease.Position {
	return lease.Position{TXIDs: r.txids(), Stamp: uint64(r.Store.Stamp())}
}

// ElectionQuorum returns how many other candidates' positions a candidate
// must see before it takes a free lease, with sync-replicas k (k > 0) and
// n candidates in the cluster (0: at most 2k+1). An acknowledged
// transaction is on k candidates besides the primary; when the primary
// is gone, n-1 candidates remain, and a candidate that saw q others (q+1
// positions with its own) saw one of those k whenever q+1+k > n-1, that
// is q >= n-1-k. Seeing none ahead of it, it holds every acknowledged
// transaction (see lease.Ahead and syncTracker). It is never below k.
func ElectionQuorum(k, n int) int {
	if k <= 0 {
		return 0
	}
	return max(k, n-1-k)
}

// elect takes the free lease unless another candidate is ahead of this
// node; handedOff skips the wait when the lease was handed to this node.
// ended is the term of the lease that ended (lease.State.Term): only
// positions published since then count, since a candidate's position from
// an earlier election leaves out what it received from the primary since.
func (r *Role) elect(ctx context.Context, handedOff bool, ended uint64) bool {
	r.mu.Lock()
	stopping := r.stopping
	r.mu.Unlock()
	if stopping {
		return false
	}
	mine := r.position()
	mine.Election = ended
	if !handedOff {
		if err := r.Leaser.Publish(ctx, mine); err != nil {
			r.Logger.Warn("publish position for the election", slog.Any(LogKeyError, err))
			return false
		}
		sleep(ctx, r.electionWait)
		cands, err := r.Leaser.Candidates(ctx, time.Now().Add(-candidateFresh))
		if err != nil {
			r.Logger.Warn("read the other candidates' positions", slog.Any(LogKeyError, err))
			return false
		}
		others := 0
		for _, c := range cands {
			if c.Hostname == r.self.Hostname || c.Election != ended {
				continue
			}
			others++
			if lease.Ahead(c.Position(), mine) {
				r.Logger.Info("no primary; another candidate has newer transactions and should take the lease",
					slog.String("candidate", c.Hostname), slog.Any("its_txids", c.TXIDs), slog.String("its_stamp", ltx.Stamp(c.Stamp).String()),
					slog.Any("txids", mine.TXIDs), slog.String("stamp", ltx.Stamp(mine.Stamp).String()))
				return false
			}
		}
		// With synchronous replication the acknowledged transactions are
		// on sync-replicas candidates besides the dead primary: a
		// candidate that heard from too few may be missing them.
		if q := ElectionQuorum(r.SyncReplicas, r.Candidates); others < q {
			r.Logger.Info("no primary; waiting to hear from enough other candidates (lease.sync-replicas, lease.candidates) before taking the lease, so that none holding acknowledged transactions is passed over",
				slog.Int("heard_from", others), slog.Int("needed", q), slog.Int("sync_replicas", r.SyncReplicas))
			return false
		}
	}
	l, err := r.Leaser.Acquire(ctx)
	if errors.Is(err, lease.ErrPrimaryExists) {
		return false // taken by another candidate, or in its lock delay
	} else if err != nil {
		r.Logger.Warn("acquire the primary lease", slog.Any(LogKeyError, err))
		return false
	}
	r.promote(l)
	return true
}

// term returns the term this node writes under with lease l: the
// lease's. A term not above every term in the node's data means the
// lease's store lost its state (a Consul server started anew): the node
// then writes under the term after its data's, logs it, and elections
// order transactions by terms only as far as every candidate saw them.
func (r *Role) term(l lease.Lease) uint64 {
	term, held := l.Term(), r.Store.Stamp().Term()
	if term > held && term <= ltx.MaxTerm {
		return term
	}
	next := min(held+1, ltx.MaxTerm)
	r.Logger.Error("the lease's term is not above the terms of this node's data: its store lost its state or ran out of terms; writing under the next term after the data's",
		slog.Uint64("lease_term", term), slog.Uint64("data_term", held), slog.Uint64("term", next))
	return next
}

// checkCandidates logs, on a primary with sync-replicas set, when more
// candidates are connected than elections were set up for (see
// ElectionQuorum): an election could then pass over the candidates that
// hold acknowledged transactions. Once per count seen.
func (r *Role) checkCandidates() {
	if r.SyncReplicas <= 0 {
		return
	}
	seen := map[string]bool{r.self.Hostname: true} // a node reconnecting may briefly have two streams
	for _, c := range r.Cluster.Connected() {
		if c.Candidate {
			seen[c.Node] = true
		}
	}
	n := len(seen)
	limit := r.Candidates
	if limit == 0 {
		limit = 2*r.SyncReplicas + 1
	}
	if n <= limit || n == r.warnedCandidates {
		return
	}
	r.warnedCandidates = n
	r.Logger.Error("more candidates are connected than elections are set up for: after a crash, an election could pass over the candidates holding acknowledged transactions. Set lease.candidates on every node to the number of candidates",
		slog.Int("candidates", n), slog.Int("lease_candidates", r.Candidates), slog.Int("sync_replicas", r.SyncReplicas))
}

// fence returns the time from which the holder of l must stop writing.
func (r *Role) fence(l lease.Lease) time.Time {
	d := l.Deadline()
	if d.IsZero() {
		return d // never expires
	}
	return d.Add(-r.margin)
}

// promote makes this node the primary with lease l.
func (r *Role) promote(l lease.Lease) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopFollowing()
	r.lease = l
	r.Store.SetTerm(r.term(l))
	r.Store.Promote(r.fence(l))
	r.Logger.Info("this node is now the primary; SQLite connections it opened as a replica stay read-only, reopen them to write",
		slog.Any("txids", r.txids()))
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = r.Leaser.Unpublish(ctx)
	}()
	r.warnMovedAside()
}

// warnMovedAside says, on becoming primary, which databases were moved
// aside at start: the cluster goes on without those copies.
func (r *Role) warnMovedAside() {
	for _, p := range r.Store.MovedAside {
		r.Logger.Warn("a database was moved aside at start because it did not match its log; this primary goes on without that copy. To restore it, run sqlite3 on the mount's database with \".restore FILE\" using the file named here",
			slog.String(LogKeyPath, p))
	}
}

// renewLoop renews the lease until it is lost, not renewed in time, or
// handed off; the node then steps down.
func (r *Role) renewLoop(ctx context.Context) {
	var warned time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(r.interval):
		}
		r.mu.Lock()
		l := r.lease
		if l == nil { // handed off
			r.mu.Unlock()
			return
		}
		rctx, cancel := context.WithTimeout(ctx, r.interval)
		err := l.Renew(rctx)
		cancel()
		fence := r.fence(l)
		switch {
		case err == nil:
			r.Store.SetFence(fence)
			r.mu.Unlock()
			r.checkCandidates()
			continue
		case ctx.Err() != nil:
			r.mu.Unlock()
			return
		case errors.Is(err, lease.ErrLeaseLost):
			r.Logger.Error("the primary lease is lost; stepping down to replica", slog.Any(LogKeyError, err))
		case fence.IsZero() || time.Now().Before(fence):
			if time.Since(warned) > time.Second {
				r.Logger.Warn("cannot renew the primary lease; writes stop at the fence unless a renewal succeeds",
					slog.Time("fence", fence), slog.Any(LogKeyError, err))
				warned = time.Now()
			}
			r.mu.Unlock()
			continue
		default:
			r.Logger.Error("the primary lease was not renewed in time; writes are refused and the node steps down to replica before the lease can expire",
				slog.Any(LogKeyError, err))
		}
		r.lease = nil
		r.demoteLocked(ctx)
		r.mu.Unlock()
		go func() { _ = l.Close() }() // best effort: the lease's store may be down
		return
	}
}

// demoteLocked steps the node down to replica. r.mu held.
func (r *Role) demoteLocked(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	r.Store.Metrics.demoted()
	if err := r.Store.Demote(ctx, r.Gate); err != nil {
		r.Logger.Error("stepping down", slog.Any(LogKeyError, err))
	}
	r.Logger.Info("this node is now a replica")
}

// follow points replication at the primary p.
func (r *Role) follow(ctx context.Context, p lease.PrimaryInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lease != nil || (r.following == p.AdvertiseURL && r.stopRepl != nil) {
		return
	}
	r.stopFollowing()
	r.Store.SetPrimaryURL(p.AdvertiseURL)
	r.following, r.stopRepl = p.AdvertiseURL, r.Cluster.Follow(ctx, p)
	attrs := []any{slog.String("url", p.AdvertiseURL)}
	if p.Hostname != "" {
		attrs = append(attrs, slog.String("primary", p.Hostname))
	}
	r.Logger.Info("following the primary", attrs...)
}

// stopFollowing stops replication, if any. r.mu held.
func (r *Role) stopFollowing() {
	if r.stopRepl != nil {
		r.stopRepl()
		r.stopRepl, r.following = nil, ""
	}
	r.Store.SetPrimaryURL("")
}

// maybePromote asks the primary, once this node has caught up with it, to
// hand the lease to this node (lease.promote).
func (r *Role) maybePromote(ctx context.Context, p lease.PrimaryInfo) {
	r.mu.Lock()
	done := r.promoted || time.Since(r.promotedAt) < 5*time.Second
	r.mu.Unlock()
	if !r.Promote || done {
		return
	}
	if !r.Store.Primary().Connected || r.Store.Lag() != 0 {
		return // not connected or not caught up yet
	}
	r.mu.Lock()
	r.promotedAt = time.Now()
	r.mu.Unlock()
	r.Logger.Info("lease.promote: asking the primary to hand off to this node", slog.String("primary", p.Hostname))
	// In the background: the role must be free to take the lease.
	go func() {
		res, err := r.Cluster.Handoff(ctx, p.AdvertiseURL, r.self.Hostname)
		if err != nil {
			r.Logger.Warn("lease.promote: handoff failed; retrying in 5s", slog.Any(LogKeyError, err))
			return
		}
		r.mu.Lock()
		r.promoted = true
		r.mu.Unlock()
		r.Logger.Info("lease.promote: handoff done", slog.String("from", res.From), slog.Int64("window_ms", res.WindowMS))
	}()
}

// Close stops replication; Run has returned.
func (r *Role) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopFollowing()
}
