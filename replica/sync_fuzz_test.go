package replica

// FuzzSyncFailover drives three in-process nodes with sync-replicas 1
// through commits that one candidate acknowledges, commits that time out
// and are taken back (after a replica may have received them), deliveries
// over the real ordered stream (Server.sendOrdered) cut short anywhere,
// crashes of the primary while a commit waits (its LTX file durable on the
// crashed node, never acknowledged), restarts, and failovers decided by
// the real election (Role on a lease.Memory, every node stepping in turn).
// After every election the new primary must hold every acknowledged
// transaction of every database. Two databases are written, so the
// ordering across databases is exercised too.
//
// The model records, for every position a commit published, the position
// before it; a node's history is the chain back from its position.
//
// Set FUZZ_SYNC_TRACE=1 to log the steps of every input.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/lease"
	"github.com/litefs-project/litefs/ltx"
)

const (
	sfNodes    = 3
	sfMaxSteps = 30
	sfPageSize = 512
)

var sfDBs = [2]string{"a", "b"}

func FuzzSyncFailover(f *testing.F) {
	for _, seed := range sfSeeds {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h := newSfHarness(t, data)
		h.run()
	})
}

// sfSeeds reach every operation; the first is the case of two candidates
// at an equal TXID with different content: the primary's unacknowledged
// commit survives its crash, another primary commits the same TXID,
// acknowledged, then crashes, and the first returns.
var sfSeeds = [][]byte{
	{2, 0x00, 4, 0x00, 0, 0x00, 5, 0x00, 4, 0x00},
	{0, 0x01, 0, 0x11, 1, 0x02, 2, 0x10, 4, 0x00, 0, 0x21, 4, 0x05, 5, 0x01, 3, 0x02, 0, 0x00},
	{0, 0x00, 1, 0x01, 1, 0x03, 2, 0x03, 4, 0x04, 2, 0x01, 4, 0x02, 0, 0x12, 3, 0x00},
	{5, 0x01, 0, 0x00, 2, 0x13, 6, 0x00, 4, 0x01, 2, 0x11, 4, 0x06, 0, 0x01, 6, 0x01, 3, 0x01},
	{0, 0x10, 0, 0x01, 2, 0x02, 4, 0x03, 1, 0x00, 2, 0x00, 4, 0x00, 4, 0x01, 0, 0x00},
}

const (
	sfOpAcked    = iota // a commit one candidate acknowledges
	sfOpTimeout         // a commit no candidate acknowledges in time: taken back
	sfOpCrashMid        // the primary crashes while a commit waits
	sfOpDeliver         // the stream delivers to a replica, maybe cut short
	sfOpFailover        // the primary crashes; the others elect
	sfOpRestart         // a node that is down comes back, or a replica restarts
	sfOpHandoff         // the primary steps down in place (lease lost); the others elect
)

type sfNode struct {
	dir   string
	store *Store // nil while down
	role  *Role
}

type sfHarness struct {
	t     *testing.T
	ctx   context.Context
	in    fzInput
	log   *fzLog
	lease *lease.Memory
	nodes [sfNodes]*sfNode
	// primary is the node holding the lease, -1 while none does.
	primary int

	parent  map[string]map[ltx.Pos]ltx.Pos // every published position -> the one before it
	acked   map[string]ltx.Pos             // the newest acknowledged position of each database
	counter uint32                         // makes every page written unique
	step    int
	trace   []string
}

func newSfHarness(t *testing.T, data []byte) *sfHarness {
	h := &sfHarness{
		t: t, ctx: context.Background(), in: fzInput{b: data}, log: &fzLog{},
		lease:  lease.NewMemory(),
		parent: map[string]map[ltx.Pos]ltx.Pos{},
		acked:  map[string]ltx.Pos{},
	}
	for _, name := range sfDBs {
		h.parent[name] = map[ltx.Pos]ltx.Pos{}
	}
	root := t.TempDir()
	for i := range h.nodes {
		h.nodes[i] = &sfNode{dir: filepath.Join(root, fmt.Sprintf("node%d", i))}
		h.open(i)
	}
	t.Cleanup(func() {
		for _, n := range h.nodes {
			if n.store != nil {
				n.store.syncTracker().abort(ErrClosed) // a commit left waiting by a failure
				_ = n.store.Close()
			}
		}
	})
	// Node 0 starts as the primary, elected like any other, with every
	// database created and replicated to all.
	h.primary = -1
	h.elect(0)
	for _, name := range sfDBs {
		h.commit(name, func(c *sfCommit) {
			for i := range h.nodes {
				if i != h.primary {
					h.deliver(i, -1)
					h.ack(i)
				}
			}
		})
	}
	return h
}

