package lease_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/litefs-project/litefs/lease"
)

// TestMemory checks that the in-memory lease keeps the Consul lease's
// rules: one holder, renewals move the index, a release frees the key at
// once and may name a candidate, an ended session leaves it unavailable
// for the lock delay, and a session not renewed for twice its TTL ends.
func TestMemory(t *testing.T) {
	ctx := context.Background()
	m := lease.NewMemory()
	const ttl, delay = 200 * time.Millisecond, 300 * time.Millisecond
	node := func(h string) *lease.MemoryLeaser {
		return m.Leaser(lease.Node{Hostname: h, AdvertiseURL: "http://" + h, Candidate: true}, ttl, delay)
	}
	a, b := node("a"), node("b")
	if _, err := m.Leaser(lease.Node{Hostname: "c"}, ttl, delay).Acquire(ctx); !errors.Is(err, lease.ErrNotCandidate) {
		t.Fatalf("non-candidate acquire: %v", err)
	}

	la, err := a.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx); !errors.Is(err, lease.ErrPrimaryExists) {
		t.Fatalf("second acquire: %v", err)
	}
	st, err := b.Watch(ctx, 0, time.Second)
	if err != nil || st.Session == "" || st.Primary.Hostname != "a" || st.Primary.AdvertiseURL != "http://a" {
		t.Fatalf("watch: %+v %v", st, err)
	}
	if err := la.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	st2, err := b.Watch(ctx, st.Index, time.Second)
	if err != nil || st2.Index == st.Index {
		t.Fatalf("a renewal must move the index: %+v -> %+v %v", st, st2, err)
	}
	if d := time.Until(la.Deadline()); d <= 0 || d > ttl {
		t.Fatalf("deadline %v from now, want within the TTL", d)
	}

	// A handoff frees the key at once, for the named candidate.
	if err := la.Handoff("b"); err != nil {
		t.Fatal(err)
	}
	if err := la.Renew(ctx); !errors.Is(err, lease.ErrLeaseLost) {
		t.Fatalf("renew after handoff: %v", err)
	}
	st, _ = a.Watch(ctx, 0, time.Second)
	if st.Session != "" || st.HandoffTo != "b" {
		t.Fatalf("after handoff: %+v", st)
	}
	lb, err := b.Acquire(ctx)
	if err != nil {
		t.Fatalf("acquire after handoff: %v", err)
	}
	if lb.Term() <= la.Term() {
		t.Fatalf("a later lease's term %d is not above the earlier one's %d", lb.Term(), la.Term())
	}

	// Ending the holder's session leaves the key unavailable for the
	// lock delay.
	st, _ = a.Watch(ctx, 0, time.Second)
	ended := time.Now()
	if err := a.EndSession(ctx, st.Session); err != nil {
		t.Fatal(err)
	}
	if err := lb.Renew(ctx); !errors.Is(err, lease.ErrLeaseLost) {
		t.Fatalf("renew after the session ended: %v", err)
	}
	if _, err := a.Acquire(ctx); !errors.Is(err, lease.ErrPrimaryExists) && time.Since(ended) < delay {
		t.Fatalf("acquire within the lock delay: %v", err)
	}
	time.Sleep(delay - time.Since(ended) + 10*time.Millisecond)
	la, err = a.Acquire(ctx)
	if err != nil {
		t.Fatalf("acquire after the lock delay: %v", err)
	}

	// A session not renewed for twice its TTL ends by itself; a watcher
	// sees it within its wait.
	st, _ = b.Watch(ctx, 0, time.Second)
	for i := 0; i < 50 && st.Session != ""; i++ {
		st, _ = b.Watch(ctx, st.Index, 50*time.Millisecond)
	}
	if st.Session != "" {
		t.Fatalf("session not renewed for 2.5s is still there: %+v", st)
	}
	if err := la.Renew(ctx); !errors.Is(err, lease.ErrLeaseLost) {
		t.Fatalf("renew after expiry: %v", err)
	}

	// The candidate registry.
	if err := a.Publish(ctx, lease.Position{TXIDs: map[string]uint64{"db": 3}}); err != nil {
		t.Fatal(err)
	}
	cands, _ := b.Candidates(ctx, time.Now().Add(-time.Second))
	if len(cands) != 1 || cands[0].Hostname != "a" || cands[0].TXIDs["db"] != 3 {
		t.Fatalf("candidates: %+v", cands)
	}
	_ = a.Unpublish(ctx)
	if cands, _ := b.Candidates(ctx, time.Time{}); len(cands) != 0 {
		t.Fatalf("candidates after unpublish: %+v", cands)
	}
}
