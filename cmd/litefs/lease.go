package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/litefs-project/litefs/lease"
	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/replica"
)

// DefaultHandoffTimeout bounds how long a handoff waits for its target.
const DefaultHandoffTimeout = 5 * time.Second

const (
	// electionWait is how long a candidate waits, after publishing its
	// position, for the other candidates to publish theirs.
	electionWait = 200 * time.Millisecond
	// candidateFresh is how recent a published position must be to count.
	candidateFresh = 3 * time.Second
	// handoffGrace is how long other candidates leave a lease handed to
	// one of them before they elect among themselves.
	handoffGrace = 2 * time.Second
)

// leaseManager runs a node on the Consul lease: it follows the primary
// named in the lease, takes the lease when it is free and this node is the
// best candidate, ends the session of a primary that stopped renewing,
// renews its own lease and steps down before it could expire, and hands
// the lease off on request.
type leaseManager struct {
	cmd    *MountCommand
	consul *lease.Consul
	logger *slog.Logger

	ttl, interval, margin time.Duration

	// mu serialises role changes: renewals, handoffs and promotions.
	mu        sync.Mutex
	lease     lease.Lease // held while primary
	following string      // the primary's URL the client streams from
	stopRepl  func()      // stops the replication client

	handingOff bool      // a handoff is in progress
	stopping   bool      // the node is stopping: it must not take the lease
	promoted   bool      // lease.promote: the handoff to this node was asked for
	promotedAt time.Time // when it was last asked for
}

// primaryURL returns the API URL of the primary this node follows, or ""
// (also while a role change holds the manager).
func (m *leaseManager) primaryURL() string {
	if !m.mu.TryLock() {
		return ""
	}
	defer m.mu.Unlock()
	return m.following
}

func newLeaseManager(c *MountCommand) *leaseManager {
	cfg := c.Config.Lease
	l := lease.NewConsul(cfg.Consul.URL)
	l.Key, l.TTL, l.LockDelay = cfg.Consul.Key, cfg.Consul.TTL, cfg.Consul.LockDelay
	l.Candidate, l.Hostname, l.AdvertiseURL = cfg.Candidate, cfg.Hostname, cfg.AdvertiseURL
	ttl := cfg.Consul.TTL
	interval := min(max(ttl/10, 100*time.Millisecond), time.Second)
	return &leaseManager{
		cmd: c, consul: l, logger: c.Logger,
		ttl:      ttl,
		interval: interval,
		// The primary stops writing this long before its lease could
		// expire; candidates wait the full TTL after the last renewal
		// they saw, and the lock delay after that.
		margin: max(ttl/5, 2*interval),
	}
}

func (m *leaseManager) isPrimary() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lease != nil
}