func (h *sfHarness) tracef(format string, args ...any) {
	h.trace = append(h.trace, fmt.Sprintf("%2d: ", h.step)+fmt.Sprintf(format, args...))
}

func (h *sfHarness) fatalf(format string, args ...any) {
	h.t.Helper()
	h.t.Fatalf("step %d: %s\n\nsteps:\n  %s\n\nlast log lines:\n%s", h.step, fmt.Sprintf(format, args...),
		strings.Join(h.trace, "\n  "), h.log.tail(40))
}

// open starts node i as a replica: a new process on its directory.
func (h *sfHarness) open(i int) {
	n := h.nodes[i]
	s := NewStore(n.dir)
	s.Logger = slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug})).With(slog.Int(LogKeyNode, i))
	s.SyncReplicas, s.SyncTimeout, s.SyncFallback = 1, time.Hour, SyncFallbackFail
	s.Retention, s.RetentionInterval = time.Hour, time.Hour
	s.SetPrimary(false)
	if err := s.Open(); err != nil {
		h.fatalf("open node %d: %v", i, err)
	}
	self := lease.Node{Hostname: sfName(i), AdvertiseURL: fmt.Sprint(i), Candidate: true}
	r := NewRole(h.lease.Leaser(self, time.Hour, 0), s, &fzNodeGate{}, &sfCluster{h: h})
	r.interval, r.electionWait = time.Millisecond, 0
	r.SyncReplicas = 1
	n.store, n.role = s, r
}

func sfName(i int) string { return fmt.Sprintf("node%d", i) }

func (h *sfHarness) up(i int) bool { return h.nodes[i].store != nil }

func (h *sfHarness) run() {
	for h.step = 1; h.step <= sfMaxSteps && !h.in.done(); h.step++ {
		op, o := int(h.in.next())%7, h.in.next()
		if h.primary < 0 && op != sfOpRestart {
			op = sfOpFailover // no primary: elect one first
		}
		switch op {
		case sfOpAcked:
			h.opAcked(o)
		case sfOpTimeout:
			h.opTimeout(o)
		case sfOpCrashMid:
			h.opCrashMid(o)
		case sfOpDeliver:
			r := h.pickReplica(o)
			if r < 0 {
				continue
			}
			limit := int(o>>4) - 1 // -1: all
			h.tracef("deliver to node %d, at most %d files", r, limit)
			h.deliver(r, limit)
		case sfOpFailover:
			if h.primary >= 0 {
				h.tracef("node %d crashes", h.primary)
				h.crash(h.primary, false)
			}
			h.electAny(o)
		case sfOpRestart:
			h.opRestart(o)
		case sfOpHandoff:
			if h.primary >= 0 {
				h.stepDown(o)
			}
		}
	}
	// In the end a primary, every node up and caught up, all equal.
	if h.primary < 0 {
		h.electAny(0)
	}
	for i := range h.nodes {
		if !h.up(i) {
			h.open(i)
		}
	}
	p := h.nodes[h.primary].store
	for i := range h.nodes {
		if i != h.primary {
			h.deliver(i, -1)
			for _, name := range sfDBs {
				if got, want := h.nodes[i].store.DB(name).Pos(), p.DB(name).Pos(); got != want {
					h.fatalf("after a full delivery node %d has %q at %s, the primary (node %d) at %s", i, name, got, h.primary, want)
				}
			}
		}
	}
	h.checkAcked(h.primary, "the end")
	if os.Getenv("FUZZ_SYNC_TRACE") != "" {
		h.t.Logf("steps:\n  %s", strings.Join(h.trace, "\n  "))
	}
}

