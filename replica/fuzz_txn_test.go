package replica

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"

	"github.com/litefs-project/litefs/ltx"
)

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
