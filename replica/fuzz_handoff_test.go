package replica

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/litefs-project/litefs/lease"
	"github.com/litefs-project/litefs/ltx"
)

// --- handoffs and failovers ---

// fzGate stands in for the FUSE layer's gate: when Demote waits for the
// connection writing to db to finish its transaction, that connection
// tries to commit, after the node stopped being the primary.
type fzGate struct {
	db     string
	commit func() error
	wal    map[string]bool // the mode Lock must be told for each database
	called bool
	err    error
	badWAL string // a database Lock was told the wrong mode for
}

func (g *fzGate) Lock(ctx context.Context, db string, wal bool) (func() error, error) {
	if want, ok := g.wal[db]; ok && want != wal && g.badWAL == "" {
		g.badWAL = fmt.Sprintf("%q: wal %v, want %v", db, wal, want)
	}
	if db == g.db && !g.called {
		g.called = true
		g.err = g.commit()
	}
	return func() error { return nil }, nil
}

func (g *fzGate) Invalidate(db string) error { return nil }
func (g *fzGate) Forget(db string) error     { return nil }

// fzNodeGate is a node's mount as its role sees it: nothing to wait for,
// except a transaction in flight during a handoff (inflight).
type fzNodeGate struct {
	inflight *fzGate
}

func (g *fzNodeGate) Lock(ctx context.Context, db string, wal bool) (func() error, error) {
	if g.inflight != nil {
		return g.inflight.Lock(ctx, db, wal)
	}
	return func() error { return nil }, nil
}

func (g *fzNodeGate) Invalidate(db string) error { return nil }
func (g *fzNodeGate) Forget(db string) error     { return nil }

func (g *fzNodeGate) LockWrites(ctx context.Context, db string) (func() error, error) {
	return func() error { return nil }, nil
}

// fzCluster is the network as the roles see it: every node but the
// primary is a connected candidate, and waiting for one to catch up is
// replicating to it.
type fzCluster struct{ h *fzHarness }

func (c *fzCluster) Follow(ctx context.Context, p lease.PrimaryInfo) func() { return func() {} }

func (c *fzCluster) Connected() []ReplicaInfo {
	var a []ReplicaInfo
	for i := range c.h.nodes {
		if i != c.h.primary {
			a = append(a, ReplicaInfo{Node: fzNodeName(i), AdvertiseURL: fmt.Sprint(i), Candidate: true})
		}
	}
	return a
}

func (c *fzCluster) node(url string) (int, error) {
	for i := range c.h.nodes {
		if fmt.Sprint(i) == url {
			return i, nil
		}
	}
	return 0, fmt.Errorf("no node at %q", url)
}

func (c *fzCluster) Info(ctx context.Context, url string) (NodeInfo, error) {
	i, err := c.node(url)
	if err != nil {
		return NodeInfo{}, err
	}
	info := NodeInfo{Node: fzNodeName(i), Primary: i == c.h.primary, Positions: map[string]string{}}
	for name, pos := range c.h.positions(i) {
		info.Positions[name] = pos.String()
	}
	return info, nil
}

func (c *fzCluster) WaitPositions(ctx context.Context, url string, want map[string]ltx.Pos) (NodeInfo, error) {
	i, err := c.node(url)
	if err != nil {
		return NodeInfo{}, err
	}
	c.h.replicate(i, -1)
	info, err := c.Info(ctx, url)
	if err == nil && !info.Has(want) {
		err = fmt.Errorf("node %d is at %v after replication, want %v", i, info.Positions, want)
	}
	return info, err
}

func (c *fzCluster) Handoff(ctx context.Context, url, to string) (HandoffResult, error) {
	return HandoffResult{}, errors.New("lease.promote is not fuzzed")
}

// fzInflight is a transaction under way on the primary when it hands off.
type fzInflight struct {
	txn     *fzTxn
	journal bool    // rollback-journal mode
	gate    *fzGate // nil: Demote runs without a gate
	before  func()  // runs before Demote
	after   func() error
	variant string
}