// pickReplica returns an up replica chosen by b, or -1.
func (h *sfHarness) pickReplica(b byte) int {
	var rs []int
	for i := range h.nodes {
		if i != h.primary && h.up(i) {
			rs = append(rs, i)
		}
	}
	if len(rs) == 0 {
		return -1
	}
	return rs[int(b)%len(rs)]
}

// sfCommit is a commit on the primary, run by its own goroutine as
// SQLite's would be, since it waits for acknowledgements.
type sfCommit struct {
	db        string
	prev, pos ltx.Pos
	old       []byte // page 1 before: what SQLite's rollback writes back
	done      chan error
}

// startCommit writes page 1 of database name on the primary as a
// rollback-journal transaction and commits it, in the background, and
// returns once its position is published (or the commit has failed).
func (h *sfHarness) startCommit(name string) *sfCommit {
	s := h.nodes[h.primary].store
	db := s.DB(name)
	if db == nil {
		var err error
		if db, err = s.CreateDB(name); err != nil {
			h.fatalf("create %q: %v", name, err)
		}
	}
	h.counter++
	p := make([]byte, sfPageSize)
	copy(p, "SQLite format 3\x00")
	binary.BigEndian.PutUint16(p[16:], sfPageSize)
	binary.BigEndian.PutUint32(p[28:], 1)
	binary.BigEndian.PutUint32(p[sfPageSize-4:], h.counter)
	old := make([]byte, sfPageSize)
	if db.Pos().TXID > 0 {
		if _, err := db.ReadAt(old, 0); err != nil {
			h.fatalf("read page: %v", err)
		}
	}
	if err := os.WriteFile(db.JournalPath(), []byte("journal"), 0o644); err != nil {
		h.fatalf("write journal: %v", err)
	}
	if _, err := db.WriteAt(p, 0); err != nil {
		h.fatalf("write page: %v", err)
	}
	c := &sfCommit{db: name, prev: db.Pos(), old: old, done: make(chan error, 1)}
	go func() { c.done <- db.RemoveJournal() }()
	for i := 0; i < 5000; i++ {
		changed := s.Changed()
		if pos := db.Pos(); pos.TXID == c.prev.TXID+1 {
			c.pos = pos
			if _, ok := h.parent[name][pos]; !ok {
				h.parent[name][pos] = c.prev
			}
			return c
		}
		select {
		case err := <-c.done:
			h.fatalf("commit of %q failed before it was published: %v", name, err)
		case <-changed:
		case <-time.After(time.Millisecond):
		}
	}
	h.fatalf("commit of %q was not published", name)
	return nil
}

// wait returns the commit's result.
func (h *sfHarness) wait(c *sfCommit) error {
	select {
	case err := <-c.done:
		return err
	case <-time.After(10 * time.Second):
		h.fatalf("commit of %q at %s never returned", c.db, c.pos)
		return nil
	}
}

// commit commits to database name, runs while as the commit waits, and
// expects the commit to be acknowledged.
func (h *sfHarness) commit(name string, while func(*sfCommit)) {
	c := h.startCommit(name)
	while(c)
	if err := h.wait(c); err != nil {
		h.fatalf("commit of %q at %s: %v", name, c.pos, err)
	}
	h.tracef("  %q at %s acknowledged", name, c.pos)
	h.acked[name] = c.pos
}

// opAcked commits to a database; one replica receives it and
// acknowledges, the other may receive part of the stream.
func (h *sfHarness) opAcked(o byte) {
	r := h.pickReplica(o >> 1)
	if r < 0 {
		return
	}
	name := sfDBs[o&1]
	h.tracef("commit to %q, acknowledged by node %d", name, r)
	// A snapshot waits for a commit of its database that waits for
	// acknowledgements (until it times out): the candidate to acknowledge
	// is brought up first.
	h.deliver(r, -1)
	h.commit(name, func(c *sfCommit) {
		h.deliver(r, -1)
		if other := h.pickReplica(o>>1 + 1); other != r && other >= 0 && o&0x40 != 0 && !h.needsSnapshot(other, name) {
			h.deliver(other, int(o>>4)%3)
		}
		h.ack(r)
	})
}

