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
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/litefs-project/litefs/checksum"
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

// --- invariants ---

// check verifies every invariant on every node.
func (h *fzHarness) check() {
	for i, n := range h.nodes {
		if n.store.IsPrimary() != (i == h.primary) {
			h.fatalf("node %d: IsPrimary() = %v, but node %d is the primary", i, n.store.IsPrimary(), h.primary)
		}
		if len(n.errs) > 0 {
			h.fatalf("node %d reported failures through OnError: %s", i, strings.Join(n.errs, "; "))
		}
		for _, db := range n.store.DBs() {
			h.checkDB(i, db)
		}
	}

	// No acknowledged transaction is lost: the primary's history passes
	// through every position it acknowledged (since the last failover).
	p := h.nodes[h.primary].store
	for name, a := range h.acked {
		if a.TXID == 0 {
			continue
		}
		pdb := p.DB(name)
		if pdb == nil {
			h.fatalf("the primary (node %d) lost database %q, acknowledged up to %s", h.primary, name, a)
		}
		if pos := pdb.Pos(); !h.isAncestor(name, a, pos) {
			h.fatalf("the primary (node %d) is at %s on %q, which does not include the acknowledged %s", h.primary, pos, name, a)
		}
	}

	// Nodes at equal TXIDs have equal checksums; after a failover, only
	// among those on the primary's history (the others are re-snapshotted).
	for _, name := range []string{fzJ, fzW} {
		var cur ltx.Pos
		if pdb := p.DB(name); pdb != nil {
			cur = pdb.Pos()
		}
		at := map[ltx.TXID]ltx.Pos{}
		who := map[ltx.TXID]int{}
		for i, n := range h.nodes {
			db := n.store.DB(name)
			if db == nil {
				continue
			}
			pos := db.Pos()
			if h.failovers > 0 && !h.isAncestor(name, pos, cur) {
				continue
			}
			if prev, ok := at[pos.TXID]; ok && prev.Checksum != pos.Checksum {
				h.fatalf("%q: node %d is at %s, node %d at %s: equal TXIDs, different checksums", name, who[pos.TXID], prev, i, pos)
			}
			at[pos.TXID], who[pos.TXID] = pos, i
		}
	}
}

// checkDB verifies one database of node i against its log and the model.
func (h *fzHarness) checkDB(i int, db *DB) {
	name, pos := db.Name(), db.Pos()
	ps := int(h.ps[name])
	img, err := fzLogicalImage(db.Path(), db.WALPath(), ps)
	if err != nil {
		h.fatalf("node %d %q: %v", i, name, err)
	}
	if sum := fzSum(img, ps); sum != pos.Checksum {
		h.fatalf("node %d %q: position %s, but a full recompute of the database file (with the WAL's committed frames) gives %s",
			i, name, pos, sum)
	}

	// The log: contiguous, each file continuing the one before, ending at
	// the position; the directory holds exactly the files the log lists.
	files := db.Log().Files()
	ents, err := os.ReadDir(db.Log().Dir())
	if err != nil {
		h.fatalf("node %d %q: %v", i, name, err)
	}
	var onDisk, listed []string
	for _, ent := range ents {
		onDisk = append(onDisk, ent.Name())
	}
	for _, f := range files {
		listed = append(listed, ltx.FormatFilename(f.MinTXID, f.MaxTXID))
	}
	slices.Sort(onDisk)
	slices.Sort(listed)
	if !slices.Equal(onDisk, listed) {
		h.fatalf("node %d %q: ltx directory holds %v, the log lists %v", i, name, onDisk, listed)
	}
	if pos.TXID == 0 {
		if len(files) > 0 {
			h.fatalf("node %d %q: position %s with %d ltx files", i, name, pos, len(files))
		}
	} else if len(files) == 0 || files[len(files)-1].MaxTXID != pos.TXID {
		h.fatalf("node %d %q: position %s, but the last ltx file is %v", i, name, pos, listed)
	}
	var prev ltx.Pos
	for k, f := range files {
		d, err := h.verifyLTX(db.Log().Path(f.MinTXID, f.MaxTXID))
		if err != nil {
			h.fatalf("node %d %q: %v", i, name, err)
		}
		if k > 0 {
			if f.MinTXID != prev.TXID+1 {
				h.fatalf("node %d %q: ltx files not contiguous: %v", i, name, listed)
			}
			if !d.Header.IsSnapshot() && d.Header.PreApplyChecksum != prev.Checksum {
				h.fatalf("node %d %q: ltx %s applies to checksum %s, the file before ends at %s",
					i, name, listed[k], d.Header.PreApplyChecksum, prev)
			}
		}
		if d.Header.PageSize != uint32(ps) {
			h.fatalf("node %d %q: ltx %s has page size %d, want %d", i, name, listed[k], d.Header.PageSize, ps)
		}
		prev = ltx.Pos{TXID: f.MaxTXID, Checksum: d.PostApplyChecksum}
	}
	if len(files) > 0 && prev != pos {
		h.fatalf("node %d %q: position %s, the last ltx file ends at %s", i, name, pos, prev)
	}

	// The content is the model's at that position.
	want, ok := h.images[name][pos]
	if !ok {
		h.fatalf("node %d %q: position %s is not one the model knows", i, name, pos)
	}
	if !bytes.Equal(img, want) {
		h.fatalf("node %d %q at %s: content differs from the model: %s", i, name, pos, fzDiff(img, want, ps))
	}
}

// verifyLTX verifies an LTX file once: LTX files are never changed in
// place, so a file with the same inode, size and time needs no second look.
func (h *fzHarness) verifyLTX(path string) (*ltx.Decoded, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ltx.VerifyFile(path)
	}
	key := fmt.Sprintf("%s:%d:%d:%d", path, st.Ino, fi.Size(), fi.ModTime().UnixNano())
	if d, ok := h.verified[key]; ok {
		return d, nil
	}
	d, err := ltx.VerifyFile(path)
	if err == nil {
		h.verified[key] = d
	}
	return d, err
}

// checkAside verifies that a database moved aside kept the state at pos.
func (h *fzHarness) checkAside(dir, name string, pos ltx.Pos) {
	ps := int(h.ps[name])
	img, err := fzLogicalImage(filepath.Join(dir, DatabaseFile), filepath.Join(dir, WALFile), ps)
	if err != nil {
		h.fatalf("%q moved aside to %s: %v", name, dir, err)
	}
	if want := h.image(name, pos); !bytes.Equal(img, want) {
		h.fatalf("%q moved aside to %s does not hold its state at %s: %s", name, dir, pos, fzDiff(img, want, ps))
	}
	ents, err := os.ReadDir(filepath.Join(dir, LTXDir))
	if err != nil || len(ents) == 0 {
		h.fatalf("%q moved aside to %s without its ltx files: %v", name, dir, err)
	}
	if _, max, err := ltx.ParseFilename(ents[len(ents)-1].Name()); err != nil || max != pos.TXID {
		h.fatalf("%q moved aside to %s: last ltx file %s, want txid %s", name, dir, ents[len(ents)-1].Name(), pos.TXID)
	}
}

func fzDiff(got, want []byte, ps int) string {
	if len(got) != len(want) {
		return fmt.Sprintf("%d pages, want %d", len(got)/ps, len(want)/ps)
	}
	for off := 0; off < len(got); off += ps {
		if !bytes.Equal(got[off:off+ps], want[off:off+ps]) {
			return fmt.Sprintf("page %d differs", off/ps+1)
		}
	}
	return "equal"
}

