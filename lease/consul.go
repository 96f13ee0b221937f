package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Defaults for Consul, as LiteFS has them.
const (
	DefaultConsulKey       = "litefs/primary"
	DefaultConsulTTL       = 10 * time.Second
	DefaultConsulLockDelay = 1 * time.Second
)

// Consul hands out the primary lease as a Consul key held by a session:
// the holder's session has a TTL it must renew, and when the session ends
// the key is released and, after the lock delay, free for another node.
type Consul struct {
	// URL is the Consul agent's HTTP address (lease.consul.url).
	URL string
	// Key is the lease's key (lease.consul.key).
	Key string
	// TTL is how long the lease lasts without renewal (lease.consul.ttl).
	TTL time.Duration
	// LockDelay is how long a released key stays unavailable
	// (lease.consul.lock-delay).
	LockDelay time.Duration
	// Candidate says whether this node may become primary.
	Candidate bool
	// Hostname and AdvertiseURL are stored in the key for other nodes.
	Hostname     string
	AdvertiseURL string

	once   sync.Once
	client *api.Client
	err    error
}

var _ Leaser = (*Consul)(nil)

// NewConsul returns a Consul leaser with LiteFS's defaults.
func NewConsul(url string) *Consul {
	return &Consul{URL: url, Key: DefaultConsulKey, TTL: DefaultConsulTTL, LockDelay: DefaultConsulLockDelay}
}

// Type returns "consul".
func (c *Consul) Type() string { return "consul" }

// Self returns this node.
func (c *Consul) Self() Node {
	return Node{Hostname: c.Hostname, AdvertiseURL: c.AdvertiseURL, Candidate: c.Candidate}
}

// Expiry returns the TTL.
func (c *Consul) Expiry() time.Duration { return c.TTL }

func (c *Consul) api() (*api.Client, error) {
	c.once.Do(func() {
		cfg := api.DefaultConfig()
		cfg.Address = c.URL
		c.client, c.err = api.NewClient(cfg)
	})
	return c.client, c.err
}

// Acquire makes this node primary if no node is: it creates a session and
// takes the key with it. It returns ErrNotCandidate on a non-candidate and
// ErrPrimaryExists when another node holds the key (or the lock delay after
// a release has not passed).
func (c *Consul) Acquire(ctx context.Context) (Lease, error) {
	if !c.Candidate {
		return nil, ErrNotCandidate
	}
	client, err := c.api()
	if err != nil {
		return nil, err
	}
	opts := (&api.WriteOptions{}).WithContext(ctx)
	id, _, err := client.Session().Create(&api.SessionEntry{
		Name: "litefs-" + c.Hostname,
		// Consul takes no TTL under 10s; litefs enforces the configured
		// TTL itself (candidates end a session not renewed within it).
		TTL: max(c.TTL, 10*time.Second).String(),
		// Consul reads a zero lock delay as its default, 15s.
		LockDelay: max(c.LockDelay, time.Millisecond),
		Behavior:  api.SessionBehaviorRelease,
	}, opts)
	if err != nil {
		return nil, fmt.Errorf("create consul session: %w", err)
	}
	value, err := json.Marshal(consulValue{Hostname: c.Hostname, AdvertiseURL: c.AdvertiseURL})
	if err != nil {
		return nil, err
	}
	created := time.Now()
	ok, _, err := client.KV().Acquire(&api.KVPair{Key: c.Key, Value: value, Session: id}, opts)
	if err != nil || !ok {
		_, _ = client.Session().Destroy(id, nil)
		if err != nil {
			return nil, fmt.Errorf("acquire %s: %w", c.Key, err)
		}
		return nil, ErrPrimaryExists
	}
	// The key's lock index counts its acquisitions: the term. Read back
	// consistently, while this session holds the key (only its own
	// renewals change the key meanwhile, which keep the lock index).
	pair, _, err := client.KV().Get(c.Key, (&api.QueryOptions{RequireConsistent: true}).WithContext(ctx))
	if err != nil || pair == nil || pair.Session != id {
		_, _, _ = client.KV().Release(&api.KVPair{Key: c.Key, Session: id}, nil)
		_, _ = client.Session().Destroy(id, nil)
		if err == nil {
			err = errors.New("the key was released as it was taken")
		}
		return nil, fmt.Errorf("read the term of %s: %w", c.Key, err)
	}
	return &consulLease{c: c, client: client, session: id, renewedAt: created, term: pair.LockIndex}, nil
}