// opTimeout commits to a database that no candidate acknowledges: the
// commit is taken back after a replica may have received it.
func (h *sfHarness) opTimeout(o byte) {
	name := sfDBs[o&1]
	t := h.nodes[h.primary].store.syncTracker()
	t.mu.Lock()
	t.timeout = 20 * time.Millisecond
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		t.timeout = time.Hour
		t.mu.Unlock()
	}()
	c := h.startCommit(name)
	// A snapshot of the database would wait for the transaction to end,
	// which SQLite ends (rolls back) only after the commit returns.
	r := h.pickReplica(o >> 1)
	delivered := r >= 0 && o&0x20 != 0 && !h.needsSnapshot(r, name)
	if delivered {
		h.deliver(r, -1) // may be before or after the take-back: either holds
	}
	err := h.wait(c)
	if err == nil {
		h.tracef("commit to %q at %s acknowledged after all", name, c.pos)
		h.acked[name] = c.pos
		return
	}
	if !errors.Is(err, ErrSyncTimeout) {
		h.fatalf("commit of %q at %s: %v, want ErrSyncTimeout", name, c.pos, err)
	}
	db := h.nodes[h.primary].store.DB(name)
	if got := db.Pos(); got != c.prev {
		h.fatalf("taken-back commit of %q: position %s, want %s", name, got, c.prev)
	}
	// SQLite rolls the transaction back from its journal: the page as it
	// was, the journal deleted, which commits nothing.
	if _, err := db.WriteAt(c.old, 0); err != nil {
		h.fatalf("roll back: %v", err)
	}

	if err := db.RemoveJournal(); err != nil {
		h.fatalf("roll back: %v", err)
	}
	if got := db.Pos(); got != c.prev {
		h.fatalf("rolled-back commit of %q: position %s, want %s", name, got, c.prev)
	}
	h.tracef("commit to %q at %s taken back (node %d received it: %v)", name, c.pos, r, delivered)
}

// opCrashMid crashes the primary while a commit waits: its LTX file is
// durable, so it comes back with the crashed node, never acknowledged.
func (h *sfHarness) opCrashMid(o byte) {
	name := sfDBs[o&1]
	c := h.startCommit(name)
	if r := h.pickReplica(o >> 1); r >= 0 && o&0x20 != 0 && !h.needsSnapshot(r, name) {
		h.deliver(r, int(o>>6)-1)
	}
	old := h.primary
	h.tracef("node %d crashes while %q at %s waits", old, name, c.pos)
	h.crash(old, true)
	if err := h.wait(c); err == nil {
		h.fatalf("a commit whose node crashed was acknowledged")
	}
	if o&0x10 != 0 {
		h.tracef("node %d restarts at once", old)
		h.open(old)
	}
}

// crash ends node i as SIGKILL would. With image, the state on disk is
// taken as it is now, before anything the node does to stop.
func (h *sfHarness) crash(i int, image bool) {
	n := h.nodes[i]
	var saved string
	if image {
		saved = n.dir + ".crash"
		if err := os.CopyFS(saved, os.DirFS(n.dir)); err != nil {
			h.fatalf("copy node %d's directory: %v", i, err)
		}
	}
	if t := n.store.syncTracker(); t != nil {
		t.abort(ErrClosed) // the waiting commit's goroutine ends with the process
	}
	_ = n.store.Close()
	n.store, n.role = nil, nil
	if image {
		if err := os.RemoveAll(n.dir); err != nil {
			h.fatalf("%v", err)
		}
		if err := os.Rename(saved, n.dir); err != nil {
			h.fatalf("%v", err)
		}
	}
	if i == h.primary {
		h.lease.End()
		h.primary = -1
	}
}

