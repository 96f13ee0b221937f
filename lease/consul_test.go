package lease_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/testconsul"
	"github.com/litefs-project/litefs/lease"
)

// startConsul runs a Consul agent in -dev mode on loopback ports of its own
// and returns its HTTP address once it has a leader.
func startConsul(t *testing.T) string { return testconsul.Start(t).Addr }

func newConsul(addr, host string) *lease.Consul {
	c := lease.NewConsul(addr)
	c.Key = "litefs/test-primary"
	c.Candidate, c.Hostname, c.AdvertiseURL = true, host, "http://"+host+":20202"
	return c
}

func TestConsul(t *testing.T) {
	addr := startConsul(t)
	ctx := context.Background()
	a, b := newConsul(addr, "node-a"), newConsul(addr, "node-b")

	if _, err := b.PrimaryInfo(ctx); !errors.Is(err, lease.ErrNoPrimary) {
		t.Fatalf("no primary yet: %v", err)
	}
	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("ErrPrimaryExists", func(t *testing.T) {
		if _, err := b.Acquire(ctx); !errors.Is(err, lease.ErrPrimaryExists) {
			t.Fatalf("got %v", err)
		}
		info, err := b.PrimaryInfo(ctx)
		if err != nil || info.Hostname != "node-a" || info.AdvertiseURL != "http://node-a:20202" {
			t.Fatalf("primary info %+v %v", info, err)
		}
	})
	t.Run("ErrNotCandidate", func(t *testing.T) {
		c := newConsul(addr, "node-c")
		c.Candidate = false
		if _, err := c.Acquire(ctx); !errors.Is(err, lease.ErrNotCandidate) {
			t.Fatalf("got %v", err)
		}
	})
	if err := la.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	// A release (graceful handoff) frees the key at once: no lock delay.
	if err := la.Close(); err != nil {
		t.Fatal(err)
	}
	lb, err := b.Acquire(ctx)
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	defer lb.Close()
	if info, err := a.PrimaryInfo(ctx); err != nil || info.Hostname != "node-b" {
		t.Fatalf("primary info after handoff %+v %v", info, err)
	}
	if err := la.Renew(ctx); !errors.Is(err, lease.ErrLeaseLost) {
		t.Fatalf("renew of a released lease: %v", err)
	}
}

// TestConsul_Expiry stops renewing: the lease expires, another node takes
// it, and the old holder's deadline had passed before that.
func TestConsul_Expiry(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a 10s session TTL: skipped in -short mode")
	}
	addr := startConsul(t)
	ctx := context.Background()
	a, b := newConsul(addr, "node-a"), newConsul(addr, "node-b")
	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	deadline := la.Deadline()
	var lb lease.Lease
	for start := time.Now(); lb == nil; time.Sleep(200 * time.Millisecond) {
		if time.Since(start) > 45*time.Second {
			t.Fatal("lease did not expire within 45s")
		}
		if lb, err = b.Acquire(ctx); err != nil && !errors.Is(err, lease.ErrPrimaryExists) {
			t.Fatal(err)
		}
	}
	defer lb.Close()
	if took := time.Now(); took.Before(deadline) {
		t.Fatalf("another node took the lease at %s, before the holder's deadline %s", took, deadline)
	}
	if err := la.Renew(ctx); !errors.Is(err, lease.ErrLeaseLost) {
		t.Fatalf("renew of an expired lease: %v", err)
	}
}

