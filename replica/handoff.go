package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/litefs-project/litefs/lease"
	"github.com/litefs-project/litefs/ltx"
)

// Handoff passes the lease to the named connected candidate ("" for the
// one with the most transactions): writes stop, the target catches up
// (bounded by HandoffTimeout, then the lease is released to any
// candidate), and the lease is released for it. No transaction whose
// commit returned is lost: the target has them all before the release.
func (r *Role) Handoff(ctx context.Context, to string) (HandoffResult, error) {
	return r.handoff(ctx, to, false)
}

// handoff is Handoff; anyone says to release the lease even when no
// candidate is connected (the node is stopping).
func (r *Role) handoff(ctx context.Context, to string, anyone bool) (HandoffResult, error) {
	res := HandoffResult{From: r.self.Hostname}
	called := time.Now()
	r.mu.Lock()
	l := r.lease
	switch {
	case r.ttl == 0:
		r.mu.Unlock()
		return res, errNoHandoff
	case l == nil:
		r.mu.Unlock()
		primary := r.Store.Primary()
		name := primary.Hostname
		if name == "" {
			name = "unknown (not connected)"
		}
		return res, fmt.Errorf("%w: the primary is %s; run the handoff against its API (litefs handoff -url URL)", ErrNotPrimary, name)
	case r.handingOff:
		r.mu.Unlock()
		return res, errors.New("a handoff is already in progress")
	}
	// Renewals go on while the handoff waits.
	r.handingOff = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.handingOff = false
		r.mu.Unlock()
	}()

	timeout := r.HandoffTimeout
	target, err := r.pickTarget(ctx, to)
	if err != nil {
		return res, err
	}
	if target == nil && anyone {
		// Stopping: wait for a candidate to connect, so that the lease
		// goes to a node that has every transaction.
		r.Logger.Info("handoff: waiting for a candidate to connect", slog.Duration("timeout", timeout))
		wctx, cancel := context.WithTimeout(ctx, timeout)
		for target == nil && wctx.Err() == nil {
			sleep(wctx, 50*time.Millisecond)
			target, _ = r.pickTarget(wctx, "")
		}
		cancel()
	}
	if target == nil && !anyone {
		return res, fmt.Errorf("%w: none is connected to this primary", ErrNoCandidate)
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
	for _, db := range r.Store.DBs() {
		u, err := r.Gate.LockWrites(stopCtx, db.Name())
		if err != nil {
			return res, fmt.Errorf("stop writes to %q: %w", db.Name(), err)
		}
		unlocks = append(unlocks, u)
	}
	locked := time.Now()
	want := make(map[string]ltx.Pos)
	for _, db := range r.Store.DBs() {
		want[db.Name()] = db.Pos()
	}
	name := ""
	if target != nil {
		name = target.Node
		if _, err := r.Cluster.WaitPositions(stopCtx, target.AdvertiseURL, want); err != nil {
			r.Logger.Warn("handoff: the target did not catch up in time; releasing the lease to any candidate",
				slog.String("target", target.Node), slog.Any(LogKeyError, err))
			name = ""
		}
	}
	caughtUp := time.Now()
	if name == "" {
		r.Logger.Warn("handoff: no candidate is known to have every transaction of this node; the next primary may lack the newest ones, which stay in this node's data directory",
			slog.Any("positions", want))
	}

	r.mu.Lock()
	if r.lease != l {
		r.mu.Unlock()
		return res, errors.New("the lease was lost during the handoff; this node stepped down")
	}
	// Commits are refused from here on; then the lease goes.
	r.Store.SetFence(time.Now())
	if err := l.Handoff(name); err != nil {
		r.Logger.Warn("handoff: releasing the lease", slog.Any(LogKeyError, err))
	}
	r.lease = nil
	release()
	r.demoteLocked(context.WithoutCancel(ctx))
	r.mu.Unlock()
	released := time.Now()

	// Report who took over, and when; a lease released to no one in
	// particular is left to the election.
	wctx, wcancel := context.WithTimeout(ctx, timeout)
	defer wcancel()
	for index := uint64(0); name != "" && wctx.Err() == nil; {
		st, err := r.Leaser.Watch(wctx, index, r.interval)
		if err == nil && st.Session != "" {
			res.To = st.Primary.Hostname
			break
		}
		if err == nil {
			index = st.Index
		}
	}
	window := time.Since(start)
	res.WindowMS = window.Milliseconds()
	r.Store.Metrics.handedOff(time.Since(called), window)
	r.Logger.Info("handoff done", slog.String("to", res.To), slog.Int64("writes_refused_ms", res.WindowMS),
		slog.Duration("writes_stopped", locked.Sub(start)), slog.Duration("target_caught_up", caughtUp.Sub(start)),
		slog.Duration("released", released.Sub(start)))
	return res, nil
}