// PrimaryInfo returns the node holding the key, or ErrNoPrimary.
func (c *Consul) PrimaryInfo(ctx context.Context) (PrimaryInfo, error) {
	client, err := c.api()
	if err != nil {
		return PrimaryInfo{}, err
	}
	pair, _, err := client.KV().Get(c.Key, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return PrimaryInfo{}, fmt.Errorf("read %s: %w", c.Key, err)
	}
	if pair == nil || pair.Session == "" {
		return PrimaryInfo{}, ErrNoPrimary
	}
	var v consulValue
	if err := json.Unmarshal(pair.Value, &v); err != nil {
		return PrimaryInfo{}, fmt.Errorf("read %s: %w", c.Key, err)
	}
	return PrimaryInfo{Hostname: v.Hostname, AdvertiseURL: v.AdvertiseURL}, nil
}

// consulValue is the lease key's value.
type consulValue struct {
	Hostname     string `json:"hostname"`
	AdvertiseURL string `json:"advertise-url"`
	// Renewal counts the holder's renewals: each changes the key, which
	// is how other nodes see that the holder is alive.
	Renewal uint64 `json:"renewal,omitempty"`
	// HandoffTo names the candidate a released lease is meant for.
	HandoffTo string `json:"handoff-to,omitempty"`
}

// Watch returns the lease key's state once its index passes index (a
// blocking query), or after wait. Every renewal of the holder changes the
// index.
func (c *Consul) Watch(ctx context.Context, index uint64, wait time.Duration) (State, error) {
	client, err := c.api()
	if err != nil {
		return State{}, err
	}
	pair, meta, err := client.KV().Get(c.Key, (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx))
	if err != nil {
		return State{}, fmt.Errorf("watch %s: %w", c.Key, err)
	}
	st := State{Index: meta.LastIndex}
	if pair == nil {
		return st, nil
	}
	st.Term = pair.LockIndex
	var v consulValue
	if len(pair.Value) > 0 {
		if err := json.Unmarshal(pair.Value, &v); err != nil {
			return st, fmt.Errorf("watch %s: bad value %q: %w", c.Key, pair.Value, err)
		}
	}
	st.Session = pair.Session
	if st.Session != "" {
		st.Primary = PrimaryInfo{Hostname: v.Hostname, AdvertiseURL: v.AdvertiseURL}
	} else {
		st.HandoffTo = v.HandoffTo
	}
	return st, nil
}

// EndSession ends another node's session: a candidate does this when the
// holder has not renewed within the TTL. The key is then free after the
// lock delay.
func (c *Consul) EndSession(ctx context.Context, session string) error {
	client, err := c.api()
	if err != nil {
		return err
	}
	if _, err := client.Session().Destroy(session, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("end session %s: %w", session, err)
	}
	return nil
}

// candidatesPrefix is where candidates publish their positions.
func (c *Consul) candidatesPrefix() string { return c.Key + "-candidates/" }

// Publish records this node's position in the candidate registry.
func (c *Consul) Publish(ctx context.Context, pos Position) error {
	client, err := c.api()
	if err != nil {
		return err
	}
	b, err := json.Marshal(Candidate{Hostname: c.Hostname, AdvertiseURL: c.AdvertiseURL, TXIDs: pos.TXIDs, Stamp: pos.Stamp, Election: pos.Election, TimeMS: time.Now().UnixMilli()})
	if err != nil {
		return err
	}
	_, err = client.KV().Put(&api.KVPair{Key: c.candidatesPrefix() + c.Hostname, Value: b}, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("publish position: %w", err)
	}
	return nil
}