// run manages the node's role until ctx ends. It never releases the lease
// itself: shutdown hands it off, while run goes on renewing it.
func (m *leaseManager) run(ctx context.Context) {
	var (
		index       uint64
		session     string    // the holder's session last seen
		changed     time.Time // when the key last changed while held by it
		handoffSeen time.Time // when a lease handed to another node was seen
		lastErr     time.Time
	)
	for ctx.Err() == nil {
		if m.isPrimary() {
			m.renewLoop(ctx)
			index, session = 0, ""
			continue
		}
		sent := time.Now()
		st, err := m.consul.Watch(ctx, index, m.interval)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if time.Since(lastErr) > 5*time.Second {
				m.logger.Warn("cannot reach Consul; replicas keep serving reads from local data, and no node can become primary until it is back",
					slog.String("consul", m.consul.URL), slog.Any(replica.LogKeyError, err))
				lastErr = time.Now()
			}
			sleep(ctx, m.interval)
			continue
		}
		now := time.Now()
		if st.Index != index || st.Session != session {
			changed = now
		}
		// The answer tells the key's state when Consul gave it, between
		// sent and now. A prompt answer counts as of now; one held up in
		// the network (by a partition that has healed) only as of when it
		// was asked for: it tells nothing of the time it spent there,
		// while the primary may have renewed all along.
		seen := now
		if now.Sub(sent) > 2*m.interval {
			seen = sent
		}
		if st.Index < index { // Consul restarted with new state
			st.Index = 0
		}
		index, session = st.Index, st.Session

		if st.Session != "" {
			handoffSeen = time.Time{}
			if st.Primary.Hostname == m.consul.Hostname {
				// This node does not hold the lease, so the session is
				// a previous run's: end it rather than wait it out.
				m.logger.Info("ending the lease session of this node's previous run", slog.String("session", st.Session))
				if err := m.consul.EndSession(ctx, st.Session); err != nil {
					m.logger.Warn("end session", slog.Any(replica.LogKeyError, err))
				}
				continue
			}
			m.follow(ctx, st.Primary)
			if m.consul.Candidate && seen.Sub(changed) > m.ttl {
				m.logger.Warn("the primary has not renewed its lease within the TTL; ending its session so that a candidate takes over",
					slog.String("primary", st.Primary.Hostname), slog.Duration("ttl", m.ttl))
				if err := m.consul.EndSession(ctx, st.Session); err != nil {
					m.logger.Warn("end session", slog.Any(replica.LogKeyError, err))
				}
				continue
			}
			m.maybePromote(ctx, st.Primary)
			continue
		}
		if !m.consul.Candidate {
			continue
		}
		if st.HandoffTo != "" && st.HandoffTo != m.consul.Hostname {
			if handoffSeen.IsZero() {
				handoffSeen = now
			}
			if now.Sub(handoffSeen) < handoffGrace {
				continue // the lease is meant for another candidate
			}
		}
		if !m.elect(ctx, st.HandoffTo == m.consul.Hostname) {
			index = 0 // look again soon: the lock delay may be passing
			sleep(ctx, 50*time.Millisecond)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// txids returns the node's position in every database.
func (m *leaseManager) txids() map[string]uint64 {
	a := make(map[string]uint64)
	for _, db := range m.cmd.Store.DBs() {
		a[db.Name()] = uint64(db.Pos().TXID)
	}
	return a
}

// elect takes the free lease unless another candidate is ahead of this
// node; handedOff skips the wait when the lease was handed to this node.
func (m *leaseManager) elect(ctx context.Context, handedOff bool) bool {
	m.mu.Lock()
	stopping := m.stopping
	m.mu.Unlock()
	if stopping {
		return false
	}
	mine := m.txids()
	if !handedOff {
		if err := m.consul.Publish(ctx, mine); err != nil {
			m.logger.Warn("publish position for the election", slog.Any(replica.LogKeyError, err))
			return false
		}
		sleep(ctx, electionWait)
		cands, err := m.consul.Candidates(ctx, time.Now().Add(-candidateFresh))
		if err != nil {
			m.logger.Warn("read the other candidates' positions", slog.Any(replica.LogKeyError, err))
			return false
		}
		for _, c := range cands {
			if c.Hostname != m.consul.Hostname && lease.Ahead(c.TXIDs, mine) {
				m.logger.Info("no primary; another candidate has more transactions and should take the lease",
					slog.String("candidate", c.Hostname), slog.Any("its_txids", c.TXIDs), slog.Any("txids", mine))
				return false
			}
		}
	}
	l, err := m.consul.Acquire(ctx)
	if errors.Is(err, lease.ErrPrimaryExists) {
		return false // taken by another candidate, or in its lock delay
	} else if err != nil {
		m.logger.Warn("acquire the primary lease", slog.Any(replica.LogKeyError, err))
		return false
	}
	m.promote(l)
	return true
}

// promote makes this node the primary with lease l.
func (m *leaseManager) promote(l lease.Lease) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopReplication()
	m.lease = l
	m.cmd.Store.Promote(l.Deadline().Add(-m.margin))
	m.logger.Info("this node is now the primary; SQLite connections it opened as a replica stay read-only, reopen them to write",
		slog.Any("txids", m.txids()))
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = m.consul.Unpublish(ctx)
	}()
	for _, p := range m.cmd.asideAtStart {
		m.logger.Warn("a database was moved aside at start because it did not match its log; this primary goes on without that copy. To restore it, run sqlite3 on the mount's database with \".restore FILE\" using the file named here",
			slog.String(replica.LogKeyPath, p))
	}
}

