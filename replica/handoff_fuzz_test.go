package replica

// FuzzHandoff drives three in-process nodes through random sequences of
// transactions, replication, graceful handoffs, handoffs with a transaction
// in flight, restarts, crashes, retention and failovers, and checks the
// invariants of DESIGN.md after every step.
//
// There is no FUSE mount and no SQLite. A transaction is the sequence of
// calls the FUSE layer makes while SQLite writes: the journal file, then
// DB.WriteAt, DB.Truncate and DB.RemoveJournal (or TruncateJournal,
// WriteJournalAt) in rollback mode; frames appended to the real WAL file
// through DB.WriteWALAt, in WAL mode (with SQLite's checksums, cache spills that rewrite frames in
// place, sector padding, checkpoints and WAL restarts). Replication does
// what the stream does (Server.sendDB, Client.apply), with Log,
// WriteSnapshot, Apply and ApplyAll, and now and then offers a damaged or
// out-of-order file first.
//
// The test keeps its own model: the content of the database at every
// position ever committed, and which position each came from. Each node's
// file (plus the committed frames of its WAL, parsed here independently of
// wal.go) must hold exactly the model's content at the node's position.
//
// Set FUZZ_HANDOFF_TRACE=1 to log the steps of every input.
// testdata/fuzz/FuzzHandoff/diverged-replica-replaced-in-place is the
// input that found a diverged replica, beyond what the primary's log
// covers, replaced without its state kept aside.

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/litefs-project/litefs/lease"
	"github.com/litefs-project/litefs/ltx"
)

const (
	fzMaxSteps = 40 // operations per input
	fzMaxPages = 12 // largest database, in pages
	fzNodes    = 3
	fzJ        = "j" // a database in rollback-journal mode
	fzW        = "w" // a database in WAL mode
)

// Operations, chosen by one input byte through fzOps (which sets their
// weights).
const (
	fzOpJournalTxn = iota
	fzOpWALTxn
	fzOpCheckpoint
	fzOpReplicate
	fzOpHandoff
	fzOpRefusedHandoff
	fzOpRestart
	fzOpCrash
	fzOpRetain
	fzOpFailover
)

var fzOps = [16]int{
	fzOpJournalTxn, fzOpJournalTxn, fzOpWALTxn, fzOpWALTxn,
	fzOpWALTxn, fzOpCheckpoint, fzOpReplicate, fzOpReplicate,
	fzOpHandoff, fzOpRefusedHandoff, fzOpRestart, fzOpCrash,
	fzOpCrash, fzOpRetain, fzOpFailover, fzOpHandoff,
}

func FuzzHandoff(f *testing.F) {
	for _, seed := range fzSeeds {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h := newFzHarness(t, data)
		h.run()
	})
}