// stepDown makes the primary lose its lease in place; the others elect
// (the old primary takes part).
func (h *sfHarness) stepDown(o byte) {
	old := h.primary
	h.tracef("node %d loses its lease and steps down", old)
	h.lease.End()
	r := h.nodes[old].role
	ctx, cancel := context.WithTimeout(h.ctx, 5*time.Second)
	r.Step(ctx) // renews, finds the lease lost, steps down
	cancel()
	if r.IsPrimary() || h.nodes[old].store.IsPrimary() {
		h.fatalf("node %d did not step down", old)
	}
	h.primary = -1
	h.electAny(o)
}

func (h *sfHarness) opRestart(o byte) {
	var down []int
	for i := range h.nodes {
		if !h.up(i) {
			down = append(down, i)
		}
	}
	if len(down) > 0 {
		i := down[int(o)%len(down)]
		h.tracef("node %d restarts", i)
		h.open(i)
		return
	}
	if r := h.pickReplica(o); r >= 0 {
		h.tracef("replica node %d restarts", r)
		if err := h.nodes[r].store.Close(); err != nil {
			h.fatalf("close node %d: %v", r, err)
		}
		h.open(r)
	}
}

// electAny runs an election among the nodes that are up, starting enough
// of the others that two candidates take part (sync-replicas 1 needs one
// other candidate's position); b picks who steps first.
func (h *sfHarness) electAny(b byte) {
	for up := h.countUp(); up < 2; up++ {
		for i := range h.nodes {
			if !h.up(i) {
				h.tracef("node %d restarts for the election", i)
				h.open(i)
				break
			}
		}
	}
	h.elect(int(b) % sfNodes)
}

func (h *sfHarness) countUp() int {
	n := 0
	for i := range h.nodes {
		if h.up(i) {
			n++
		}
	}
	return n
}

// elect steps every node that is up, in turn from first, until one holds
// the lease, and checks that it holds every acknowledged transaction.
func (h *sfHarness) elect(first int) {
	ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
	defer cancel()
	for round := 0; round < 200 && h.primary < 0; round++ {
		for k := range h.nodes {
			i := (first + k) % sfNodes
			if !h.up(i) {
				continue
			}
			h.nodes[i].role.Step(ctx)
			if h.nodes[i].role.IsPrimary() {
				h.primary = i
				break
			}
		}
	}
	if h.primary < 0 {
		h.fatalf("no node was elected")
	}
	h.tracef("node %d elected (stamp %s, positions %v)", h.primary, h.nodes[h.primary].store.Stamp(), h.positions(h.primary))
	h.checkAcked(h.primary, "election")
}

func (h *sfHarness) positions(i int) map[string]ltx.Pos {
	m := map[string]ltx.Pos{}
	for _, db := range h.nodes[i].store.DBs() {
		m[db.Name()] = db.Pos()
	}
	return m
}

// checkAcked fails unless node i's history holds every acknowledged
// position.
func (h *sfHarness) checkAcked(i int, what string) {
	s := h.nodes[i].store
	for name, a := range h.acked {
		db := s.DB(name)
		if db == nil {
			h.fatalf("%s: node %d lost %q, acknowledged up to %s", what, i, name, a)
		}
		if pos := db.Pos(); !h.isAncestor(name, a, pos) {
			h.fatalf("%s: node %d is at %s on %q, whose history does not include the acknowledged %s", what, i, pos, name, a)
		}
	}
}

func (h *sfHarness) isAncestor(name string, a, b ltx.Pos) bool {
	for cur, n := b, 0; n < 1<<20; n++ {
		if cur == a {
			return true
		}
		if cur.TXID <= a.TXID {
			return false
		}
		p, ok := h.parent[name][cur]
		if !ok {
			return false
		}
		cur = p
	}
	return false
}