// renewLoop renews the lease until it is lost, not renewed in time, or
// handed off; the node then steps down.
func (m *leaseManager) renewLoop(ctx context.Context) {
	var warned time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(m.interval):
		}
		m.mu.Lock()
		l := m.lease
		if l == nil { // handed off
			m.mu.Unlock()
			return
		}
		rctx, cancel := context.WithTimeout(ctx, m.interval)
		err := l.Renew(rctx)
		cancel()
		fence := l.Deadline().Add(-m.margin)
		switch {
		case err == nil:
			m.cmd.Store.SetFence(fence)
			m.mu.Unlock()
			continue
		case ctx.Err() != nil:
			m.mu.Unlock()
			return
		case errors.Is(err, lease.ErrLeaseLost):
			m.logger.Error("the primary lease is lost; stepping down to replica", slog.Any(replica.LogKeyError, err))
		case time.Now().Before(fence):
			if time.Since(warned) > time.Second {
				m.logger.Warn("cannot renew the primary lease; writes stop at the fence unless a renewal succeeds",
					slog.Time("fence", fence), slog.Any(replica.LogKeyError, err))
				warned = time.Now()
			}
			m.mu.Unlock()
			continue
		default:
			m.logger.Error("the primary lease was not renewed in time; writes are refused and the node steps down to replica before the lease can expire",
				slog.Any(replica.LogKeyError, err))
		}
		m.lease = nil
		m.demoteLocked(ctx)
		m.mu.Unlock()
		go func() { _ = l.Close() }() // best effort: Consul may be down
		return
	}
}

// demoteLocked steps the node down to replica. m.mu held.
func (m *leaseManager) demoteLocked(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := m.cmd.Store.Demote(ctx, m.cmd.FS); err != nil {
		m.logger.Error("stepping down", slog.Any(replica.LogKeyError, err))
	}
	m.logger.Info("this node is now a replica")
}

// follow points the replication client at the primary.
func (m *leaseManager) follow(ctx context.Context, p lease.PrimaryInfo) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lease != nil || (m.following == p.AdvertiseURL && m.stopRepl != nil) {
		return
	}
	m.stopReplication()
	client := replica.NewClient(p.AdvertiseURL, m.cmd.Store, m.cmd.FS)
	client.Node, client.Logger = m.consul.Hostname, m.logger
	client.AdvertiseURL, client.Candidate = m.consul.AdvertiseURL, m.consul.Candidate
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = client.Run(cctx) }()
	m.following, m.stopRepl = p.AdvertiseURL, func() { cancel(); <-done }
	m.logger.Info("following the primary", slog.String("primary", p.Hostname), slog.String("url", p.AdvertiseURL))
}

// stopReplication stops the replication client, if any. m.mu held.
func (m *leaseManager) stopReplication() {
	if m.stopRepl != nil {
		m.stopRepl()
		m.stopRepl, m.following = nil, ""
	}
}

// maybePromote asks the primary, once this node has caught up with it, to
// hand the lease to this node (lease.promote).
func (m *leaseManager) maybePromote(ctx context.Context, p lease.PrimaryInfo) {
	m.mu.Lock()
	done := m.promoted || time.Since(m.promotedAt) < 5*time.Second
	m.mu.Unlock()
	if !m.cmd.Config.Lease.Promote || done {
		return
	}
	if m.cmd.Store.PrimaryHostname() == "" || m.cmd.Store.Lag() != 0 {
		return // not connected or not caught up yet
	}
	m.mu.Lock()
	m.promotedAt = time.Now()
	m.mu.Unlock()
	m.logger.Info("lease.promote: asking the primary to hand off to this node", slog.String("primary", p.Hostname))
	// In the background: this loop must be free to take the lease.
	go func() {
		res, err := requestHandoff(ctx, p.AdvertiseURL, m.consul.Hostname)
		if err != nil {
			m.logger.Warn("lease.promote: handoff failed; retrying in 5s", slog.Any(replica.LogKeyError, err))
			return
		}
		m.mu.Lock()
		m.promoted = true
		m.mu.Unlock()
		m.logger.Info("lease.promote: handoff done", slog.String("from", res.From), slog.Int64("window_ms", res.WindowMS))
	}()
}

// handoff passes the lease to the named connected candidate ("" for the
// one with the most transactions): writes stop, the target catches up
// (bounded by lease.handoff-timeout, then the lease is released to any
// candidate), and the lease is released for it. No transaction whose
// commit returned is lost: the target has them all before the release.
func (m *leaseManager) handoff(ctx context.Context, to string) (replica.HandoffResult, error) {
	return m.handoffTo(ctx, to, false)
}