// handoff hands the primary role to node t gracefully: t catches up fully,
// the old primary steps down, t takes over. Every acknowledged transaction
// must be on t. begin, if set, starts a transaction on the old primary
// after t caught up, which must not commit.
func (h *fzHarness) handoff(t int, begin func() *fzInflight) {
	old := h.primary
	h.tracef("handoff from node %d to node %d", old, t)
	h.replicate(t, -1)
	olds, ts := h.nodes[old].store, h.nodes[t].store
	acked := h.positions(old)
	for name, pos := range acked {
		if tdb := ts.DB(name); pos.TXID > 0 && (tdb == nil || tdb.Pos() != pos) {
			h.fatalf("handoff: node %d did not catch up on %q at %s", t, name, pos)
		}
	}
	var in *fzInflight
	if begin != nil {
		in = begin()
	}
	if in != nil && in.gate != nil {
		h.nodes[old].gate.inflight = in.gate
		// Lock is told the mode of each database with a committed
		// transaction (a first transaction is in rollback mode even in
		// the WAL database).
		in.gate.wal = map[string]bool{}
		for _, db := range olds.DBs() {
			if db.Pos().TXID > 0 {
				in.gate.wal[db.Name()] = db.Name() == fzW
			}
		}
	}
	if in != nil && in.before != nil {
		in.before()
	}
	// The real handoff: the old primary's role stops writes, waits for
	// the target to catch up (the harness replicates: see fzCluster),
	// fences, releases the lease for the target and steps down; the
	// target's role, run alongside, takes the lease.
	ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
	defer cancel()
	tr := h.nodes[t].role
	took := make(chan struct{})
	go func() {
		defer close(took)
		for ctx.Err() == nil && !tr.IsPrimary() {
			tr.Step(ctx)
		}
	}()
	res, err := h.nodes[old].role.Handoff(ctx, fzNodeName(t))
	<-took
	h.nodes[old].gate.inflight = nil
	if err != nil {
		h.fatalf("handoff from node %d to node %d: %v", old, t, err)
	}
	if res.From != fzNodeName(old) || res.To != fzNodeName(t) {
		h.fatalf("handoff from node %d to node %d reported %+v", old, t, res)
	}
	if h.nodes[old].role.IsPrimary() || olds.IsPrimary() {
		h.fatalf("node %d is still the primary after handing off", old)
	}
	if !tr.IsPrimary() || !ts.IsPrimary() {
		h.fatalf("node %d did not take the lease handed to it", t)
	}
	if in != nil {
		if in.gate != nil {
			if !in.gate.called {
				h.fatalf("demote never asked the gate to keep %q's connections out", in.gate.db)
			}
			if !errors.Is(in.gate.err, ErrReadOnly) {
				h.fatalf("a commit of %s while the primary stepped down returned %v, want an error wrapping ErrReadOnly", in.txn, in.gate.err)
			}
			if in.gate.badWAL != "" {
				h.fatalf("demote told the gate the wrong journal mode: %s", in.gate.badWAL)
			}
		}
		if in.after != nil {
			// A commit attempted after Demote returned must not be
			// acknowledged. (Through FUSE it never gets here: checkWritable
			// refuses it first.)
			err := in.after()
			if err != nil && !errors.Is(err, ErrReadOnly) {
				h.fatalf("commit of %s after Demote: %v, want nil or ErrReadOnly", in.txn, err)
			}
			h.tracef("  commit after Demote returned %v", err)
		}
		if _, err := os.Stat(in.txn.db.JournalPath()); err == nil && in.journal {
			h.fatalf("the journal of the refused %s is still there after Demote", in.txn)
		}
	}
	for name, pos := range acked {
		db := olds.DB(name)
		if db == nil {
			h.fatalf("demote of node %d removed %q", old, name)
		}
		h.expectPos(db, pos, fmt.Sprintf("demote of node %d", old))
	}
	h.primary = t
	for name, pos := range acked {
		if pos.TXID == 0 {
			continue
		}
		if tdb := ts.DB(name); tdb == nil {
			h.fatalf("handoff lost %q: the old primary was at %s, the new one does not have it", name, pos)
		} else if tdb.Pos() != pos {
			h.fatalf("handoff lost acknowledged transactions of %q: the old primary was at %s, the new one is at %s", name, pos, tdb.Pos())
		}
	}
}

