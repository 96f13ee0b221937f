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

// ErrPrimaryExists is returned by Acquire when another node holds the lease.
var ErrPrimaryExists = errors.New("another node holds the primary lease")

// ErrLeaseLost is returned by Renew when the lease is gone (expired or
// taken); the node must stop writing.
var ErrLeaseLost = errors.New("primary lease lost")

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
		Name:      "litefs-" + c.Hostname,
		TTL:       c.TTL.String(),
		LockDelay: c.LockDelay,
		Behavior:  api.SessionBehaviorRelease,
	}, opts)
	if err != nil {
		return nil, fmt.Errorf("create consul session: %w", err)
	}
	value, err := json.Marshal(PrimaryInfo{Hostname: c.Hostname, AdvertiseURL: c.AdvertiseURL})
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
	return &consulLease{c: c, client: client, session: id, renewedAt: created}, nil
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
	var info PrimaryInfo
	if err := json.Unmarshal(pair.Value, &info); err != nil {
		return PrimaryInfo{}, fmt.Errorf("read %s: %w", c.Key, err)
	}
	return info, nil
}

// ErrNoPrimary is returned by PrimaryInfo when no node holds the lease.
var ErrNoPrimary = errors.New("no primary")

type consulLease struct {
	c       *Consul
	client  *api.Client
	session string

	mu        sync.Mutex
	renewedAt time.Time // when the last successful renewal was sent
}

// Renew extends the session's TTL. It returns ErrLeaseLost if the session
// is gone.
func (l *consulLease) Renew(ctx context.Context) error {
	sent := time.Now()
	entry, _, err := l.client.Session().Renew(l.session, (&api.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("renew consul session: %w", err)
	}
	if entry == nil {
		return ErrLeaseLost
	}
	l.mu.Lock()
	l.renewedAt = sent
	l.mu.Unlock()
	return nil
}

// Deadline returns the earliest time the lease could expire: the TTL after
// the last renewal was sent. A primary must stop writing before it.
func (l *consulLease) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.renewedAt.Add(l.c.TTL)
}

// Close releases the key and ends the session.
func (l *consulLease) Close() error {
	_, _, err := l.client.KV().Release(&api.KVPair{Key: l.c.Key, Session: l.session}, nil)
	if _, derr := l.client.Session().Destroy(l.session, nil); err == nil {
		err = derr
	}
	return err
}