// pickTarget returns the connected candidate named to, or the one with
// the most transactions, or nil if none is connected and to is "".
func (r *Role) pickTarget(ctx context.Context, to string) (*ReplicaInfo, error) {
	var names []string
	var best *ReplicaInfo
	var bestTXIDs map[string]uint64
	for _, c := range r.Cluster.Connected() {
		if !c.Candidate || c.AdvertiseURL == "" {
			continue
		}
		names = append(names, c.Node)
		if to != "" {
			if c.Node == to {
				return &c, nil
			}
			continue
		}
		info, err := r.Cluster.Info(ctx, c.AdvertiseURL)
		if err != nil {
			continue
		}
		txids, err := info.TXIDs()
		if err != nil {
			continue
		}
		if best == nil || lease.Ahead(lease.Position{TXIDs: txids}, lease.Position{TXIDs: bestTXIDs}) {
			best, bestTXIDs = &c, txids
		}
	}
	if to != "" {
		if to == r.self.Hostname {
			return nil, fmt.Errorf("%w: %q is this node, the primary already", ErrNoCandidate, to)
		}
		return nil, fmt.Errorf("%w: %q is not a candidate connected to this primary (connected candidates: %s)", ErrNoCandidate, to, strings.Join(names, ", "))
	}
	return best, nil
}

// Stop hands the lease off (or releases it) when the node stops. Run
// goes on until its context ends; call Close after it returns.
func (r *Role) Stop(ctx context.Context) {
	r.mu.Lock()
	r.stopping = true
	r.mu.Unlock()
	if !r.IsPrimary() || r.ttl == 0 {
		return
	}
	r.Logger.Info("stopping: handing the primary lease off")
	res, err := r.handoff(ctx, "", true)
	if err != nil {
		r.Logger.Error("handoff at stop failed; releasing the lease", slog.Any(LogKeyError, err))
		r.mu.Lock()
		if r.lease != nil {
			r.Store.SetFence(time.Now())
			_ = r.lease.Close()
			r.lease = nil
		}
		r.mu.Unlock()
		return
	}
	if res.To == "" {
		r.Logger.Warn("no candidate took the lease; the cluster has no primary until one does")
	}
}

// NetCluster reaches the other nodes over the network: the replication
// stream to follow the primary, the API server for the replicas connected
// here, and the API client for the rest.
type NetCluster struct {
	Store  *Store
	Gate   Gate
	Server *Server
	API    *Client
	Self   lease.Node
	Logger *slog.Logger
}

// Follow starts a replication stream from p.
func (c *NetCluster) Follow(ctx context.Context, p lease.PrimaryInfo) func() {
	sc := NewStreamClient(p.AdvertiseURL, c.Store, c.Gate)
	sc.Node, sc.Logger, sc.API = c.Self.Hostname, c.Logger, c.API
	sc.AdvertiseURL, sc.Candidate = c.Self.AdvertiseURL, c.Self.Candidate
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = sc.Run(cctx) }()
	return func() { cancel(); <-done }
}

// Connected returns the replicas streaming from this node.
func (c *NetCluster) Connected() []ReplicaInfo { return c.Server.Replicas() }

// Info calls GET /info.
func (c *NetCluster) Info(ctx context.Context, url string) (NodeInfo, error) {
	return c.API.Info(ctx, url)
}

// WaitPositions waits on the node's GET /info?wait.
func (c *NetCluster) WaitPositions(ctx context.Context, url string, want map[string]ltx.Pos) (NodeInfo, error) {
	return c.API.WaitPositions(ctx, url, want)
}

// Handoff calls POST /handoff.
func (c *NetCluster) Handoff(ctx context.Context, url, to string) (HandoffResult, error) {
	return c.API.Handoff(ctx, url, to)
}
