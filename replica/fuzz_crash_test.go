package replica

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

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
