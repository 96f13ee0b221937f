package lease

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Memory is an in-process lease store with the semantics of the Consul
// lease: a key held by a session that must be renewed; a session not
// renewed for twice its TTL ends by itself, and one ended while holding
// the key leaves it unavailable for the lock delay; a release (Close,
// Handoff) frees it at once and may name the candidate it is meant for;
// every change moves the index that Watch waits on. It is for tests and
// fuzzing: several nodes of one process share a Memory.
type Memory struct {
	mu         sync.Mutex
	index      uint64
	changed    chan struct{} // closed and replaced at every change
	holder     *memSession   // nil when the key is free
	value      memValue
	lockUntil  time.Time // the key cannot be taken before then
	sessions   map[string]*memSession
	nextID     int
	candidates map[string]Candidate
	lockIndex  uint64 // how many times the key was taken: the terms
}

type memSession struct {
	id        string
	node      Node
	ttl       time.Duration
	lockDelay time.Duration
	renewedAt time.Time
}

type memValue struct {
	primary   PrimaryInfo
	renewal   uint64
	handoffTo string
}

// NewMemory returns an empty store: no primary.
func NewMemory() *Memory {
	return &Memory{index: 1, changed: make(chan struct{}), sessions: make(map[string]*memSession), candidates: make(map[string]Candidate)}
}

// Leaser returns node n's view of the store, with Consul's TTL and lock
// delay.
func (m *Memory) Leaser(n Node, ttl, lockDelay time.Duration) *MemoryLeaser {
	return &MemoryLeaser{m: m, node: n, ttl: ttl, lockDelay: lockDelay}
}

// bump records a change. m.mu held.
func (m *Memory) bump() {
	m.index++
	close(m.changed)
	m.changed = make(chan struct{})
}

// expire ends sessions not renewed for twice their TTL, as Consul does.
// m.mu held.
func (m *Memory) expire(now time.Time) {
	for id, s := range m.sessions {
		if now.Sub(s.renewedAt) > 2*s.ttl {
			m.endLocked(id, now)
		}
	}
}

// endLocked ends a session; if it held the key, the key is released and
// unavailable for the session's lock delay. m.mu held.
func (m *Memory) endLocked(id string, now time.Time) {
	s := m.sessions[id]
	if s == nil {
		return
	}
	delete(m.sessions, id)
	if m.holder == s {
		m.holder = nil
		m.value = memValue{}
		m.lockUntil = now.Add(s.lockDelay)
		m.bump()
	}
}

// MemoryLeaser is one node's view of a Memory store.
type MemoryLeaser struct {
	m              *Memory
	node           Node
	ttl, lockDelay time.Duration
}

var _ Leaser = (*MemoryLeaser)(nil)

// Type returns "memory".
func (l *MemoryLeaser) Type() string { return "memory" }

// Self returns this node.
func (l *MemoryLeaser) Self() Node { return l.node }

// Expiry returns the TTL.
func (l *MemoryLeaser) Expiry() time.Duration { return l.ttl }

// Acquire takes the key with a new session if it is free and its lock
// delay has passed.
func (l *MemoryLeaser) Acquire(ctx context.Context) (Lease, error) {
	if !l.node.Candidate {
		return nil, ErrNotCandidate
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	m.expire(now)
	if m.holder != nil || now.Before(m.lockUntil) {
		return nil, ErrPrimaryExists
	}
	m.nextID++
	s := &memSession{id: fmt.Sprintf("session-%d", m.nextID), node: l.node, ttl: l.ttl, lockDelay: l.lockDelay, renewedAt: now}
	m.sessions[s.id] = s
	m.holder = s
	m.value = memValue{primary: PrimaryInfo{Hostname: l.node.Hostname, AdvertiseURL: l.node.AdvertiseURL}}
	m.lockIndex++
	m.bump()
	return &memLease{l: l, s: s, renewedAt: now, term: m.lockIndex}, nil
}

func (m *Memory) state() State {
	st := State{Index: m.index, Term: m.lockIndex}
	if m.holder != nil {
		st.Session, st.Primary = m.holder.id, m.value.primary
	} else {
		st.HandoffTo = m.value.handoffTo
	}
	return st
}

// Watch returns the state once the index passes index, or after wait.
func (l *MemoryLeaser) Watch(ctx context.Context, index uint64, wait time.Duration) (State, error) {
	m := l.m
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		m.mu.Lock()
		m.expire(time.Now())
		st, changed := m.state(), m.changed
		m.mu.Unlock()
		if st.Index != index {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return State{}, ctx.Err()
		case <-t.C:
			return st, nil
		case <-changed:
		}
	}
}