// fzSeeds start the fuzzer on inputs that reach every operation; the
// corpus in testdata/fuzz/FuzzHandoff holds longer ones.
var fzSeeds = [][]byte{
	// journal and WAL transactions, replication, handoff, more transactions
	{0x00, 0, 1, 0xff, 0, 0, 2, 0, 0, 0, 0, 2, 5, 0x0f, 0, 0x00, 6, 0, 8, 1, 0, 4, 0x03, 0, 0x00, 2, 2, 0x55, 0, 0x04, 3, 0, 15, 0},
	// WAL spills, padding, split writes, checkpoints of every kind
	{0x11, 2, 1, 0xff, 0, 0, 3, 2, 0xff, 0, 0x06, 4, 5, 0xaa, 0, 0x3e, 5, 0, 3, 4, 0x21, 0x0c, 0x08, 5, 1, 2, 7, 0x3f, 0, 0x86, 5, 2, 4, 0, 3, 0xf3, 0x1e, 5, 3, 1},
	// refused transactions during handoffs, in both modes and all variants
	{0x05, 0, 2, 0xff, 0, 0, 2, 2, 0, 0, 0, 9, 0, 0x00, 1, 0xff, 0, 0x00, 9, 1, 0x01, 0, 0xff, 0, 0, 9, 0, 0x02, 2, 0x0f, 0, 0x00, 9, 1, 0x03, 4, 0xf0, 0, 0x06, 9, 0, 0x04, 1, 0x33, 0},
	// crashes of the primary and of replicas, restarts
	{0x0a, 0, 3, 0xff, 0, 0, 3, 0, 11, 0, 0x00, 1, 0x3c, 0, 0, 0, 11, 0, 0x01, 2, 0xff, 0, 0, 11, 0, 0x02, 0, 0x0f, 0, 0x40, 11, 0, 0x03, 3, 0xff, 0, 0x00, 11, 0, 0x04, 1, 0xff, 0, 0x00, 0x80, 11, 0, 0x05, 1, 11, 1, 0, 11, 2, 1, 10, 0x05, 10, 1},
	// retention, lagging replicas, failovers and divergence
	{0x00, 0, 1, 0xff, 0, 0, 6, 0, 0, 5, 0x0f, 0, 0, 0, 4, 0xf0, 0, 0, 13, 0, 14, 0x11, 0, 5, 0xff, 0, 0, 6, 0, 13, 1, 6, 0, 14, 0x00, 0, 3, 0xff, 0, 0, 6, 0},
}

// fzInput hands out the fuzz input byte by byte; past its end, zeros.
type fzInput struct {
	b []byte
	i int
}

func (in *fzInput) next() byte {
	if in.i >= len(in.b) {
		return 0
	}
	in.i++
	return in.b[in.i-1]
}

func (in *fzInput) done() bool { return in.i >= len(in.b) }

// fzLog keeps the last lines the stores logged, for failure messages.
type fzLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *fzLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.TrimRight(string(p), "\n"))
	if len(l.lines) > 200 {
		l.lines = slices.Clone(l.lines[len(l.lines)-40:])
	}
	return len(p), nil
}

func (l *fzLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines[max(0, len(l.lines)-n):], "\n")
}

type fzNode struct {
	id    int
	dir   string
	store *Store
	// walBackfill is how far SQLite has checkpointed the WAL of the WAL
	// database (nBackfill): frames before it are in the database file.
	// Zero after a restart, since SQLite's recovery starts from zero. Once
	// every committed frame is backfilled, the next write transaction
	// starts the WAL over with new salts.
	walBackfill int64
	errs        []string // failures reported through Store.OnError
	// role manages the node's role on the harness's in-memory lease: the
	// real election, handoff and step-down code. A restart or a crash
	// starts a new one, as a new process would.
	role *Role
	gate *fzNodeGate
}

type fzHarness struct {
	t   *testing.T
	ctx context.Context
	in  fzInput
	rng *rand.Rand
	log *fzLog

	nodes   [fzNodes]*fzNode
	primary int
	lease   *lease.Memory
	ps      map[string]uint32 // page size of each database

	// The model: the content of each database at every position
	// committed, the position each one followed, and the last position
	// the primary acknowledged.
	images map[string]map[ltx.Pos][]byte
	parent map[string]map[ltx.Pos]ltx.Pos
	acked  map[string]ltx.Pos

	failovers int  // failovers so far: histories may have diverged
	badFiles  bool // the next replication first offers a damaged or out-of-order file
	verified  map[string]*ltx.Decoded
	counter   uint64 // makes every page written unique
	step      int
	trace     []string
}