func fzSum(img []byte, ps int) checksum.Checksum {
	if len(img) == 0 {
		return 0
	}
	tbl, err := checksum.Read(bytes.NewReader(img), uint32(ps))
	if err != nil {
		panic(err) // img is whole pages
	}
	return tbl.Sum()
}

// fzLogicalImage returns the database as readers see it: the file with
// the WAL's committed transactions on top.
func fzLogicalImage(dbPath, walPath string, ps int) ([]byte, error) {
	img, err := os.ReadFile(dbPath)
	if err != nil {
		return nil, err
	}
	if len(img)%ps != 0 {
		return nil, fmt.Errorf("database file of %d bytes is not a whole number of %d-byte pages", len(img), ps)
	}
	info, err := fzReadWAL(walPath, ps)
	if err != nil {
		return nil, err
	}
	for _, txn := range info.txns {
		for _, fr := range txn.frames {
			img = fzResize(img, max(len(img), int(fr.pgno)*ps))
			copy(img[int(fr.pgno-1)*ps:], fr.data)
		}
		img = fzResize(img, int(txn.commit)*ps)
	}
	return img, nil
}

func fzResize(b []byte, n int) []byte {
	if len(b) >= n {
		return b[:n]
	}
	return append(b, make([]byte, n-len(b))...)
}

// --- SQLite's WAL, written and read here independently of wal.go ---

const (
	fzWALMagic   = 0x377f0682 // checksums over little-endian words; +1: big-endian
	fzWALHdrSize = 32
	fzFrameHdr   = 24
)

// fzWALSum is SQLite's WAL checksum (walChecksumBytes).
func fzWALSum(bigEndian bool, b []byte, s [2]uint32) [2]uint32 {
	for i := 0; i+8 <= len(b); i += 8 {
		var x0, x1 uint32
		if bigEndian {
			x0, x1 = binary.BigEndian.Uint32(b[i:]), binary.BigEndian.Uint32(b[i+4:])
		} else {
			x0, x1 = binary.LittleEndian.Uint32(b[i:]), binary.LittleEndian.Uint32(b[i+4:])
		}
		s[0] += x0 + s[1]
		s[1] += x1 + s[0]
	}
	return s
}

type fzWALInfo struct {
	valid        bool
	bigEndian    bool
	ckpt         uint32
	salt1, salt2 uint32
	end          int64     // just after the last commit frame
	sum          [2]uint32 // checksum chain at end
	txns         []fzWALTxn
}

type fzWALTxn struct {
	frames []fzWALFrame
	commit uint32
	end    int64 // just after its commit frame
}

func (info fzWALInfo) txnEnd(k int) int64 { return info.txns[k].end }

type fzWALFrame struct {
	pgno uint32
	data []byte
}

// fzReadWAL reads the committed transactions of the WAL at path as SQLite's
// recovery does: up to the first frame whose salts or checksum chain fail.
func fzReadWAL(path string, ps int) (fzWALInfo, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return fzWALInfo{}, nil
	} else if err != nil {
		return fzWALInfo{}, err
	}
	if len(b) < fzWALHdrSize {
		return fzWALInfo{}, nil
	}
	magic := binary.BigEndian.Uint32(b)
	if magic != fzWALMagic && magic != fzWALMagic+1 || binary.BigEndian.Uint32(b[8:]) != uint32(ps) {
		return fzWALInfo{}, nil
	}
	be := magic&1 == 1
	s := fzWALSum(be, b[:24], [2]uint32{})
	if s != [2]uint32{binary.BigEndian.Uint32(b[24:]), binary.BigEndian.Uint32(b[28:])} {
		return fzWALInfo{}, nil
	}
	info := fzWALInfo{valid: true, bigEndian: be, ckpt: binary.BigEndian.Uint32(b[12:]),
		salt1: binary.BigEndian.Uint32(b[16:]), salt2: binary.BigEndian.Uint32(b[20:]), end: fzWALHdrSize, sum: s}
	var cur fzWALTxn
	for off := fzWALHdrSize; off+fzFrameHdr+ps <= len(b); off += fzFrameHdr + ps {
		fh, data := b[off:off+fzFrameHdr], b[off+fzFrameHdr:off+fzFrameHdr+ps]
		pgno, commit := binary.BigEndian.Uint32(fh), binary.BigEndian.Uint32(fh[4:])
		if pgno == 0 || binary.BigEndian.Uint32(fh[8:]) != info.salt1 || binary.BigEndian.Uint32(fh[12:]) != info.salt2 {
			break
		}
		s = fzWALSum(be, data, fzWALSum(be, fh[:8], s))
		if s != [2]uint32{binary.BigEndian.Uint32(fh[16:]), binary.BigEndian.Uint32(fh[20:])} {
			break
		}
		cur.frames = append(cur.frames, fzWALFrame{pgno: pgno, data: data})
		if commit != 0 {
			cur.commit, cur.end = commit, int64(off+fzFrameHdr+ps)
			info.txns = append(info.txns, cur)
			cur = fzWALTxn{}
			info.end, info.sum = int64(off+fzFrameHdr+ps), s
		}
	}
	return info, nil
}

type fzWrite struct {
	off  int64
	data []byte
}

type fzFrame struct {
	off          int64
	pgno, commit uint32
	data         []byte
	sum          [2]uint32 // as written in its header
}

// fzWALWriter builds the writes SQLite makes to the WAL for one
// transaction (walFrames): a header when the WAL starts over, a header
// write and a page write per frame.
type fzWALWriter struct {
	ps           int
	bigEndian    bool
	salt1, salt2 uint32
	off          int64     // where the next frame goes
	start        [2]uint32 // checksum chain before this transaction's first frame
	sum          [2]uint32 // chain as the writer knows it
	writes       []fzWrite
	frames       []*fzFrame
}

func (w *fzWALWriter) header(bigEndian bool, ckpt, salt1, salt2 uint32) {
	hdr := make([]byte, fzWALHdrSize)
	magic := uint32(fzWALMagic)
	if bigEndian {
		magic++
	}
	binary.BigEndian.PutUint32(hdr, magic)
	binary.BigEndian.PutUint32(hdr[4:], 3007000)
	binary.BigEndian.PutUint32(hdr[8:], uint32(w.ps))
	binary.BigEndian.PutUint32(hdr[12:], ckpt)
	binary.BigEndian.PutUint32(hdr[16:], salt1)
	binary.BigEndian.PutUint32(hdr[20:], salt2)
	s := fzWALSum(bigEndian, hdr[:24], [2]uint32{})
	binary.BigEndian.PutUint32(hdr[24:], s[0])
	binary.BigEndian.PutUint32(hdr[28:], s[1])
	w.bigEndian, w.salt1, w.salt2 = bigEndian, salt1, salt2
	w.off, w.start, w.sum = fzWALHdrSize, s, s
	w.writes = append(w.writes, fzWrite{0, hdr})
}

func (w *fzWALWriter) frameHeader(f *fzFrame, prev [2]uint32) []byte {
	fh := make([]byte, fzFrameHdr)
	binary.BigEndian.PutUint32(fh, f.pgno)
	binary.BigEndian.PutUint32(fh[4:], f.commit)
	binary.BigEndian.PutUint32(fh[8:], w.salt1)
	binary.BigEndian.PutUint32(fh[12:], w.salt2)
	f.sum = fzWALSum(w.bigEndian, f.data, fzWALSum(w.bigEndian, fh[:8], prev))
	binary.BigEndian.PutUint32(fh[16:], f.sum[0])
	binary.BigEndian.PutUint32(fh[20:], f.sum[1])
	return fh
}

