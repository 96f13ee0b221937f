package replica

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

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
		plan, err := planSend(pdb, from, false)
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