// handoffTo is handoff; anyone says to release the lease even when no
// candidate is connected (the node is stopping).
func (m *leaseManager) handoffTo(ctx context.Context, to string, anyone bool) (replica.HandoffResult, error) {
	res := replica.HandoffResult{From: m.consul.Hostname}
	m.mu.Lock()
	l := m.lease
	switch {
	case l == nil:
		m.mu.Unlock()
		primary := m.cmd.Store.PrimaryHostname()
		if primary == "" {
			primary = "unknown (not connected)"
		}
		return res, fmt.Errorf("%w: the primary is %s; run the handoff against its API (litefs handoff -url URL)", replica.ErrNotPrimary, primary)
	case m.handingOff:
		m.mu.Unlock()
		return res, errors.New("a handoff is already in progress")
	}
	// Renewals go on while the handoff waits.
	m.handingOff = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.handingOff = false
		m.mu.Unlock()
	}()

	timeout := m.cmd.Config.Lease.HandoffTimeout
	target, err := m.pickTarget(ctx, to)
	if err != nil {
		return res, err
	}
	if target == nil && anyone {
		// Stopping: wait for a candidate to connect, so that the lease
		// goes to a node that has every transaction.
		m.logger.Info("handoff: waiting for a candidate to connect", slog.Duration("timeout", timeout))
		wctx, cancel := context.WithTimeout(ctx, timeout)
		for target == nil && wctx.Err() == nil {
			sleep(wctx, 50*time.Millisecond)
			target, _ = m.pickTarget(wctx, "")
		}
		cancel()
	}
	if target == nil && !anyone {
		return res, fmt.Errorf("%w: none is connected to this primary", replica.ErrNoCandidate)
	}
	start := time.Now()
	stopCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	// Stop writes: a write transaction in progress finishes first.
	var unlocks []func() error
	release := func() {
		for _, u := range unlocks {
			_ = u()
		}
		unlocks = nil
	}
	defer release()
	for _, db := range m.cmd.Store.DBs() {
		u, err := m.cmd.FS.LockWrites(stopCtx, db.Name())
		if err != nil {
			return res, fmt.Errorf("stop writes to %q: %w", db.Name(), err)
		}
		unlocks = append(unlocks, u)
	}
	locked := time.Now()
	want := make(map[string]string)
	for _, db := range m.cmd.Store.DBs() {
		want[db.Name()] = db.Pos().String()
	}
	name := ""
	if target != nil {
		name = target.Node
		if err := waitCaughtUp(stopCtx, target.AdvertiseURL, want); err != nil {
			m.logger.Warn("handoff: the target did not catch up in time; releasing the lease to any candidate",
				slog.String("target", target.Node), slog.Any(replica.LogKeyError, err))
			name = ""
		}
	}
	caughtUp := time.Now()
	if name == "" {
		m.logger.Warn("handoff: no candidate is known to have every transaction of this node; the next primary may lack the newest ones, which stay in this node's data directory",
			slog.Any("positions", want))
	}

	m.mu.Lock()
	if m.lease != l {
		m.mu.Unlock()
		return res, errors.New("the lease was lost during the handoff; this node stepped down")
	}
	// Commits are refused from here on; then the lease goes.
	m.cmd.Store.SetFence(time.Now())
	if err := l.Handoff(name); err != nil {
		m.logger.Warn("handoff: releasing the lease", slog.Any(replica.LogKeyError, err))
	}
	m.lease = nil
	release()
	m.demoteLocked(context.WithoutCancel(ctx))
	m.mu.Unlock()
	released := time.Now()

	// Report who took over, and when; a lease released to no one in
	// particular is left to the election.
	wctx, wcancel := context.WithTimeout(ctx, timeout)
	defer wcancel()
	for index := uint64(0); name != "" && wctx.Err() == nil; {
		st, err := m.consul.Watch(wctx, index, m.interval)
		if err == nil && st.Session != "" {
			res.To = st.Primary.Hostname
			break
		}
		if err == nil {
			index = st.Index
		}
	}
	res.WindowMS = time.Since(start).Milliseconds()
	m.logger.Info("handoff done", slog.String("to", res.To), slog.Int64("writes_refused_ms", res.WindowMS),
		slog.Duration("writes_stopped", locked.Sub(start)), slog.Duration("target_caught_up", caughtUp.Sub(start)),
		slog.Duration("released", released.Sub(start)))
	return res, nil
}