// appendFrame appends a frame chained to the checksum the writer knows,
// which is stale after an overwrite until rewrite runs, as in SQLite.
func (w *fzWALWriter) appendFrame(pgno, commit uint32, data []byte) *fzFrame {
	f := &fzFrame{off: w.off, pgno: pgno, commit: commit, data: bytes.Clone(data)}
	fh := w.frameHeader(f, w.sum)
	w.sum = f.sum
	w.writes = append(w.writes, fzWrite{f.off, fh}, fzWrite{f.off + fzFrameHdr, f.data})
	w.frames = append(w.frames, f)
	w.off += int64(fzFrameHdr + w.ps)
	return f
}

// overwrite writes a page again into its frame of this transaction (a
// page spilled earlier and changed again), leaving the header as it was.
func (w *fzWALWriter) overwrite(f *fzFrame, data []byte) {
	f.data = bytes.Clone(data)
	w.writes = append(w.writes, fzWrite{f.off + fzFrameHdr, f.data})
}

// rewrite recomputes the checksums from frame k of this transaction on and
// writes the frame headers again (walRewriteChecksums).
func (w *fzWALWriter) rewrite(k int) {
	prev := w.start
	if k > 0 {
		prev = w.frames[k-1].sum
	}
	for _, f := range w.frames[k:] {
		fh := w.frameHeader(f, prev)
		prev = f.sum
		w.writes = append(w.writes, fzWrite{f.off, fh})
	}
	w.sum = prev
}

// --- transactions ---

// fzTxn is a write transaction planned on the primary.
type fzTxn struct {
	db         *DB
	name       string
	ps         int
	pos        ltx.Pos // before
	before     []byte
	after      []byte
	oldN, newN int
	written    []uint32 // pages written, ascending
}

func (t *fzTxn) page(img []byte, pgno uint32) []byte {
	return img[int(pgno-1)*t.ps : int(pgno)*t.ps]
}

func (t *fzTxn) String() string {
	return fmt.Sprintf("%q txid %s, %d->%d pages, writes %v", t.name, t.pos.TXID+1, t.oldN, t.newN, t.written)
}

// primaryDB returns the primary's database, created if needed.
func (h *fzHarness) primaryDB(name string) *DB {
	s := h.nodes[h.primary].store
	if db := s.DB(name); db != nil {
		return db
	}
	db, err := s.CreateDB(name)
	if err != nil {
		h.fatalf("create %q on node %d: %v", name, h.primary, err)
	}
	return db
}

// planTxn chooses the pages a transaction writes and their new content.
// mustChange rules out a transaction that leaves the database as it was.
func (h *fzHarness) planTxn(name string, mustChange bool) *fzTxn {
	db := h.primaryDB(name)
	t := &fzTxn{db: db, name: name, ps: int(h.ps[name]), pos: db.Pos()}
	t.before = h.image(name, t.pos)
	t.oldN = len(t.before) / t.ps

	b, mask, same := h.in.next(), h.in.next(), h.in.next()
	t.newN = t.oldN
	switch {
	case t.oldN == 0:
		t.newN = 1 + int(b%4)
	case b%8 == 4, b%8 == 5:
		t.newN = t.oldN + 1 + int(b>>3)%3
	case b%8 == 6:
		t.newN = max(1, t.oldN-1-int(b>>3)%2)
	}
	t.newN = min(t.newN, fzMaxPages)

	t.after = fzResize(bytes.Clone(t.before), t.newN*t.ps)
	for pgno := 1; pgno <= t.newN; pgno++ {
		// New pages, page 1 when the size changes (its header holds the
		// size) and a choice of the others.
		if pgno > t.oldN || (pgno == 1 && t.newN != t.oldN) || mask>>((pgno-1)%8)&1 == 1 {
			t.written = append(t.written, uint32(pgno))
		}
	}
	if len(t.written) == 0 {
		t.written = []uint32{uint32(1 + int(b>>5)%t.newN)}
	}
	changed := false
	for _, pgno := range t.written {
		if int(pgno) <= t.oldN && same>>((pgno-1)%8)&1 == 1 && !(pgno == 1 && t.newN != t.oldN) {
			continue // written again as it was
		}
		h.fillPage(name, t.page(t.after, pgno), pgno, t.newN)
		changed = true
	}
	if !changed && t.newN == t.oldN && mustChange {
		h.fillPage(name, t.page(t.after, t.written[0]), t.written[0], t.newN)
	}
	return t
}

// fillPage gives a page new content, unique to this write; page 1 gets a
// SQLite header.
func (h *fzHarness) fillPage(name string, p []byte, pgno uint32, pageN int) {
	h.counter++
	x := h.counter*0x9e3779b97f4a7c15 ^ uint64(pgno)*0xbf58476d1ce4e5b9 | 1
	for i := 0; i+8 <= len(p); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(p[i:], x)
	}
	if pgno != 1 {
		return
	}
	copy(p, "SQLite format 3\x00")
	ps := h.ps[name]
	binary.BigEndian.PutUint16(p[16:], uint16(ps)) // 65536 is stored as 1
	if ps == 65536 {
		binary.BigEndian.PutUint16(p[16:], 1)
	}
	mode := byte(1) // file format versions: 1 rollback journal, 2 WAL
	if name == fzW {
		mode = 2
	}
	p[18], p[19], p[20], p[21], p[22], p[23] = mode, mode, 0, 64, 32, 32
	clear(p[24:100])
	binary.BigEndian.PutUint32(p[24:], uint32(h.counter)) // change counter
	binary.BigEndian.PutUint32(p[28:], uint32(pageN))     // database size in pages
	binary.BigEndian.PutUint32(p[44:], 4)                 // schema format
	binary.BigEndian.PutUint32(p[56:], 1)                 // UTF-8
	binary.BigEndian.PutUint32(p[92:], uint32(h.counter)) // version-valid-for
	binary.BigEndian.PutUint32(p[96:], 3045001)
}

// expectPos fails unless db is at pos.
func (h *fzHarness) expectPos(db *DB, pos ltx.Pos, what string) {
	if got := db.Pos(); got != pos {
		h.fatalf("%s: %q is at %s, want %s", what, db.Name(), got, pos)
	}
}

// committed checks the position after a transaction that committed and
// records it in the model.
func (h *fzHarness) committed(t *fzTxn, what string) {
	if bytes.Equal(t.after, t.before) {
		h.expectPos(t.db, t.pos, what+" that changed nothing")
		return
	}
	want := ltx.Pos{TXID: t.pos.TXID + 1, Checksum: fzSum(t.after, t.ps)}
	h.expectPos(t.db, want, what)
	h.record(t.name, want, t.pos, t.after)
	h.acked[t.name] = want
}

// --- rollback journal mode ---

// journaled returns the pages a journal holds for t: the original content
// of every page it writes or cuts off.
func (t *fzTxn) journaled() []uint32 {
	var pgnos []uint32
	for _, pgno := range t.written {
		if int(pgno) <= t.oldN {
			pgnos = append(pgnos, pgno)
		}
	}
	for pgno := t.newN + 1; pgno <= t.oldN; pgno++ {
		pgnos = append(pgnos, uint32(pgno))
	}
	return pgnos
}

func fzJournalChecksum(nonce uint32, data []byte) uint32 {
	for i := len(data) - 200; i > 0; i -= 200 {
		nonce += uint32(data[i])
	}
	return nonce
}