// deliver runs a round of the primary's ordered stream to replica r and
// applies what arrives as the stream client does, at most limit files
// (-1: all), as if the stream broke there.
func (h *sfHarness) deliver(r, limit int) {
	p, rs := h.nodes[h.primary].store, h.nodes[r].store
	sent := map[string]ltx.Pos{}
	for _, db := range rs.DBs() {
		sent[db.Name()] = db.Pos()
	}
	var buf bytes.Buffer
	srv := NewServer(p, sfName(h.primary))
	if err := srv.sendOrdered(h.ctx, &streamWriter{w: &buf, flusher: nopFlusher{}}, p.syncTracker(), sent, p.Logger); err != nil {
		h.fatalf("stream to node %d: %v", r, err)
	}
	c := NewStreamClient("", rs, nil)
	var batch []*incoming
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if err := c.apply(h.ctx, batch); err != nil {
			h.fatalf("apply on node %d: %v", r, err)
		}
		for _, in := range batch {
			in.discard()
		}
		batch = nil
	}
	rd := bufio.NewReader(&buf)
	var (
		in   *incoming
		snap *snapshotReceiver // a streamed snapshot, applied as it arrives
	)
	files := 0
	for i := 0; i < 1<<16 && (limit < 0 || files < limit); i++ {
		typ, payload, err := readFrame(rd)
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			h.fatalf("read frame: %v", err)
		}
		switch typ {
		case frameBegin:
			var b streamBegin
			if err := json.Unmarshal(payload, &b); err != nil {
				h.fatalf("%v", err)
			}
			if b.Streamed {
				flush()
				snap = receiveSnapshot(b, rs.TempDir())
			} else if in, err = c.newIncoming(b); err != nil {
				h.fatalf("%v", err)
			}
		case frameChunk:
			if snap != nil {
				if err := snap.write(payload); err != nil {
					h.fatalf("%v", err)
				}
				continue
			}
			if err := in.write(payload); err != nil {
				h.fatalf("%v", err)
			}
		case frameEnd:
			if snap != nil {
				if err := c.applySnapshot(h.ctx, snap); err != nil {
					h.fatalf("apply snapshot on node %d: %v", r, err)
				}
				snap, files = nil, files+1
				continue
			}
			if err := in.finish(); err != nil {
				h.fatalf("%v", err)
			}
			if len(batch) > 0 && (in.begin.Snapshot || in.begin.DB != batch[0].begin.DB) {
				flush()
			}
			batch = append(batch, in)
			if in.begin.Snapshot {
				flush()
			}
			in, files = nil, files+1
		}
	}
	flush()
	if in != nil {
		in.discard()
	}
	if snap != nil {
		snap.abort()
	}
}

// needsSnapshot reports whether the primary would send replica r a
// snapshot of database name.
func (h *sfHarness) needsSnapshot(r int, name string) bool {
	var from ltx.Pos
	if db := h.nodes[r].store.DB(name); db != nil {
		from = db.Pos()
	}
	plan, err := planSend(h.nodes[h.primary].store.DB(name), from, true)
	if err != nil {
		h.fatalf("plan: %v", err)
	}
	return plan.snapshot
}

// ack acknowledges to the primary, as replica r's stream would, what r
// holds.
func (h *sfHarness) ack(r int) {
	rs := h.nodes[r].store
	h.nodes[h.primary].store.syncTracker().ack(sfName(r), h.positions(r), rs.Stamp())
}

// sfCluster is the network as the roles see it.
type sfCluster struct{ h *sfHarness }

func (c *sfCluster) Follow(ctx context.Context, p lease.PrimaryInfo) func() { return func() {} }

func (c *sfCluster) Connected() []ReplicaInfo {
	var a []ReplicaInfo
	for i := range c.h.nodes {
		if i != c.h.primary && c.h.up(i) {
			a = append(a, ReplicaInfo{Node: sfName(i), AdvertiseURL: fmt.Sprint(i), Candidate: true})
		}
	}
	return a
}

func (c *sfCluster) Info(ctx context.Context, url string) (NodeInfo, error) {
	return NodeInfo{}, errors.New("not used")
}

func (c *sfCluster) WaitPositions(ctx context.Context, url string, want map[string]ltx.Pos) (NodeInfo, error) {
	return NodeInfo{}, errors.New("handoffs are not fuzzed here")
}

func (c *sfCluster) Handoff(ctx context.Context, url, to string) (HandoffResult, error) {
	return HandoffResult{}, errors.New("handoffs are not fuzzed here")
}
