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