// Unpublish removes this node from the candidate registry.
func (c *Consul) Unpublish(ctx context.Context) error {
	client, err := c.api()
	if err != nil {
		return err
	}
	_, err = client.KV().Delete(c.candidatesPrefix()+c.Hostname, (&api.WriteOptions{}).WithContext(ctx))
	return err
}

// Candidates returns the registry's entries published since the given time.
func (c *Consul) Candidates(ctx context.Context, since time.Time) ([]Candidate, error) {
	client, err := c.api()
	if err != nil {
		return nil, err
	}
	pairs, _, err := client.KV().List(c.candidatesPrefix(), (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("read candidates: %w", err)
	}
	var a []Candidate
	for _, p := range pairs {
		var cand Candidate
		if json.Unmarshal(p.Value, &cand) != nil || time.UnixMilli(cand.TimeMS).Before(since) {
			continue
		}
		a = append(a, cand)
	}
	return a, nil
}

type consulLease struct {
	c       *Consul
	client  *api.Client
	session string
	term    uint64 // the key's lock index when this session took it

	mu        sync.Mutex
	renewedAt time.Time // when the last successful renewal was sent
	renewals  uint64
}

// Renew extends the session's TTL and changes the key, so that other nodes
// see the holder alive. It returns ErrLeaseLost if the session or the key
// is gone.
func (l *consulLease) Renew(ctx context.Context) error {
	sent := time.Now()
	opts := (&api.WriteOptions{}).WithContext(ctx)
	entry, _, err := l.client.Session().Renew(l.session, opts)
	if err != nil {
		return fmt.Errorf("renew consul session: %w", err)
	}
	if entry == nil {
		return ErrLeaseLost
	}
	l.mu.Lock()
	n := l.renewals + 1
	l.mu.Unlock()
	value, err := json.Marshal(consulValue{Hostname: l.c.Hostname, AdvertiseURL: l.c.AdvertiseURL, Renewal: n})
	if err != nil {
		return err
	}
	ok, _, err := l.client.KV().Acquire(&api.KVPair{Key: l.c.Key, Value: value, Session: l.session}, opts)
	if err != nil {
		return fmt.Errorf("renew %s: %w", l.c.Key, err)
	}
	if !ok {
		return ErrLeaseLost
	}
	l.mu.Lock()
	l.renewedAt, l.renewals = sent, n
	l.mu.Unlock()
	return nil
}

// Handoff releases the key for the named candidate: the value says who it
// is for, and other candidates leave it to that one for a while. Releasing
// before ending the session avoids the lock delay.
func (l *consulLease) Handoff(to string) error {
	value, err := json.Marshal(consulValue{HandoffTo: to})
	if err != nil {
		return err
	}
	_, _, err = l.client.KV().Release(&api.KVPair{Key: l.c.Key, Value: value, Session: l.session}, nil)
	if _, derr := l.client.Session().Destroy(l.session, nil); err == nil {
		err = derr
	}
	return err
}

// Deadline returns the earliest time the lease could expire: the TTL after
// the last renewal was sent. A primary must stop writing before it.
func (l *consulLease) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.renewedAt.Add(l.c.TTL)
}

// Term returns the key's lock index when this session took it: Consul
// counts every acquisition of a key by a new session.
func (l *consulLease) Term() uint64 { return l.term }

// Close releases the key and ends the session.
func (l *consulLease) Close() error {
	_, _, err := l.client.KV().Release(&api.KVPair{Key: l.c.Key, Session: l.session}, nil)
	if _, derr := l.client.Session().Destroy(l.session, nil); err == nil {
		err = derr
	}
	return err
}
