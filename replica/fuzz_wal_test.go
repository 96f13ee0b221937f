package replica

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
)

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