// writeJournal writes t's rollback journal: a header sector, then a record
// (page number, original page, checksum) per page. nRec is the record
// count, or 0xffffffff (read to the end, as without full sync); zeroRecs
// writes 0 there, as SQLite does before the records are synced (no
// database page is written until it is updated). persist overwrites the
// journal in place, as PERSIST mode does.
func (h *fzHarness) writeJournal(t *fzTxn, o byte, zeroRecs bool) {
	sector := 512
	if o&0x40 != 0 {
		sector = 4096
	}
	pgnos := t.journaled()
	nonce := h.rng.Uint32()
	b := make([]byte, sector)
	copy(b, []byte{0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7})
	nRec := uint32(len(pgnos))
	if o&0x20 != 0 {
		nRec = 0xffffffff
	}
	if zeroRecs {
		nRec = 0
	}
	binary.BigEndian.PutUint32(b[8:], nRec)
	binary.BigEndian.PutUint32(b[12:], nonce)
	binary.BigEndian.PutUint32(b[16:], uint32(t.oldN))
	binary.BigEndian.PutUint32(b[20:], uint32(sector))
	binary.BigEndian.PutUint32(b[24:], uint32(t.ps))
	for _, pgno := range pgnos {
		b = binary.BigEndian.AppendUint32(b, pgno)
		b = append(b, t.page(t.before, pgno)...)
		b = binary.BigEndian.AppendUint32(b, fzJournalChecksum(nonce, t.page(t.before, pgno)))
	}
	path := t.db.JournalPath()
	if o&3 == 2 { // PERSIST: the old journal is overwritten, not replaced
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err == nil {
			_, err = f.WriteAt(b, 0)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			h.fatalf("write journal: %v", err)
		}
		return
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		h.fatalf("write journal: %v", err)
	}
}

// writePages writes the first k pages of t through DB.WriteAt.
func (h *fzHarness) writePages(t *fzTxn, k int) {
	for _, pgno := range t.written[:k] {
		if n, err := t.db.WriteAt(t.page(t.after, pgno), int64(pgno-1)*int64(t.ps)); err != nil || n != t.ps {
			h.fatalf("write page %d of %s: %d, %v", pgno, t, n, err)
		}
	}
}

// shrink truncates the file if t shrinks the database, as SQLite does
// before it ends the transaction.
func (h *fzHarness) shrink(t *fzTxn) {
	if t.newN < t.oldN {
		if err := t.db.Truncate(int64(t.newN) * int64(t.ps)); err != nil {
			h.fatalf("truncate %s: %v", t, err)
		}
	}
}

// rollBack plays the journal back through the mount, as SQLite's ROLLBACK
// does: the original pages, then the original size.
func (h *fzHarness) rollBack(t *fzTxn) {
	for _, pgno := range t.journaled() {
		if _, err := t.db.WriteAt(t.page(t.before, pgno), int64(pgno-1)*int64(t.ps)); err != nil {
			h.fatalf("roll back page %d of %s: %v", pgno, t, err)
		}
	}
	if t.newN > t.oldN {
		if err := t.db.Truncate(int64(t.oldN) * int64(t.ps)); err != nil {
			h.fatalf("roll back the size of %s: %v", t, err)
		}
	}
}

