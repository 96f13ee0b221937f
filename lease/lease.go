// Package lease decides which node is the primary. A Leaser hands out the
// primary lease; Static is the embedded default that needs no server.
package lease

import (
	"context"
	"errors"
	"time"
)

var (
	// ErrNotCandidate is returned by Acquire on a node that may not become
	// primary (lease.candidate is false).
	ErrNotCandidate = errors.New("node is not a candidate for primary")
)

// PrimaryInfo says who the primary is.
type PrimaryInfo struct {
	Hostname     string // lease.hostname of the primary
	AdvertiseURL string // API URL of the primary
}

// Leaser hands out the primary lease.
type Leaser interface {
	// Type returns the lease type as the config spells it.
	Type() string
	// Acquire makes this node primary and returns its lease, or returns
	// ErrNotCandidate.
	Acquire(ctx context.Context) (Lease, error)
	// PrimaryInfo returns the current primary.
	PrimaryInfo(ctx context.Context) (PrimaryInfo, error)
}

// Lease is a held primary lease.
type Lease interface {
	// Renew extends the lease; an error means the node must stop writing.
	Renew(ctx context.Context) error
	// Deadline returns the earliest time the lease could expire without a
	// renewal; the primary must stop writing before it. Zero means never.
	Deadline() time.Time
	// Close releases the lease.
	Close() error
	// Handoff releases the lease for the named node ("" for any).
	Handoff(to string) error
}

// Static is a fixed primary: the node with Candidate set is the primary and
// its lease never expires; other nodes follow AdvertiseURL.
type Static struct {
	Candidate    bool   // this node is the primary
	Hostname     string // the primary's hostname
	AdvertiseURL string // the primary's API URL
}

var _ Leaser = (*Static)(nil)

// Type returns "static".
func (s *Static) Type() string { return "static" }

// Acquire returns a lease that never expires if s is the candidate.
func (s *Static) Acquire(ctx context.Context) (Lease, error) {
	if !s.Candidate {
		return nil, ErrNotCandidate
	}
	return staticLease{}, nil
}

// PrimaryInfo returns the configured primary.
func (s *Static) PrimaryInfo(ctx context.Context) (PrimaryInfo, error) {
	return PrimaryInfo{Hostname: s.Hostname, AdvertiseURL: s.AdvertiseURL}, nil
}

type staticLease struct{}

func (staticLease) Renew(ctx context.Context) error { return nil }
func (staticLease) Deadline() time.Time             { return time.Time{} }
func (staticLease) Close() error                    { return nil }
func (staticLease) Handoff(to string) error         { return errors.New("a static lease cannot be handed off") }