// pickTarget returns the connected candidate named to, or the one with
// the most transactions, or nil if none is connected and to is "".
func (m *leaseManager) pickTarget(ctx context.Context, to string) (*replica.ReplicaInfo, error) {
	var names []string
	var best *replica.ReplicaInfo
	var bestTXIDs map[string]uint64
	for _, r := range m.cmd.Server.Replicas() {
		if !r.Candidate || r.AdvertiseURL == "" {
			continue
		}
		names = append(names, r.Node)
		if to != "" {
			if r.Node == to {
				return &r, nil
			}
			continue
		}
		txids, err := nodeTXIDs(ctx, r.AdvertiseURL)
		if err != nil {
			continue
		}
		if best == nil || lease.Ahead(txids, bestTXIDs) {
			best, bestTXIDs = &r, txids
		}
	}
	if to != "" {
		if to == m.consul.Hostname {
			return nil, fmt.Errorf("%w: %q is this node, the primary already", replica.ErrNoCandidate, to)
		}
		return nil, fmt.Errorf("%w: %q is not a candidate connected to this primary (connected candidates: %s)", replica.ErrNoCandidate, to, strings.Join(names, ", "))
	}
	return best, nil
}

// nodeInfo is what GET /info says of a node.
type nodeInfo struct {
	Node      string            `json:"node"`
	Primary   bool              `json:"primary"`
	Positions map[string]string `json:"positions"`
}

func getInfo(ctx context.Context, url string) (nodeInfo, error) {
	var info nodeInfo
	err := callAPI(ctx, http.MethodGet, strings.TrimRight(url, "/")+"/info", &info)
	return info, err
}

// callAPI sends a request to a node's API and decodes its JSON answer into
// out; any status but 200 is an error with the answer's text.
func callAPI(ctx context.Context, method, url string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, strings.TrimSpace(string(msg)))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func nodeTXIDs(ctx context.Context, url string) (map[string]uint64, error) {
	info, err := getInfo(ctx, url)
	if err != nil {
		return nil, err
	}
	a := make(map[string]uint64, len(info.Positions))
	for name, p := range info.Positions {
		pos, err := ltx.ParsePos(p)
		if err != nil {
			return nil, err
		}
		a[name] = uint64(pos.TXID)
	}
	return a, nil
}

// waitCaughtUp polls the node at url until it has every position in want.
func waitCaughtUp(ctx context.Context, url string, want map[string]string) error {
	var last map[string]string
	for {
		info, err := getInfo(ctx, url)
		if err == nil {
			last = info.Positions
			ok := true
			for name, p := range want {
				if info.Positions[name] != p {
					ok = false
				}
			}
			if ok {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to reach %v (it has %v): %w", url, want, last, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// requestHandoff asks the primary at url to hand the lease to node to.
func requestHandoff(ctx context.Context, api, to string) (replica.HandoffResult, error) {
	var res replica.HandoffResult
	u := strings.TrimRight(api, "/") + "/handoff"
	if to != "" {
		u += "?to=" + url.QueryEscape(to)
	}
	err := callAPI(ctx, http.MethodPost, u, &res)
	return res, err
}

// shutdown hands the lease off (or releases it) when the node stops.
func (m *leaseManager) shutdown(ctx context.Context) {
	m.mu.Lock()
	m.stopping = true
	m.mu.Unlock()
	if !m.isPrimary() {
		return
	}
	m.logger.Info("stopping: handing the primary lease off")
	res, err := m.handoffTo(ctx, "", true)
	if err != nil {
		m.logger.Error("handoff at stop failed; releasing the lease", slog.Any(replica.LogKeyError, err))
		m.mu.Lock()
		if m.lease != nil {
			m.cmd.Store.SetFence(time.Now())
			_ = m.lease.Close()
			m.lease = nil
		}
		m.mu.Unlock()
		return
	}
	if res.To == "" {
		m.logger.Warn("no candidate took the lease; the cluster has no primary until one does")
	}
}

// close stops replication; run has returned.
func (m *leaseManager) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopReplication()
}