// fzFinalize ends the journal of db as each journal mode does, through
// the DB as the FUSE layer does: DELETE, TRUNCATE, PERSIST; the fourth
// commits and leaves the journal for the caller to delete.
func fzFinalize(db *DB, o byte) error {
	switch o & 3 {
	case 0:
		return db.RemoveJournal()
	case 1:
		return db.TruncateJournal(0)
	case 2:
		f, err := os.OpenFile(db.JournalPath(), os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, err = db.WriteJournalAt(f, make([]byte, 28), 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	}
	return db.commitJournal(nil)
}

var fzJournalModes = [4]string{"DELETE", "TRUNCATE", "PERSIST", "commitJournal(nil)"}

func (h *fzHarness) opJournalTxn(name string) {
	t := h.planTxn(name, false)
	o := h.in.next()
	rollback := o&0x1c == 0x1c
	h.tracef("journal txn on node %d: %s, %s, rollback %v", h.primary, t, fzJournalModes[o&3], rollback)
	h.writeJournal(t, o, false)
	h.writePages(t, len(t.written))
	h.shrink(t)
	if rollback {
		h.rollBack(t)
	}
	if err := fzFinalize(t.db, o); err != nil {
		h.fatalf("commit %s: %v", t, err)
	}
	if o&3 == 3 {
		if err := os.Remove(t.db.JournalPath()); err != nil {
			h.fatalf("delete journal: %v", err)
		}
	}
	if rollback {
		h.expectPos(t.db, t.pos, "rolled back "+t.String())
		return
	}
	h.committed(t, "commit "+t.String())
}

// --- WAL mode ---

// fzWALPlan is the writes of one WAL transaction.
type fzWALPlan struct {
	writes   []fzWrite
	commit   int  // index of the first write of the commit frame; len(writes) without one
	rollback bool // the transaction spills frames and rolls back
	desc     string
}

// planWAL plans the WAL writes of t the way SQLite makes them: append
// after the last commit frame (or start the WAL over after a checkpoint),
// frames in page order, the last one the commit frame. Variants: a cache
// spill that writes some pages before the commit and writes changed ones
// again in place (then rewrites the checksums of every frame from the first
// one overwritten), padding frames after the commit, writes split at 4 KiB
// boundaries as the kernel may send them, a spill that rolls back.
func (h *fzHarness) planWAL(n *fzNode, t *fzTxn, o byte, spillMask byte) fzWALPlan {
	info, err := fzReadWAL(t.db.WALPath(), t.ps)
	if err != nil {
		h.fatalf("read wal: %v", err)
	}
	w := &fzWALWriter{ps: t.ps}
	var desc []string
	switch {
	case !info.valid:
		w.header(o&1 == 1, 0, h.rng.Uint32(), h.rng.Uint32())
		n.walBackfill = 0
		desc = append(desc, "new wal")
	case info.end > fzWALHdrSize && n.walBackfill == info.end:
		// Everything checkpointed: the WAL restarts (walRestartHdr).
		w.header(o&1 == 1, info.ckpt+1, info.salt1+1, h.rng.Uint32())
		n.walBackfill = 0
		desc = append(desc, "wal restarted")
	case info.end == fzWALHdrSize:
		// No frame yet: SQLite writes the header with the first frame,
		// new salts only if no checkpoint ever ran.
		salt1, salt2 := info.salt1, info.salt2
		if info.ckpt == 0 {
			salt1, salt2 = h.rng.Uint32(), h.rng.Uint32()
		}
		w.header(info.bigEndian, info.ckpt, salt1, salt2)
		desc = append(desc, "header rewritten")
	default:
		w.bigEndian, w.salt1, w.salt2 = info.bigEndian, info.salt1, info.salt2
		w.off, w.start, w.sum = info.end, info.sum, info.sum
	}

	plan := fzWALPlan{}
	var commitFrame *fzFrame
	if spill := o&6 == 6 && len(t.written) >= 2; spill {
		// Pages spilled before the commit; some change again after.
		spilled := map[uint32]*fzFrame{}
		remod := map[uint32]bool{}
		for i, pgno := range t.written {
			if i == 0 || spillMask>>(i%8)&1 == 1 {
				data := t.page(t.after, pgno)
				if spillMask>>((i+3)%8)&1 == 1 {
					remod[pgno] = true
					data = make([]byte, t.ps)
					h.fillPage(t.name, data, pgno, t.newN)
				}
				spilled[pgno] = w.appendFrame(pgno, 0, data)
			}
		}
		if t.newN < t.oldN && spillMask&0x80 != 0 {
			// A page the transaction later cuts off (a vacuum) was
			// spilled too: its frame lies beyond the commit size.
			data := make([]byte, t.ps)
			h.fillPage(t.name, data, uint32(t.newN+1), t.newN)
			w.appendFrame(uint32(t.newN+1), 0, data)
			desc = append(desc, "a page beyond the new size spilled")
		}
		desc = append(desc, fmt.Sprintf("spill %d pages, %d changed again", len(spilled), len(remod)))
		if o&0x80 != 0 {
			plan.rollback = true
			desc = append(desc, "rollback")
		} else {
			var again []uint32
			for _, pgno := range t.written {
				if _, ok := spilled[pgno]; !ok || remod[pgno] {
					again = append(again, pgno)
				}
			}
			if len(again) == 0 {
				again = []uint32{1} // a commit needs a frame: SQLite writes page 1
			}
			first := -1
			for k, pgno := range again {
				if f, ok := spilled[pgno]; ok && k < len(again)-1 {
					w.overwrite(f, t.page(t.after, pgno))
					if i := slices.Index(w.frames, f); first < 0 || i < first {
						first = i
					}
					continue
				}
				commit := uint32(0)
				if k == len(again)-1 {
					commit = uint32(t.newN)
				}
				commitFrame = w.appendFrame(pgno, commit, t.page(t.after, pgno))
			}
			if first >= 0 {
				w.rewrite(first)
			}
		}
	} else {
		for k, pgno := range t.written {
			commit := uint32(0)
			if k == len(t.written)-1 {
				commit = uint32(t.newN)
			}
			commitFrame = w.appendFrame(pgno, commit, t.page(t.after, pgno))
		}
	}
	if commitFrame != nil && o&0x30 == 0x30 { // padding to a sector boundary repeats the commit frame
		last := w.frames[len(w.frames)-1]
		for range 1 + int(o>>6)%2 {
			w.appendFrame(last.pgno, last.commit, last.data)
		}
		desc = append(desc, "padded")
	}

	plan.writes = w.writes
	if o&8 != 0 {
		plan.writes = nil
		for _, wr := range w.writes {
			for off := int64(0); off < int64(len(wr.data)); {
				end := min(int64(len(wr.data)), ((wr.off+off)/4096+1)*4096-wr.off)
				plan.writes = append(plan.writes, fzWrite{wr.off + off, wr.data[off:end]})
				off = end
			}
		}
		desc = append(desc, "split writes")
	}
	plan.commit = len(plan.writes)
	if commitFrame != nil {
		frameEnd := commitFrame.off + int64(fzFrameHdr+t.ps)
		for i, wr := range plan.writes {
			if wr.off < frameEnd && wr.off+int64(len(wr.data)) > commitFrame.off {
				plan.commit = i
				break
			}
		}
	}
	plan.desc = strings.Join(desc, ", ")
	return plan
}

// writeWAL writes to the WAL file and, if report, tells the database after
// each write as the FUSE layer does. It returns the first error
// WriteWALAt returns: SQLite stops there.
func (h *fzHarness) writeWAL(db *DB, writes []fzWrite, report bool) error {
	f, err := os.OpenFile(db.WALPath(), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		h.fatalf("open wal: %v", err)
	}
	defer f.Close()
	for _, wr := range writes {
		if report {
			if _, err := db.WriteWALAt(f, wr.data, wr.off); err != nil {
				return err
			}
			continue
		}
		if _, err := f.WriteAt(wr.data, wr.off); err != nil {
			h.fatalf("write wal: %v", err)
		}
	}
	return nil
}

// walReady returns whether the WAL database has a first transaction:
// SQLite switches a database to WAL mode with a rollback-journal
// transaction that writes page 1.
func (h *fzHarness) walReady() bool {
	db := h.nodes[h.primary].store.DB(fzW)
	return db != nil && db.Pos().TXID > 0
}

func (h *fzHarness) opWALTxn() {
	if !h.walReady() {
		h.opJournalTxn(fzW)
		return
	}
	n := h.nodes[h.primary]
	t := h.planTxn(fzW, false)
	plan := h.planWAL(n, t, h.in.next(), h.in.next())
	h.tracef("wal txn on node %d: %s; %s", h.primary, t, plan.desc)
	if err := h.writeWAL(t.db, plan.writes, true); err != nil {
		h.fatalf("wal txn %s: %v", t, err)
	}
	if plan.rollback {
		h.expectPos(t.db, t.pos, "rolled back "+t.String())
		return
	}
	h.committed(t, "wal commit "+t.String())
}

// checkpoint copies the WAL's committed pages into the database file
// through the mount, as SQLite does, then ends the WAL: kind 0 leaves it
// to start over at the next transaction, 1 truncates it
// (wal_checkpoint(TRUNCATE)), 2 deletes it (the last connection closed), 3
// copies only the transactions up to an earlier one (readers held the
// rest back).
func (h *fzHarness) checkpoint(n *fzNode, db *DB, kind byte) string {
	ps := int(h.ps[fzW])
	info, err := fzReadWAL(db.WALPath(), ps)
	if err != nil {
		h.fatalf("read wal: %v", err)
	}
	// Frames already backfilled are not copied again.
	first := 0
	for first < len(info.txns) && info.txnEnd(first) <= n.walBackfill {
		first++
	}
	if first == len(info.txns) {
		return "nothing to checkpoint"
	}
	k := len(info.txns)
	if kind == 3 {
		if k-first < 2 {
			return "partial checkpoint of nothing"
		}
		k = first + 1 + int(h.in.next())%(k-first-1)
	}
	finalN := info.txns[len(info.txns)-1].commit
	latest := map[uint32][]byte{}
	for _, txn := range info.txns[first:k] {
		for _, fr := range txn.frames {
			latest[fr.pgno] = fr.data
		}
	}
	for _, pgno := range slices.Sorted(maps.Keys(latest)) {
		if pgno > finalN {
			continue
		}
		if _, err := db.WriteAt(latest[pgno], int64(pgno-1)*int64(ps)); err != nil {
			h.fatalf("checkpoint page %d: %v", pgno, err)
		}
	}
	n.walBackfill = info.txnEnd(k - 1)
	if kind == 3 {
		return fmt.Sprintf("partial checkpoint of transactions %d-%d of %d", first+1, k, len(info.txns))
	}
	if size, err := db.Size(); err != nil {
		h.fatalf("size: %v", err)
	} else if size > int64(finalN)*int64(ps) {
		if err := db.Truncate(int64(finalN) * int64(ps)); err != nil {
			h.fatalf("checkpoint truncate: %v", err)
		}
	}
	switch kind {
	case 0:
		return fmt.Sprintf("checkpoint of transactions %d-%d, wal restarts at the next write", first+1, k)
	case 1:
		if err := db.TruncateWAL(0); err != nil {
			h.fatalf("truncate wal: %v", err)
		}
		n.walBackfill = 0
		return fmt.Sprintf("checkpoint of transactions %d-%d, wal truncated", first+1, k)
	default:
		if err := db.RemoveWAL(); err != nil {
			h.fatalf("remove wal: %v", err)
		}
		n.walBackfill = 0
		return fmt.Sprintf("checkpoint of transactions %d-%d, wal deleted", first+1, k)
	}
}

func (h *fzHarness) opCheckpoint() {
	kind := h.in.next() % 4
	n := h.nodes[h.primary]
	db := n.store.DB(fzW)
	if db == nil {
		h.tracef("checkpoint: no wal database")
		return
	}
	pos := db.Pos()
	h.tracef("checkpoint on node %d: %s", h.primary, h.checkpoint(n, db, kind))
	h.expectPos(db, pos, "checkpoint")
}

// --- replication ---

func (h *fzHarness) opReplicate() {
	o := h.in.next()
	if o&1 == 0 {
		h.tracef("replicate to every replica")
		for i := range h.nodes {
			if i != h.primary {
				h.replicate(i, -1)
			}
		}
		return
	}
	r, limit := h.pickReplica(o>>1), 1+int(o>>2)%3
	h.badFiles = o&0x80 != 0
	h.tracef("replicate up to %d files to node %d", limit, r)
	h.replicate(r, limit)
	h.badFiles = false
}

// replicate brings replica r up to the primary as the stream does (see
// Server.sendDB and Client.apply): the LTX files after its position if the
// primary's log still holds them and the position is on the primary's
// history, a snapshot otherwise, with the replica's state moved aside first
// when its history differs; a database the primary does not have is moved
// aside (or deleted if it has no transaction). At most limit files are
// applied (-1: no limit).
func (h *fzHarness) replicate(r, limit int) {
	p, rs := h.nodes[h.primary].store, h.nodes[r].store
	for _, rdb := range rs.DBs() {
		name, pos := rdb.Name(), rdb.Pos()
		if p.DB(name) != nil {
			continue
		}
		if pos.TXID == 0 {
			if err := rs.DeleteDB(name); err != nil {
				h.fatalf("delete %q on node %d: %v", name, r, err)
			}
			continue
		}
		dir, err := rs.MoveAside(name, "the primary does not have it")
		if err != nil {
			h.fatalf("move %q aside on node %d: %v", name, r, err)
		}
		h.tracef("  node %d: %q at %s moved aside (the primary does not have it)", r, name, pos)
		h.checkAside(dir, name, pos)
	}
	for _, pdb := range p.DBs() {
		name, cur := pdb.Name(), pdb.Pos()
		rdb := rs.DB(name)
		var from ltx.Pos
		if rdb != nil {
			from = rdb.Pos()
		}
		if from == cur || cur.TXID == 0 {
			continue
		}
		if limit == 0 {
			return
		}
		diverged := from.TXID > 0 && !h.isAncestor(name, from, cur)

		// What to send is the stream's own decision.
		plan, err := planSend(pdb, from)
		if err != nil {
			h.fatalf("plan what to send node %d for %q at %s: %v", r, name, from, err)
		}
		snapshot, divergent, cannotTell, send := plan.snapshot, plan.divergent, plan.unknown, plan.files

		if !snapshot && h.badFiles {
			h.badFiles = false
			h.applyBad(r, rdb, pdb, send)
		}
		if !snapshot {
			if limit >= 0 && len(send) > limit {
				send = send[:limit]
			}
			limit -= len(send)
			// The stream applies the files waiting together (ApplyAll),
			// or one at a time.
			batch := len(send) > 1 && h.rng.IntN(2) == 0
			var paths []string
			for _, f := range send {
				tmp := h.copyToTemp(rs, pdb.Log().Path(f.MinTXID, f.MaxTXID))
				if batch {
					paths = append(paths, tmp)
				} else if err := rdb.Apply(h.ctx, tmp, nil); err != nil {
					h.fatalf("node %d: apply ltx %s-%s of %q at %s: %v", r, f.MinTXID, f.MaxTXID, name, rdb.Pos(), err)
				}
			}
			if batch {
				if err := rdb.ApplyAll(h.ctx, paths, nil); err != nil {
					h.fatalf("node %d: apply %d ltx files of %q at %s together: %v", r, len(paths), name, rdb.Pos(), err)
				}
			}
			h.tracef("  node %d: %q %s -> %s, %d ltx files (together: %v)", r, name, from, rdb.Pos(), len(send), batch)
			last := send[len(send)-1]
			sum, err := ltx.ReadTrailer(pdb.Log().Path(last.MinTXID, last.MaxTXID))
			if err != nil {
				h.fatalf("read trailer: %v", err)
			}
			h.expectPos(rdb, ltx.Pos{TXID: last.MaxTXID, Checksum: sum}, fmt.Sprintf("replication to node %d", r))
			if limit == 0 {
				return
			}
			continue
		}

		limit--
		movedAside := false
		if rdb != nil && divergent {
			dir, err := rs.MoveAside(name, "its history differs from the primary's")
			if err != nil {
				h.fatalf("move %q aside on node %d: %v", name, r, err)
			}
			h.checkAside(dir, name, from)
			rdb, movedAside = nil, true
		}
		if rdb == nil {
			var err error
			if rdb, err = rs.CreateDB(name); err != nil {
				h.fatalf("create %q on node %d: %v", name, r, err)
			}
		}
		tmp := h.snapshotToTemp(rs, pdb)
		if err := rdb.Apply(h.ctx, tmp, nil); err != nil {
			h.fatalf("node %d: apply snapshot of %q: %v", r, name, err)
		}
		h.tracef("  node %d: %q %s -> %s, snapshot (divergent %v)", r, name, from, rdb.Pos(), divergent)
		if cannotTell && !movedAside {
			h.fatalf("node %d: %q at %s was replaced by a snapshot the primary could not check it against, without keeping its state aside", r, name, from)
		}
		if diverged && !movedAside {
			h.fatalf("node %d: %q was at %s, not on the primary's history (at %s), and a snapshot replaced it without keeping its state aside",
				r, name, from, cur)
		}
		h.expectPos(rdb, cur, fmt.Sprintf("snapshot on node %d", r))
	}
}

// applyBad offers replica r a damaged copy of the next LTX file, or the
// file after it: Apply must refuse either and change nothing.
func (h *fzHarness) applyBad(r int, rdb, pdb *DB, send []ltx.FileInfo) {
	rs := h.nodes[r].store
	before := rdb.Pos()
	f := send[0]
	tmp := h.copyToTemp(rs, pdb.Log().Path(f.MinTXID, f.MaxTXID))
	b, err := os.ReadFile(tmp)
	if err != nil {
		h.fatalf("read %s: %v", tmp, err)
	}
	sel := h.in.next()
	if len(send) > 1 && sel&1 == 0 {
		g := send[1]
		os.Remove(tmp)
		tmp = h.copyToTemp(rs, pdb.Log().Path(g.MinTXID, g.MaxTXID))
		h.tracef("  node %d: offered ltx %s before %s", r, g.MaxTXID, f.MaxTXID)
		err = rdb.Apply(h.ctx, tmp, nil)
		var pm *PosMismatchError
		if !errors.As(err, &pm) {
			h.fatalf("node %d: applying ltx %s at %s returned %v, want a *PosMismatchError", r, g.MaxTXID, before, err)
		}
	} else {
		i := int(h.in.next())<<8 | int(h.in.next())
		b[i%len(b)] ^= 1 << (h.in.next() % 8)
		if err := os.WriteFile(tmp, b, 0o644); err != nil {
			h.fatalf("write %s: %v", tmp, err)
		}
		h.tracef("  node %d: offered ltx %s with bit flipped at byte %d of %d", r, f.MaxTXID, i%len(b), len(b))
		paths := []string{tmp}
		if len(send) > 1 && sel&2 != 0 {
			// A batch whose second file is the damaged one: the first
			// must not be applied either.
			good := h.copyToTemp(rs, pdb.Log().Path(f.MinTXID, f.MaxTXID))
			g := send[1]
			os.Remove(tmp)
			tmp = h.copyToTemp(rs, pdb.Log().Path(g.MinTXID, g.MaxTXID))
			b, _ = os.ReadFile(tmp)
			b[i%len(b)] ^= 1 << (sel >> 5)
			if err := os.WriteFile(tmp, b, 0o644); err != nil {
				h.fatalf("write %s: %v", tmp, err)
			}
			paths = []string{good, tmp}
			h.tracef("  node %d: ... in a batch after a good ltx %s, bit flipped in ltx %s instead", r, f.MaxTXID, g.MaxTXID)
		}
		if err = rdb.ApplyAll(h.ctx, paths, nil); !errors.Is(err, ErrCorruptLTX) {
			h.fatalf("node %d: applying a damaged ltx returned %v, want an error wrapping ErrCorruptLTX", r, err)
		}
		for _, p := range paths {
			os.Remove(p)
		}
	}
	os.Remove(tmp) // the stream discards what it could not apply
	h.expectPos(rdb, before, "refused apply")
}

// copyToTemp copies a file into the store's temporary directory, as the
// stream spools what it receives (Apply moves the file into the log).
func (h *fzHarness) copyToTemp(s *Store, src string) string {
	b, err := os.ReadFile(src)
	if err != nil {
		h.fatalf("read %s: %v", src, err)
	}
	f, err := os.CreateTemp(s.TempDir(), "recv-*.ltx")
	if err != nil {
		h.fatalf("create temp: %v", err)
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		h.fatalf("write %s: %v", f.Name(), err)
	}
	return f.Name()
}

func (h *fzHarness) snapshotToTemp(s *Store, pdb *DB) string {
	f, err := os.CreateTemp(s.TempDir(), "snapshot-*.ltx")
	if err != nil {
		h.fatalf("create temp: %v", err)
	}
	ctx, cancel := context.WithTimeout(h.ctx, 10*time.Second)
	defer cancel()
	_, _, err = pdb.WriteSnapshot(ctx, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		h.fatalf("snapshot %q on the primary (node %d): %v", pdb.Name(), h.primary, err)
	}
	return f.Name()
}

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

// --- restarts and crashes ---

func (h *fzHarness) opRestart() {
	o := h.in.next()
	i := int(o) % fzNodes
	before := h.positions(i)
	what := ""
	if db := h.nodes[i].store.DB(fzW); i == h.primary && o&4 != 0 && db != nil {
		// The connections close first; the last one checkpoints and
		// deletes the WAL.
		what = "; " + h.checkpoint(h.nodes[i], db, 2)
	}
	h.tracef("restart node %d%s", i, what)
	h.reopen(i)
	if after := h.positions(i); !fzSamePositions(before, after) {
		h.fatalf("restart of node %d moved positions from %v to %v", i, before, after)
	}
}

func fzSamePositions(a, b map[string]ltx.Pos) bool {
	if len(a) != len(b) {
		return false
	}
	for name, pos := range a {
		if b[name] != pos {
			return false
		}
	}
	return true
}

func (h *fzHarness) opCrash() {
	i, v := int(h.in.next())%fzNodes, h.in.next()
	if i == h.primary {
		h.crashPrimary(v)
	} else {
		h.crashReplica(i, v)
	}
}

// tornLTX writes a torn LTX file for t where its commit would have put it:
// the node stopped while writing it.
func (h *fzHarness) tornLTX(t *fzTxn, cut byte) string {
	hdr := ltx.Header{PageSize: uint32(t.ps), Commit: uint32(t.newN), MinTXID: t.pos.TXID + 1, MaxTXID: t.pos.TXID + 1,
		Timestamp: time.Now().UnixMilli(), PreApplyChecksum: t.pos.Checksum}
	var pages []ltx.Page
	for pgno := uint32(1); pgno <= uint32(t.newN); pgno++ {
		if hdr.IsSnapshot() || slices.Contains(t.written, pgno) {
			pages = append(pages, ltx.Page{Pgno: pgno, Data: t.page(t.after, pgno)})
		}
	}
	var buf bytes.Buffer
	if err := ltx.Encode(&buf, hdr, pages, fzSum(t.after, t.ps)); err != nil {
		h.fatalf("encode ltx: %v", err)
	}
	n := int(cut) * buf.Len() / 256 // always short of the whole file
	path := t.db.Log().Path(hdr.MinTXID, hdr.MaxTXID)
	if err := os.WriteFile(path, buf.Bytes()[:n], 0o644); err != nil {
		h.fatalf("write torn ltx: %v", err)
	}
	return fmt.Sprintf("torn ltx (%d of %d bytes)", n, buf.Len())
}

// crashPrimary leaves the primary in a state a crash can leave it in, then
// restarts it: recovery must bring every database back to its log's
// position.
func (h *fzHarness) crashPrimary(v byte) {
	i := h.primary
	before := h.positions(i)
	kind := int(v % 6)
	if kind >= 3 && !h.walReady() {
		kind = int(v>>3) % 3 // the WAL database has no transaction yet
	}
	var what string
	var expect func()
	switch kind {
	case 0, 2: // a rollback-journal transaction under way (and its torn ltx file)
		name := fzJ
		if v&0x80 != 0 && !h.walReady() {
			name = fzW
		}
		t := h.planTxn(name, true)
		before[name] = t.pos // planTxn may have created it
		k := int(h.in.next()) % (len(t.written) + 1)
		h.writeJournal(t, h.in.next(), k == 0 && v&0x40 != 0)
		h.writePages(t, k)
		if k == len(t.written) {
			h.shrink(t)
		}
		what = fmt.Sprintf("%s under way, %d pages written", t, k)
		if kind == 2 {
			what += ", " + h.tornLTX(t, h.in.next())
		}
		expect = func() { h.expectNoJournal(i, name) }
	case 1: // committed, the journal not yet deleted
		t := h.planTxn(fzJ, false)
		h.writeJournal(t, 0, false)
		h.writePages(t, len(t.written))
		h.shrink(t)
		if err := t.db.commitJournal(nil); err != nil {
			h.fatalf("commit %s: %v", t, err)
		}
		h.committed(t, "commit "+t.String())
		before[fzJ] = t.db.Pos()
		what = fmt.Sprintf("%s committed, its journal left", t)
		expect = func() { h.expectNoJournal(i, fzJ) }
	case 3, 4: // WAL frames written: some of a transaction, or all without the commit reported
		t := h.planTxn(fzW, true)
		plan := h.planWAL(h.nodes[i], t, h.in.next()&^0x80, h.in.next())
		cut := plan.commit
		if v&0x40 != 0 {
			cut = int(h.in.next()) % (plan.commit + 1)
			if err := h.writeWAL(t.db, plan.writes[:cut], true); err != nil {
				h.fatalf("wal writes of %s: %v", t, err)
			}
			what = fmt.Sprintf("%s: %d of %d wal writes (%s)", t, cut, len(plan.writes), plan.desc)
		} else {
			if err := h.writeWAL(t.db, plan.writes[:cut], true); err != nil {
				h.fatalf("wal writes of %s: %v", t, err)
			}
			if err := h.writeWAL(t.db, plan.writes[cut:], false); err != nil {
				h.fatalf("wal writes of %s: %v", t, err)
			}
			what = fmt.Sprintf("%s: every wal write (%s), the commit never reported", t, plan.desc)
		}
		if kind == 4 {
			what += ", " + h.tornLTX(t, h.in.next())
		}
	case 5: // a checkpoint under way, or done with the WAL started over
		n := h.nodes[i]
		db := n.store.DB(fzW)
		if v&0x40 != 0 {
			what = h.checkpoint(n, db, 3)
		} else {
			what = h.checkpoint(n, db, 0)
			w := &fzWALWriter{ps: int(h.ps[fzW])}
			if info, _ := fzReadWAL(db.WALPath(), w.ps); info.end > fzWALHdrSize && n.walBackfill == info.end {
				w.header(v&0x80 != 0, info.ckpt+1, info.salt1+1, h.rng.Uint32())
				if err := h.writeWAL(db, w.writes, true); err != nil {
					h.fatalf("wal header: %v", err)
				}
				what += ", new wal header written"
			}
		}
	}
	if v&0x20 != 0 {
		// It comes back as a replica: another node took over meanwhile.
		t := h.pickReplica(h.in.next())
		h.tracef("crash the primary (node %d): %s; it comes back as a replica, node %d took over", i, what, t)
		h.primary = t
		h.reopen(i)
		h.takeOver(i, t, true)
		h.failovers++
		h.acked = h.positions(t)
	} else {
		h.tracef("crash the primary (node %d): %s", i, what)
		h.reopen(i)
	}
	if after := h.positions(i); !fzSamePositions(before, after) {
		h.fatalf("recovery of node %d after a crash: positions %v, want %v", i, after, before)
	}
	if expect != nil {
		expect()
	}
}

func (h *fzHarness) expectNoJournal(i int, name string) {
	if db := h.nodes[i].store.DB(name); db != nil {
		b, err := os.ReadFile(db.JournalPath())
		if err == nil && len(b) >= 8 && isJournalMagic(b[:8]) {
			h.fatalf("node %d %q: a hot journal is still there after recovery", i, name)
		}
	}
}

// crashReplica leaves replica i in a state a crash can leave it in, then
// restarts it. Kinds: an LTX file (or snapshot) adopted into the log but
// not applied to the database; the same, with some of its pages applied;
// a file half received.
func (h *fzHarness) crashReplica(i int, v byte) {
	n := h.nodes[i]
	rs, p := n.store, h.nodes[h.primary].store
	before := h.positions(i)
	var what string
	want := before
	mayMoveAside := ""
	closed := false

	// A database this replica lags behind on, on the primary's history.
	var rdb, pdb *DB
	for _, name := range []string{fzJ, fzW} {
		if d, pd := rs.DB(name), p.DB(name); d != nil && pd != nil && d.Pos() != pd.Pos() &&
			d.Pos().TXID > 0 && h.isAncestor(name, d.Pos(), pd.Pos()) {
			rdb, pdb = d, pd
			if v&0x80 != 0 {
				break
			}
		}
	}
	kind := int(v % 3)
	if rdb == nil && kind < 2 {
		kind = 2
	}
	if kind == 1 {
		// An apply first moves the WAL's frames into the database file;
		// a crash during its page writes leaves no WAL frames.
		if info, err := fzReadWAL(rdb.WALPath(), int(h.ps[rdb.Name()])); err != nil || len(info.txns) > 0 {
			kind = 0
		}
	}
	switch kind {
	case 0, 1:
		name, from, cur := rdb.Name(), rdb.Pos(), pdb.Pos()
		var next *ltx.FileInfo
		for _, f := range pdb.Log().Files() {
			if f.MinTXID == from.TXID+1 {
				next = &f
			}
		}
		var src string
		var post ltx.Pos
		if next == nil || (kind == 0 && v&0x40 != 0) {
			if kind == 1 {
				what = "nothing half applied (no ltx file to apply)"
				break
			}
			src, post = h.snapshotToTemp(rs, pdb), cur
			what = fmt.Sprintf("snapshot of %q to %s adopted, not applied", name, cur)
		} else {
			src = h.copyToTemp(rs, pdb.Log().Path(next.MinTXID, next.MaxTXID))
			sum, err := ltx.ReadTrailer(src)
			if err != nil {
				h.fatalf("read trailer: %v", err)
			}
			post = ltx.Pos{TXID: next.MaxTXID, Checksum: sum}
			what = fmt.Sprintf("ltx %s of %q adopted, not applied", next.MaxTXID, name)
		}
		hdr, err := ltx.VerifyFile(src)
		if err != nil {
			h.fatalf("verify %s: %v", src, err)
		}
		dst := rdb.Log().Path(hdr.Header.MinTXID, hdr.Header.MaxTXID)
		dbPath := rdb.Path()
		if err := rs.Close(); err != nil {
			h.fatalf("close node %d: %v", i, err)
		}
		closed = true
		if err := os.Rename(src, dst); err != nil {
			h.fatalf("adopt: %v", err)
		}
		if kind == 1 {
			// The pages are written in order; the crash came after k of
			// them, before the truncation to the commit size.
			d, err := ltx.ReadFile(dst)
			if err != nil {
				h.fatalf("read %s: %v", dst, err)
			}
			k := 0
			if len(d.Pages) > 0 {
				k = 1 + int(h.in.next())%len(d.Pages)
			}
			f, err := os.OpenFile(dbPath, os.O_RDWR, 0)
			if err != nil {
				h.fatalf("open %s: %v", dbPath, err)
			}
			for _, pg := range d.Pages[:k] {
				if _, err := f.WriteAt(pg.Data, int64(pg.Pgno-1)*int64(d.Header.PageSize)); err != nil {
					h.fatalf("write %s: %v", dbPath, err)
				}
			}
			f.Close()
			what += fmt.Sprintf(", %d of %d pages applied", k, len(d.Pages))
			mayMoveAside = name
		}
		want = maps.Clone(before)
		want[name] = post
	case 2:
		junk := filepath.Join(rs.TempDir(), "recv-0.ltx")
		if err := os.WriteFile(junk, []byte("half a file"), 0o644); err != nil {
			h.fatalf("write %s: %v", junk, err)
		}
		what = "a file half received"
	}
	h.tracef("crash node %d: %s", i, what)
	if !closed {
		if err := rs.Close(); err != nil {
			h.fatalf("close node %d: %v", i, err)
		}
	}
	h.open(i)
	after := h.positions(i)
	if mayMoveAside != "" {
		if _, ok := after[mayMoveAside]; !ok {
			if len(n.store.MovedAside) == 0 {
				h.fatalf("node %d: %q is gone after recovery, and not moved aside", i, mayMoveAside)
			}
			h.tracef("  node %d: %q moved aside at open: %s", i, mayMoveAside, n.store.MovedAside)
			want = maps.Clone(want)
			delete(want, mayMoveAside)
		}
	}
	if !fzSamePositions(want, after) {
		h.fatalf("recovery of node %d after a crash: positions %v, want %v", i, after, want)
	}
	if ents, err := os.ReadDir(n.store.TempDir()); err != nil || len(ents) > 0 {
		h.fatalf("node %d: temporary directory not emptied at open: %v %v", i, ents, err)
	}
}

func (h *fzHarness) opRetain() {
	i := int(h.in.next()) % fzNodes
	h.tracef("retention on node %d: keep only the newest ltx file", i)
	for _, db := range h.nodes[i].store.DBs() {
		if _, err := db.Log().Retain(time.Now().Add(time.Hour)); err != nil {
			h.fatalf("retain %q on node %d: %v", db.Name(), i, err)
		}
	}
}