func newFzHarness(t *testing.T, data []byte) *fzHarness {
	hash := fnv.New64a()
	hash.Write(data)
	h := &fzHarness{
		t:      t,
		ctx:    context.Background(),
		in:     fzInput{b: data},
		rng:    rand.New(rand.NewPCG(hash.Sum64(), 0x5eed)),
		log:    &fzLog{},
		images: map[string]map[ltx.Pos][]byte{fzJ: {{}: nil}, fzW: {{}: nil}},
		parent: map[string]map[ltx.Pos]ltx.Pos{fzJ: {}, fzW: {}},
		acked:  map[string]ltx.Pos{},

		verified: map[string]*ltx.Decoded{},
		lease:    lease.NewMemory(),
	}
	// Mostly small pages; now and then the largest.
	sizes := [8]uint32{1024, 4096, 512, 1024, 4096, 512, 4096, 65536}
	cfg := h.in.next()
	h.ps = map[string]uint32{fzJ: sizes[cfg&7], fzW: sizes[(cfg>>3)&7]}
	h.tracef("config: page size %d for %q (rollback journal), %d for %q (WAL)", h.ps[fzJ], fzJ, h.ps[fzW], fzW)

	root := t.TempDir()
	for i := range h.nodes {
		h.nodes[i] = &fzNode{id: i, dir: filepath.Join(root, fmt.Sprintf("node%d", i))}
		h.open(i)
	}
	t.Cleanup(func() {
		for _, n := range h.nodes {
			if n.store != nil {
				n.store.Close()
			}
		}
	})
	return h
}

func (h *fzHarness) run() {
	h.check()
	for h.step = 1; h.step <= fzMaxSteps && !h.in.done(); h.step++ {
		switch fzOps[h.in.next()%16] {
		case fzOpJournalTxn:
			h.opJournalTxn(fzJ)
		case fzOpWALTxn:
			h.opWALTxn()
		case fzOpCheckpoint:
			h.opCheckpoint()
		case fzOpReplicate:
			h.opReplicate()
		case fzOpHandoff:
			h.handoff(h.pickReplica(h.in.next()), nil)
		case fzOpRefusedHandoff:
			h.opRefusedHandoff()
		case fzOpRestart:
			h.opRestart()
		case fzOpCrash:
			h.opCrash()
		case fzOpRetain:
			h.opRetain()
		case fzOpFailover:
			h.opFailover()
		}
		h.check()
	}
	// In the end every replica catches up with the primary.
	h.tracef("final: replicate to every replica")
	for i := range h.nodes {
		if i != h.primary {
			h.replicate(i, -1)
		}
	}
	h.check()
	p := h.nodes[h.primary].store
	for i, n := range h.nodes {
		for _, db := range n.store.DBs() {
			pdb := p.DB(db.Name())
			if pdb == nil || (pdb.Pos() != db.Pos() && pdb.Pos().TXID > 0) {
				h.fatalf("after a full replication node %d has %q at %s, the primary (node %d) does not", i, db.Name(), db.Pos(), h.primary)
			}
		}
	}
	if os.Getenv("FUZZ_HANDOFF_TRACE") != "" {
		h.t.Logf("steps:\n  %s", strings.Join(h.trace, "\n  "))
	}
}

func (h *fzHarness) tracef(format string, args ...any) {
	h.trace = append(h.trace, fmt.Sprintf("%2d: ", h.step)+fmt.Sprintf(format, args...))
}

func (h *fzHarness) fatalf(format string, args ...any) {
	h.t.Helper()
	h.t.Fatalf("step %d: %s\n\nsteps:\n  %s\n\nlast log lines:\n%s", h.step, fmt.Sprintf(format, args...),
		strings.Join(h.trace, "\n  "), h.log.tail(40))
}

