package lease

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Static is a fixed primary: the node with Candidate set is the primary and
// its lease never expires; other nodes follow AdvertiseURL. To the role
// manager it looks like a lease handed to the candidate that nobody else
// may take.
type Static struct {
	Candidate bool   // this node is the primary
	Hostname  string // this node's hostname
	// AdvertiseURL is the primary's API URL: this node's own on the
	// primary, the one replicas stream from on the others.
	AdvertiseURL string

	mu   sync.Mutex
	held bool
}

var _ Leaser = (*Static)(nil)

// Type returns "static".
func (s *Static) Type() string { return "static" }

// Self returns this node; only the primary offers an API URL.
func (s *Static) Self() Node {
	n := Node{Hostname: s.Hostname, Candidate: s.Candidate}
	if s.Candidate {
		n.AdvertiseURL = s.AdvertiseURL
	}
	return n
}

// Expiry returns zero: a static lease never expires.
func (s *Static) Expiry() time.Duration { return 0 }

// Acquire returns a lease that never expires if s is the candidate.
func (s *Static) Acquire(ctx context.Context) (Lease, error) {
	if !s.Candidate {
		return nil, ErrNotCandidate
	}
	s.mu.Lock()
	s.held = true
	s.mu.Unlock()
	return staticLease{}, nil
}

// PrimaryInfo returns the configured primary.
func (s *Static) PrimaryInfo(ctx context.Context) (PrimaryInfo, error) {
	return s.state().Primary, nil
}

func (s *Static) state() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Candidate && !s.held {
		return State{HandoffTo: s.Hostname, Index: 1}
	}
	p := PrimaryInfo{AdvertiseURL: s.AdvertiseURL}
	if s.Candidate {
		p.Hostname = s.Hostname
	}
	return State{Primary: p, Session: "static", Index: 2}
}

// Watch returns the fixed state: the lease handed to the candidate until
// it takes it, then held by it. It blocks for wait when nothing changed.
func (s *Static) Watch(ctx context.Context, index uint64, wait time.Duration) (State, error) {
	st := s.state()
	if st.Index != index {
		return st, nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return st, ctx.Err()
	case <-t.C:
	}
	return s.state(), nil
}

// EndSession refuses: nobody can end a static lease.
func (s *Static) EndSession(ctx context.Context, session string) error {
	return errors.New("a static lease cannot be ended")
}

// Publish, Unpublish and Candidates do nothing: there is no election.
func (s *Static) Publish(ctx context.Context, pos Position) error { return nil }
func (s *Static) Unpublish(ctx context.Context) error             { return nil }
func (s *Static) Candidates(ctx context.Context, since time.Time) ([]Candidate, error) {
	return nil, nil
}

type staticLease struct{}

func (staticLease) Renew(ctx context.Context) error { return nil }
func (staticLease) Deadline() time.Time             { return time.Time{} }
func (staticLease) Close() error                    { return nil }
func (staticLease) Handoff(to string) error         { return errors.New("a static lease cannot be handed off") }

// Term is 1: a static lease is never contested, so it has one term.
func (staticLease) Term() uint64 { return 1 }
