package replica

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
)

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