// open opens node i's store with the role the harness gives it.
func (h *fzHarness) open(i int) {
	n := h.nodes[i]
	s := NewStore(n.dir)
	s.Retention, s.RetentionInterval = time.Hour, time.Hour // retention only when the fuzzer says
	s.Logger = slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug})).With(slog.Int(LogKeyNode, i))
	s.OnError = func(db string, err error) { n.errs = append(n.errs, fmt.Sprintf("%s: %v", db, err)) }
	s.SetPrimary(i == h.primary)
	if err := s.Open(); err != nil {
		h.fatalf("open node %d (primary %v): %v", i, i == h.primary, err)
	}
	n.store, n.walBackfill = s, 0
	n.gate = &fzNodeGate{}
	self := lease.Node{Hostname: fzNodeName(i), AdvertiseURL: fmt.Sprint(i), Candidate: true}
	// The lease lasts an hour, so that fences never pass by themselves
	// here; renewals are tried every millisecond.
	n.role = NewRole(h.lease.Leaser(self, time.Hour, 0), s, n.gate, &fzCluster{h: h})
	n.role.interval, n.role.HandoffTimeout = time.Millisecond, 5*time.Second
	if i == h.primary {
		// A restarted primary ends its previous run's session and takes
		// the lease again.
		h.lease.End()
		if err := h.lease.Offer(self.Hostname); err != nil {
			h.fatalf("offer the lease to node %d: %v", i, err)
		}
		h.stepUntilPrimary(i)
	}
}

func fzNodeName(i int) string { return fmt.Sprintf("node%d", i) }

// stepUntilPrimary runs node i's role until it holds the lease it was
// offered.
func (h *fzHarness) stepUntilPrimary(i int) {
	r := h.nodes[i].role
	ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
	defer cancel()
	for ctx.Err() == nil && !r.IsPrimary() {
		r.Step(ctx)
	}
	if !r.IsPrimary() {
		h.fatalf("node %d did not take the lease offered to it", i)
	}
	if !h.nodes[i].store.IsPrimary() {
		h.fatalf("node %d holds the lease but its store is not the primary", i)
	}
}

// takeOver makes node t the primary without a handoff: the old primary's
// session ends (as when it stops renewing), the lease goes to t. Unless
// the old primary crashed, its role sees the lease lost and steps down.
func (h *fzHarness) takeOver(old, t int, crashed bool) {
	h.lease.End()
	if !crashed {
		r := h.nodes[old].role
		ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
		r.Step(ctx) // renews, finds the lease lost, steps down
		cancel()
		if r.IsPrimary() || h.nodes[old].store.IsPrimary() {
			h.fatalf("node %d did not step down when its lease was lost", old)
		}
	}
	h.primary = t
	if err := h.lease.Offer(fzNodeName(t)); err != nil {
		h.fatalf("offer the lease to node %d: %v", t, err)
	}
	h.stepUntilPrimary(t)
}

// reopen closes node i's store and opens a new one on the same directory.
func (h *fzHarness) reopen(i int) {
	if err := h.nodes[i].store.Close(); err != nil {
		h.fatalf("close node %d: %v", i, err)
	}
	h.open(i)
}

func (h *fzHarness) pickReplica(b byte) int {
	var rs []int
	for i := range h.nodes {
		if i != h.primary {
			rs = append(rs, i)
		}
	}
	return rs[int(b)%len(rs)]
}

func (h *fzHarness) positions(i int) map[string]ltx.Pos {
	m := map[string]ltx.Pos{}
	for _, db := range h.nodes[i].store.DBs() {
		m[db.Name()] = db.Pos()
	}
	return m
}

// image returns a copy of the model's content of name at pos.
func (h *fzHarness) image(name string, pos ltx.Pos) []byte {
	img, ok := h.images[name][pos]
	if !ok {
		h.fatalf("%q: position %s is not one the model knows", name, pos)
	}
	return bytes.Clone(img)
}

func (h *fzHarness) record(name string, pos, parent ltx.Pos, img []byte) {
	h.images[name][pos] = bytes.Clone(img)
	if _, ok := h.parent[name][pos]; !ok {
		h.parent[name][pos] = parent
	}
}

// isAncestor reports whether the history that led to b passed through a.
func (h *fzHarness) isAncestor(name string, a, b ltx.Pos) bool {
	for cur := b; ; {
		if cur == a {
			return true
		}
		if cur.TXID == 0 || cur.TXID < a.TXID {
			return false
		}
		p, ok := h.parent[name][cur]
		if !ok {
			return false
		}
		cur = p
	}
}