// opRefusedHandoff hands off while a transaction is under way on the old
// primary. Variants: it tries to commit while Demote waits for it (through
// the gate: ErrReadOnly), it is abandoned, it tries to commit after the
// primary's fence passed (ErrFenced), or (rollback journal) it tries to
// commit after Demote returned. Either way it must not commit, and the old
// primary must be back at its last committed transaction.
func (h *fzHarness) opRefusedHandoff() {
	t := h.pickReplica(h.in.next())
	o := h.in.next()
	h.handoff(t, func() *fzInflight {
		name := fzJ
		if o&1 == 1 {
			name = fzW
		}
		wal := name == fzW && h.walReady()
		txn := h.planTxn(name, true)
		in := &fzInflight{txn: txn, journal: !wal}
		variant := int(o>>1) % 4
		if wal && variant == 2 {
			variant = 1 // through FUSE, a WAL write on a replica never reaches the file
		}
		var commit func() error
		if !wal {
			jo := h.in.next() &^ 3
			h.writeJournal(txn, jo, false)
			k := len(txn.written)
			if variant == 1 {
				k = int(h.in.next()) % (k + 1)
			}
			h.writePages(txn, k)
			if k == len(txn.written) {
				h.shrink(txn)
			}
			path := txn.db.JournalPath()
			commit = func() error {
				if variant == 2 {
					// After Demote, recovery has already rolled the
					// transaction back and removed its journal.
					return txn.db.commitJournal(func() error {
						if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
							return err
						}
						return nil
					})
				}
				err := txn.db.RemoveJournal()
				if err != nil {
					if _, serr := os.Stat(path); serr != nil {
						h.fatalf("the refused commit of %s deleted its journal: %v", txn, serr)
					}
				}
				return err
			}
			in.variant = fmt.Sprintf("journal, %d of %d pages written", k, len(txn.written))
		} else {
			plan := h.planWAL(h.nodes[h.primary], txn, h.in.next()&^0x80, h.in.next())
			cut := plan.commit
			if variant == 1 {
				cut = int(h.in.next()) % (plan.commit + 1)
			}
			if err := h.writeWAL(txn.db, plan.writes[:cut], true); err != nil {
				h.fatalf("wal writes before the commit frame of %s: %v", txn, err)
			}
			commit = func() error { return h.writeWAL(txn.db, plan.writes[cut:], true) }
			in.variant = fmt.Sprintf("wal, %d of %d writes (%s)", cut, len(plan.writes), plan.desc)
		}
		switch variant {
		case 0:
			in.gate = &fzGate{db: name, commit: commit}
			in.variant += ", commits while Demote waits"
		case 1:
			in.variant += ", abandoned"
		case 2:
			in.after = func() error {
				err := commit()
				if err == nil {
					h.expectPos(txn.db, txn.pos, "commit after Demote returned nil")
				}
				return err
			}
			in.variant += ", commits after Demote"
		case 3:
			// The lease could not be renewed: the fence passed, commits
			// are refused, then the node steps down.
			in.before = func() {
				h.nodes[h.primary].store.SetFence(time.Now().Add(-time.Millisecond))
				if err := commit(); !errors.Is(err, ErrFenced) {
					h.fatalf("commit of %s past the fence returned %v, want an error wrapping ErrFenced", txn, err)
				}
				h.expectPos(txn.db, txn.pos, "commit past the fence")
			}
			in.variant += ", commits past the fence"
		}
		h.tracef("  in flight on node %d: %s; %s", h.primary, txn, in.variant)
		return in
	})
}

// opFailover makes a replica the primary without a handoff: the old
// primary lost its lease and steps down in place, or crashed and comes
// back as a replica. Transactions it acknowledged that the new primary
// lacks are lost (that is what a failover may lose); its diverged history
// is re-snapshotted and kept aside at the next replication.
func (h *fzHarness) opFailover() {
	o := h.in.next()
	old, t := h.primary, h.pickReplica(o)
	if o&0x10 != 0 {
		h.tracef("failover from node %d to node %d: the old primary steps down", old, t)
		h.takeOver(old, t, false)
	} else {
		h.tracef("failover from node %d to node %d: the old primary crashed and restarts as a replica", old, t)
		h.primary = t
		h.reopen(old)
		h.takeOver(old, t, true)
	}
	h.failovers++
	h.acked = h.positions(t)
}