func TestAhead(t *testing.T) {
	type P = lease.Position
	for _, tt := range []struct {
		a, b P
		want bool
	}{
		{P{TXIDs: map[string]uint64{"x": 2}}, P{TXIDs: map[string]uint64{"x": 1}}, true},
		{P{TXIDs: map[string]uint64{"x": 1}}, P{TXIDs: map[string]uint64{"x": 1}}, false},
		{P{TXIDs: map[string]uint64{"x": 1}}, P{TXIDs: map[string]uint64{"x": 2}}, false},
		{P{TXIDs: map[string]uint64{"x": 2, "y": 1}}, P{TXIDs: map[string]uint64{"x": 3, "y": 0}}, false}, // forked: neither
		{P{TXIDs: map[string]uint64{"x": 1, "y": 1}}, P{TXIDs: map[string]uint64{"x": 1}}, true},
		{P{TXIDs: map[string]uint64{"x": 1}}, P{TXIDs: map[string]uint64{"x": 1, "y": 1}}, false},
		{P{TXIDs: map[string]uint64{}}, P{TXIDs: map[string]uint64{}}, false},
		// Equal TXIDs, different primaries: the later term is ahead.
		{P{TXIDs: map[string]uint64{"x": 10}, Stamp: 3<<40 | 7}, P{TXIDs: map[string]uint64{"x": 10}, Stamp: 2<<40 | 9}, true},
		{P{TXIDs: map[string]uint64{"x": 10}, Stamp: 2<<40 | 9}, P{TXIDs: map[string]uint64{"x": 10}, Stamp: 3<<40 | 7}, false},
		// A later term wins over more TXIDs of an earlier one.
		{P{TXIDs: map[string]uint64{"x": 9}, Stamp: 3 << 40}, P{TXIDs: map[string]uint64{"x": 12}, Stamp: 2<<40 | 50}, true},
		// Equal stamps: the TXIDs decide.
		{P{TXIDs: map[string]uint64{"x": 2, "y": 1}, Stamp: 5}, P{TXIDs: map[string]uint64{"x": 2}, Stamp: 5}, true},
	} {
		if got := lease.Ahead(tt.a, tt.b); got != tt.want {
			t.Errorf("Ahead(%+v, %+v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

// TestConsul_WatchAndEndSession: renewals change the key (how candidates
// see the holder alive), ending the holder's session frees it, and a
// handoff names its target.
func TestConsul_WatchAndEndSession(t *testing.T) {
	addr := startConsul(t)
	ctx := context.Background()
	a, b := newConsul(addr, "node-a"), newConsul(addr, "node-b")
	a.LockDelay = 0
	st, err := b.Watch(ctx, 0, time.Second)
	if err != nil || st.Session != "" {
		t.Fatalf("free key: %+v %v", st, err)
	}
	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st, err = b.Watch(ctx, st.Index, 5*time.Second)
	if err != nil || st.Session == "" || st.Primary.Hostname != "node-a" {
		t.Fatalf("held key: %+v %v", st, err)
	}
	if err := la.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if la.Term() == 0 {
		t.Fatalf("a lease's term is its key's lock index, never 0")
	}
	next, err := b.Watch(ctx, st.Index, 5*time.Second)
	if err != nil || next.Index == st.Index || next.Session != st.Session {
		t.Fatalf("a renewal must change the key: before %+v after %+v %v", st, next, err)
	}
	if err := b.EndSession(ctx, next.Session); err != nil {
		t.Fatal(err)
	}
	if err := la.Renew(ctx); !errors.Is(err, lease.ErrLeaseLost) {
		t.Fatalf("renew after the session was ended: %v", err)
	}
	var lb lease.Lease
	for start := time.Now(); lb == nil; time.Sleep(10 * time.Millisecond) {
		if lb, err = b.Acquire(ctx); err != nil && (!errors.Is(err, lease.ErrPrimaryExists) || time.Since(start) > 5*time.Second) {
			t.Fatalf("acquire after ending the holder's session: %v", err)
		}
	}
	if lb.Term() <= la.Term() {
		t.Fatalf("a later lease's term %d is not above the earlier one's %d (renewals must not count)", lb.Term(), la.Term())
	}
	if err := lb.Handoff("node-a"); err != nil {
		t.Fatal(err)
	}
	st, err = a.Watch(ctx, 0, time.Second)
	if err != nil || st.Session != "" || st.HandoffTo != "node-a" {
		t.Fatalf("handed-off key: %+v %v", st, err)
	}

	// The candidate registry.
	if err := a.Publish(ctx, lease.Position{TXIDs: map[string]uint64{"db": 7}, Stamp: 9}); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, lease.Position{TXIDs: map[string]uint64{"db": 5}}); err != nil {
		t.Fatal(err)
	}
	cands, err := b.Candidates(ctx, time.Now().Add(-time.Minute))
	if err != nil || len(cands) != 2 {
		t.Fatalf("candidates %+v %v", cands, err)
	}
	if cands, _ := b.Candidates(ctx, time.Now().Add(time.Minute)); len(cands) != 0 {
		t.Fatalf("stale entries must not count: %+v", cands)
	}
	if err := a.Unpublish(ctx); err != nil {
		t.Fatal(err)
	}
	if cands, _ := b.Candidates(ctx, time.Now().Add(-time.Minute)); len(cands) != 1 || cands[0].Hostname != "node-b" {
		t.Fatalf("after unpublish: %+v", cands)
	}
}
