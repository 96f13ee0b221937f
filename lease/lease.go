// Package lease decides which node is the primary. A Leaser hands out the
// primary lease: Static is the embedded default that needs no server,
// Consul keeps it in a Consul key, and Memory is an in-process store with
// Consul's semantics for tests and fuzzing.
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
	// ErrPrimaryExists is returned by Acquire when another node holds the
	// lease (or a released lease's lock delay has not passed).
	ErrPrimaryExists = errors.New("another node holds the primary lease")
	// ErrLeaseLost is returned by Renew when the lease is gone (expired or
	// taken); the node must stop writing.
	ErrLeaseLost = errors.New("primary lease lost")
	// ErrNoPrimary is returned by PrimaryInfo when no node holds the lease.
	ErrNoPrimary = errors.New("no primary")
)

// PrimaryInfo says who the primary is.
type PrimaryInfo struct {
	Hostname     string // lease.hostname of the primary
	AdvertiseURL string // API URL of the primary
}

// Node is how a node presents itself to the lease.
type Node struct {
	Hostname     string // lease.hostname
	AdvertiseURL string // this node's API URL; "" if it has none to offer
	Candidate    bool   // whether it may become primary
}

// State is what a node sees of the lease.
type State struct {
	Primary   PrimaryInfo // the holder; empty when Session is ""
	Session   string      // the holder's session, "" when the lease is free
	HandoffTo string      // on a free lease: the candidate it was handed to
	Index     uint64      // the lease's version, for the next Watch
	// Term is the term of the lease last taken (see Lease.Term), held or
	// not: while the lease is free, the term that ended. An election is
	// among the candidates that saw the same one.
	Term uint64
}

// Position is how far a node's data goes, as the election compares it.
type Position struct {
	// Election is the term of the lease that ended (State.Term) when the
	// node published: positions published in an earlier election, before
	// another primary's term, are not compared.
	Election uint64
	TXIDs    map[string]uint64 // database -> TXID
	// Stamp is the newest stamp (see ltx.Stamp: lease term and publish
	// order) of the transactions the node holds; zero if unknown.
	Stamp uint64
}

// Candidate is an entry of the candidate registry: a candidate's position,
// published while the cluster elects a primary.
type Candidate struct {
	Hostname     string            `json:"hostname"`
	AdvertiseURL string            `json:"advertise-url"`
	TXIDs        map[string]uint64 `json:"txids"` // database -> TXID
	Stamp        uint64            `json:"stamp,omitempty"`
	Election     uint64            `json:"election,omitempty"`
	TimeMS       int64             `json:"time-ms"`
}

// Position returns the candidate's published position.
func (c Candidate) Position() Position {
	return Position{Election: c.Election, TXIDs: c.TXIDs, Stamp: c.Stamp}
}

// Leaser hands out the primary lease. The node's role manager
// (replica.Role) is written against it, so every lease takes the same
// path: watch, elect, acquire, renew, hand off.
type Leaser interface {
	// Type returns the lease type as the config spells it.
	Type() string
	// Self returns this node as the lease knows it.
	Self() Node
	// Expiry returns how long the lease lasts without a renewal; zero
	// means it never expires (and so is never contested).
	Expiry() time.Duration
	// Acquire makes this node primary and returns its lease. It returns
	// ErrNotCandidate on a non-candidate and ErrPrimaryExists when the
	// lease is held or not yet free.
	Acquire(ctx context.Context) (Lease, error)
	// Watch returns the lease's state once its index passes index, or
	// after wait. Every renewal of the holder changes the index.
	Watch(ctx context.Context, index uint64, wait time.Duration) (State, error)
	// EndSession ends another holder's session: a candidate does this
	// when the holder has not renewed within the expiry.
	EndSession(ctx context.Context, session string) error
	// Publish records this node's position for the election; Unpublish
	// removes it; Candidates returns those published since a time.
	Publish(ctx context.Context, pos Position) error
	Unpublish(ctx context.Context) error
	Candidates(ctx context.Context, since time.Time) ([]Candidate, error)
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
	// Term returns the lease's term: above the term of every lease taken
	// before it from the same store (while the store keeps its state).
	// The primary stamps its transactions with it (see ltx.Stamp).
	Term() uint64
}

// Ahead reports whether position a is ahead of b: b must not become
// primary while a can. Stamps decide first: a newer stamp holds a
// transaction of a later primary, or a later one of the same primary
// (see ltx.Stamp), whatever the TXIDs. With equal stamps (or none), a is
// ahead if it has every database at least as far as b, and one further.
func Ahead(a, b Position) bool {
	if a.Stamp != b.Stamp {
		return a.Stamp > b.Stamp
	}
	return aheadTXIDs(a.TXIDs, b.TXIDs)
}

func aheadTXIDs(a, b map[string]uint64) bool {
	further := false
	for name, tb := range b {
		ta := a[name]
		if ta < tb {
			return false
		}
		if ta > tb {
			further = true
		}
	}
	for name, ta := range a {
		if _, ok := b[name]; !ok && ta > 0 {
			further = true
		}
	}
	return further
}