// EndSession ends a session: the key, if it held it, is free after the
// lock delay.
func (l *MemoryLeaser) EndSession(ctx context.Context, session string) error {
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	m.endLocked(session, time.Now())
	return nil
}

// Publish records this node's position.
func (l *MemoryLeaser) Publish(ctx context.Context, pos Position) error {
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	m.candidates[l.node.Hostname] = Candidate{Hostname: l.node.Hostname, AdvertiseURL: l.node.AdvertiseURL,
		TXIDs: pos.TXIDs, Stamp: pos.Stamp, Election: pos.Election, TimeMS: time.Now().UnixMilli()}
	return nil
}

// Unpublish removes this node's positions.
func (l *MemoryLeaser) Unpublish(ctx context.Context) error {
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.candidates, l.node.Hostname)
	return nil
}

// Candidates returns the positions published since the given time.
func (l *MemoryLeaser) Candidates(ctx context.Context, since time.Time) ([]Candidate, error) {
	m := l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	var a []Candidate
	for _, c := range m.candidates {
		if !time.UnixMilli(c.TimeMS).Before(since) {
			a = append(a, c)
		}
	}
	return a, nil
}

type memLease struct {
	l         *MemoryLeaser
	s         *memSession
	term      uint64
	mu        sync.Mutex
	renewedAt time.Time
}

// Term returns how many times the key had been taken, this time included,
// as Consul's lock index counts.
func (ml *memLease) Term() uint64 { return ml.term }

// Renew extends the session and changes the key.
func (ml *memLease) Renew(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m := ml.l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	m.expire(now)
	if m.sessions[ml.s.id] == nil || m.holder != ml.s {
		return ErrLeaseLost
	}
	ml.s.renewedAt = now
	m.value.renewal++
	m.bump()
	ml.mu.Lock()
	ml.renewedAt = now
	ml.mu.Unlock()
	return nil
}

// Deadline returns the TTL after the last renewal.
func (ml *memLease) Deadline() time.Time {
	ml.mu.Lock()
	defer ml.mu.Unlock()
	return ml.renewedAt.Add(ml.l.ttl)
}

// release frees the key for handoffTo and ends the session, without the
// lock delay.
func (ml *memLease) release(handoffTo string) error {
	m := ml.l.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.holder == ml.s {
		m.holder = nil
		m.value = memValue{handoffTo: handoffTo}
		m.bump()
	}
	delete(m.sessions, ml.s.id)
	return nil
}

// Close releases the key.
func (ml *memLease) Close() error { return ml.release("") }

// Handoff releases the key for the named candidate.
func (ml *memLease) Handoff(to string) error { return ml.release(to) }

// Offer marks the free lease as handed to the named node, as a handoff
// does, so that this node takes it and the others leave it alone. Tests
// use it to say which node takes over; it fails while the lease is held.
func (m *Memory) Offer(to string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expire(time.Now())
	if m.holder != nil {
		return fmt.Errorf("%w: held by %s", ErrPrimaryExists, m.holder.node.Hostname)
	}
	m.value = memValue{handoffTo: to}
	m.bump()
	return nil
}

// End ends the session holding the lease, if any, as its expiry would.
func (m *Memory) End() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.holder != nil {
		m.endLocked(m.holder.id, time.Now())
	}
}
