package ltx

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	sltx "github.com/superfly/ltx"

	"github.com/litefs-project/litefs/checksum"
)

// FileInfo describes one LTX file in a Log.
type FileInfo struct {
	MinTXID, MaxTXID TXID
	Size             int64
	ModTime          time.Time
}

// Log is the ordered set of LTX files of one database in one directory.
// Files hold contiguous TXIDs; retention may remove the oldest ones, but the
// newest file is always kept because it defines the position.
type Log struct {
	dir string

	mu    sync.Mutex
	files []FileInfo // ascending TXIDs
	pos   Pos        // post-apply position of the last file
	last  Header     // header of the last file
	// stamps caches the files' stamps by MaxTXID (see Stamp).
	stamps map[TXID]Stamp

	// unsynced holds the newest files, written by AppendDeferred and not
	// yet made durable, oldest first, each still open for its sync.
	unsynced []*os.File
	// torn holds the files OpenLog left out: the newest one that failed
	// verification and those after it.
	torn []string
	// spares, if set, keeps files ready for appends (see UseSpares).
	spares *spares
	// unverified is the newest file when OpenLogFast checked only its
	// header and trailer; empty once it is read in full.
	unverified string
}

// MaxUnsynced bounds the files AppendDeferred leaves unsynced: the append
// that would exceed it makes them all durable first. It also bounds how
// many files OpenLog verifies after a crash of the machine.
const MaxUnsynced = 512

// FastVerifyMin is the size from which OpenLogFast checks the newest file
// by its header and trailer only.
const FastVerifyMin = 4 << 20

// OpenLog opens the log in dir, creating dir if needed. It removes
// temporary files, checks that file names are contiguous, and verifies the
// newest files end to end: the newest MaxUnsynced, which a crash of the
// machine may have lost or torn if they were written by AppendDeferred.
// Nothing else is modified.
//
// If one of them fails verification, OpenLog returns a *CorruptError
// naming it together with a Log that ends before it, so the caller can tell
// a torn write (a crash before the file was durable: see DiscardTorn) from
// damage to a committed file. Any other failure returns a nil Log.
func OpenLog(dir string) (*Log, error) {
	return openLog(dir, false)
}

// OpenLogFast is OpenLog, except that a newest file of FastVerifyMin bytes
// or more (a snapshot a replica caught up from, a large transaction) is
// checked by its header and trailer only, which give the position without
// reading the file: a node restarting with a large database then reads
// the database once to verify its position, not also the file it came
// from. Unverified reports it; the caller must confirm the position some
// other way (the database's own checksum equal to it), or VerifyNewest.
func OpenLogFast(dir string) (*Log, error) {
	return openLog(dir, true)
}

func openLog(dir string, fast bool) (*Log, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	l := &Log{dir: dir}
	for _, ent := range ents {
		name := ent.Name()
		if strings.HasSuffix(name, tmpSuffix) {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return nil, err
			}
			continue
		}
		min, max, err := ParseFilename(name)
		if err != nil {
			return nil, fmt.Errorf("unexpected file %s in ltx directory: move it out of %s", name, dir)
		}
		fi, err := ent.Info()
		if err != nil {
			return nil, err
		}
		l.files = append(l.files, FileInfo{MinTXID: min, MaxTXID: max, Size: fi.Size(), ModTime: fi.ModTime()})
	}
	sort.Slice(l.files, func(i, j int) bool {
		if a, b := l.files[i], l.files[j]; a.MinTXID != b.MinTXID {
			return a.MinTXID < b.MinTXID
		} else {
			return a.MaxTXID > b.MaxTXID
		}
	})
	// A snapshot (a file from TXID 1) supersedes the files it covers; a
	// crash while it was being adopted can leave them behind.
	if len(l.files) > 0 && l.files[0].MinTXID == 1 {
		snap := l.files[0]
		kept := l.files[:1]
		for _, f := range l.files[1:] {
			if f.MaxTXID <= snap.MaxTXID {
				if err := os.Remove(l.Path(f.MinTXID, f.MaxTXID)); err != nil {
					return nil, err
				}
				continue
			}
			kept = append(kept, f)
		}
		l.files = kept
	}
	for i := 1; i < len(l.files); i++ {
		if prev, cur := l.files[i-1], l.files[i]; cur.MinTXID != prev.MaxTXID+1 {
			return nil, fmt.Errorf("ltx log in %s is not contiguous: %s follows %s", dir,
				FormatFilename(cur.MinTXID, cur.MaxTXID), FormatFilename(prev.MinTXID, prev.MaxTXID))
		}
	}
	if len(l.files) == 0 {
		return l, nil
	}
	// Verify the window oldest first: the log ends before the first file
	// that fails, and the files after it go with it. In fast mode a large
	// newest file is checked by its ends; if not even they are whole, it
	// is verified in full, which says what is wrong.
	from := max(0, len(l.files)-MaxUnsynced)
	for i := from; i < len(l.files); i++ {
		f := l.files[i]
		if fast && i == len(l.files)-1 && f.Size >= FastVerifyMin {
			if err := l.setPosFromEnds(f); err == nil {
				l.unverified = l.Path(f.MinTXID, f.MaxTXID)
				continue
			}
		}
		if err := l.setPosFrom(f); err != nil {
			for _, f := range l.files[i:] {
				l.torn = append(l.torn, l.Path(f.MinTXID, f.MaxTXID))
			}
			l.files = l.files[:i]
			l.pos, l.last = Pos{}, Header{}
			if i > 0 {
				if err := l.setPosFrom(l.files[i-1]); err != nil {
					return nil, err
				}
			}
			return l, err
		}
	}
	return l, nil
}

// setPosFrom verifies f and sets the log's position to its end.
func (l *Log) setPosFrom(f FileInfo) error {
	path := l.Path(f.MinTXID, f.MaxTXID)
	d, err := VerifyFile(path)
	if err != nil {
		return err
	}
	if d.Header.MinTXID != f.MinTXID || d.Header.MaxTXID != f.MaxTXID {
		return &CorruptError{Path: path,
			Err: fmt.Errorf("header holds %s-%s, name says otherwise", d.Header.MinTXID, d.Header.MaxTXID)}
	}
	l.last = d.Header
	l.pos = Pos{TXID: f.MaxTXID, Checksum: d.PostApplyChecksum}
	return nil
}

// setPosFromEnds sets the log's position from f's header and trailer,
// checked for themselves but not against the rest of the file.
func (l *Log) setPosFromEnds(f FileInfo) error {
	path := l.Path(f.MinTXID, f.MaxTXID)
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	b := make([]byte, sltx.HeaderSize)
	if _, err := fh.ReadAt(b, 0); err != nil {
		return err
	}
	var h sltx.Header
	if err := h.UnmarshalBinary(b); err != nil {
		return err
	} else if err := h.Validate(); err != nil {
		return err
	}
	hdr := fromCodec(h)
	if hdr.MinTXID != f.MinTXID || hdr.MaxTXID != f.MaxTXID {
		return fmt.Errorf("header holds %s-%s, name says otherwise", hdr.MinTXID, hdr.MaxTXID)
	}
	post, err := ReadTrailer(path)
	if err != nil {
		return err
	}
	l.last = hdr
	l.pos = Pos{TXID: f.MaxTXID, Checksum: post}
	l.unverified = path
	return nil
}

// Unverified reports whether OpenLogFast checked the newest file by its
// ends only (and VerifyNewest has not read it since).
func (l *Log) Unverified() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.unverified != ""
}

// VerifyNewest reads the newest file that OpenLogFast checked by its ends
// only, in full, and returns a *CorruptError if it is damaged; it stops
// early with ctx's error. Nothing to do otherwise.
func (l *Log) VerifyNewest(ctx context.Context) error {
	l.mu.Lock()
	path := l.unverified
	l.mu.Unlock()
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil // replaced meanwhile (a snapshot, retention)
	} else if err != nil {
		return err
	}
	defer f.Close()
	if _, err := decode(bufio.NewReaderSize(ctxReader{ctx: ctx, r: f}, 1<<20), false); err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return &CorruptError{Path: path, Err: err}
	}
	l.mu.Lock()
	if l.unverified == path {
		l.unverified = ""
	}
	l.mu.Unlock()
	return nil
}

// ctxReader stops reading once ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// Stamp returns the stamp in the header of the log's file f, reading the
// header the first time it is asked for.
func (l *Log) Stamp(f FileInfo) (Stamp, error) {
	l.mu.Lock()
	s, ok := l.stamps[f.MaxTXID]
	l.mu.Unlock()
	if ok {
		return s, nil
	}
	file, err := os.Open(l.Path(f.MinTXID, f.MaxTXID))
	if err != nil {
		return 0, err
	}
	defer file.Close()
	d, err := NewDecoder(file)
	if err != nil {
		return 0, err
	}
	s = d.Header().Stamp
	l.mu.Lock()
	l.setStamp(f.MaxTXID, s)
	l.mu.Unlock()
	return s, nil
}

// setStamp caches a file's stamp. l.mu held.
func (l *Log) setStamp(txid TXID, s Stamp) {
	if l.stamps == nil {
		l.stamps = make(map[TXID]Stamp)
	}
	l.stamps[txid] = s
}

// DiscardTorn removes, durably, the file that OpenLog reported as failing
// and every file after it, once the caller has established they were torn
// writes: their transactions were never made durable.
func (l *Log) DiscardTorn() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.torn) - 1; i >= 0; i-- {
		if err := os.Remove(l.torn[i]); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	l.torn = nil
	return SyncDir(l.dir)
}

// Torn returns the files OpenLog left out of the log: the one that failed
// verification and those after it.
func (l *Log) Torn() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.torn...)
}

// Dir returns the directory holding the log.
func (l *Log) Dir() string { return l.dir }

// Path returns the path of the LTX file holding min..max.
func (l *Log) Path(min, max TXID) string { return filepath.Join(l.dir, FormatFilename(min, max)) }

// Pos returns the position after the newest file; zero for an empty log.
func (l *Log) Pos() Pos {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pos
}

// LastHeader returns the header of the newest file; zero for an empty log.
func (l *Log) LastHeader() Header {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// Files returns the files of the log, oldest first.
func (l *Log) Files() []FileInfo {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]FileInfo(nil), l.files...)
}

// Append durably writes the next LTX file. hdr must continue the log: its
// MinTXID is the log's TXID + 1 and its pre-apply checksum the log's
// checksum (a snapshot, MinTXID 1, may start an empty log).
func (l *Log) Append(hdr Header, pages []Page, post checksum.Checksum) error {
	return l.AppendChecked(hdr, pages, post, nil)
}

// AppendChecked is Append, asking check (if not nil) once the file is
// durable whether it may stay: if check returns an error, the file is
// removed, the log stays where it was, and the error is returned. A crash
// before the removal is durable leaves the file, as a crash leaves the
// file of a commit that was not acknowledged yet.
func (l *Log) AppendChecked(hdr Header, pages []Page, post checksum.Checksum, check func() error) error {
	return l.append(hdr, pages, post, check, false)
}

// AppendDeferred is AppendChecked without making the file durable: it is
// written (so it survives a crash of the process, in the page cache) and
// made durable by the next Sync, which the caller must call before it
// makes anything that depends on the file durable. A crash of the
// machine before that may lose the file or leave it torn; OpenLog then
// drops it, and every file after it.
func (l *Log) AppendDeferred(hdr Header, pages []Page, post checksum.Checksum, check func() error) error {
	return l.append(hdr, pages, post, check, true)
}

func (l *Log) append(hdr Header, pages []Page, post checksum.Checksum, check func() error, deferred bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if deferred && len(l.unsynced) >= MaxUnsynced {
		if err := l.syncLocked(); err != nil {
			return fmt.Errorf("append ltx %s: %w", hdr.MinTXID, err)
		}
	}
	if hdr.MinTXID != l.pos.TXID+1 {
		return fmt.Errorf("append ltx %s: log is at %s", hdr.MinTXID, l.pos.TXID)
	}
	if !hdr.IsSnapshot() && hdr.PreApplyChecksum != l.pos.Checksum {
		return fmt.Errorf("append ltx %s: pre-apply checksum %s, log is at %s", hdr.MinTXID, hdr.PreApplyChecksum, l.pos.Checksum)
	}
	path := l.Path(hdr.MinTXID, hdr.MaxTXID)
	f, err := writeFile(path, l.takeSpare(path), hdr, pages, post, !deferred)
	if err != nil {
		return fmt.Errorf("write ltx %s: %w", filepath.Base(path), err)
	}
	if check != nil {
		if err := check(); err != nil {
			if f != nil {
				_ = f.Close()
			}
			if rerr := os.Remove(path); rerr != nil {
				return fmt.Errorf("%w (and removing %s failed: %v)", err, filepath.Base(path), rerr)
			}
			return err
		}
	}
	if f != nil {
		l.unsynced = append(l.unsynced, f)
	}
	l.files = append(l.files, FileInfo{MinTXID: hdr.MinTXID, MaxTXID: hdr.MaxTXID, ModTime: time.Now()})
	l.pos = Pos{TXID: hdr.MaxTXID, Checksum: post}
	l.last = hdr
	l.setStamp(hdr.MaxTXID, hdr.Stamp)
	return nil
}

// TakeBack removes the newest file, which must end at txid, and returns
// the log to prev, the position before it, with prevLast the header of
// the file before it (LastHeader before the append). It undoes an append
// whose transaction could not be acknowledged after the file was durable
// (a synchronous commit no candidate acknowledged in time), as
// AppendChecked does when its check fails. A crash before the removal is
// durable leaves the file, as for any commit not yet acknowledged.
func (l *Log) TakeBack(txid TXID, prev Pos, prevLast Header) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.files)
	if n == 0 || l.files[n-1].MaxTXID != txid || l.pos.TXID != txid {
		return fmt.Errorf("take back ltx %s: log is at %s", txid, l.pos.TXID)
	}
	f := l.files[n-1]
	if k := len(l.unsynced); k > 0 && l.unsynced[k-1].Name() == l.Path(f.MinTXID, f.MaxTXID) {
		_ = l.unsynced[k-1].Close()
		l.unsynced = l.unsynced[:k-1]
	}
	if err := os.Remove(l.Path(f.MinTXID, f.MaxTXID)); err != nil {
		return fmt.Errorf("take back ltx %s: %w", txid, err)
	}
	if err := SyncDir(l.dir); err != nil {
		return fmt.Errorf("take back ltx %s: %w", txid, err)
	}
	l.files = l.files[:n-1]
	l.pos, l.last = prev, prevLast
	delete(l.stamps, txid)
	return nil
}

// Adopt moves a complete, verified LTX file at src (on the same
// filesystem) into the log, durably. It must continue the log, unless it
// is a snapshot, which replaces every file in the log.
func (l *Log) Adopt(src string, hdr Header, post checksum.Checksum) error {
	return l.AdoptChecked(src, hdr, post, nil)
}

// AdoptChecked is Adopt, asking check (if not nil) once the file is in the
// log durably whether it may stay, as AppendChecked does: if check returns
// an error, the file is removed, the log stays where it was, and the error
// is returned. A snapshot is checked before it replaces the other files.
// The caller has synced src.
func (l *Log) AdoptChecked(src string, hdr Header, post checksum.Checksum, check func() error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !hdr.IsSnapshot() && hdr.PreApplyPos() != l.pos {
		return fmt.Errorf("adopt ltx %s-%s: applies to %s, log is at %s", hdr.MinTXID, hdr.MaxTXID, hdr.PreApplyPos(), l.pos)
	}
	path := l.Path(hdr.MinTXID, hdr.MaxTXID)
	if err := os.Rename(src, path); err != nil {
		return err
	}
	if err := SyncDir(l.dir); err != nil {
		return err
	}
	if check != nil {
		if err := check(); err != nil {
			if rerr := os.Remove(path); rerr != nil {
				return fmt.Errorf("%w (and removing %s failed: %v)", err, filepath.Base(path), rerr)
			}
			return err
		}
	}
	info := FileInfo{MinTXID: hdr.MinTXID, MaxTXID: hdr.MaxTXID, ModTime: time.Now()}
	if hdr.IsSnapshot() {
		for _, f := range l.files {
			if p := l.Path(f.MinTXID, f.MaxTXID); p != path {
				if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
					return err
				}
			}
		}
		l.files, l.stamps = nil, nil
	}
	l.files = append(l.files, info)
	l.pos = Pos{TXID: hdr.MaxTXID, Checksum: post}
	l.last = hdr
	l.setStamp(hdr.MaxTXID, hdr.Stamp)
	return nil
}

// Sync makes the files AppendDeferred wrote durable, with their names.
func (l *Log) Sync() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.syncLocked()
}

// Unsynced returns how many files wait for Sync.
func (l *Log) Unsynced() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.unsynced)
}

// syncLocked makes the unsynced files durable, oldest first. l.mu held.
// More than one is synced with syncfs(2): one flush of the filesystem's
// journal and the device's cache instead of one per file.
func (l *Log) syncLocked() error {
	switch len(l.unsynced) {
	case 0:
		return nil
	case 1:
		if err := Sync(l.unsynced[0]); err != nil {
			return fmt.Errorf("sync %s: %w", filepath.Base(l.unsynced[0].Name()), err)
		}
	default:
		if err := SyncFS(l.unsynced); err != nil {
			return fmt.Errorf("sync %d ltx files: %w", len(l.unsynced), err)
		}
	}
	for _, f := range l.unsynced {
		_ = f.Close()
	}
	l.unsynced = l.unsynced[:0]
	return nil // syncing a new file makes its name durable too (see WriteFile)
}

// Close closes the files that wait for Sync without syncing them (a crash
// of the process loses nothing written, and a log that is closed without
// a crash is synced first by its owner) and stops the spares.
func (l *Log) Close() error {
	l.mu.Lock()
	exited := l.stopSpares()
	for _, f := range l.unsynced {
		_ = f.Close()
	}
	l.unsynced = nil
	l.mu.Unlock()
	if exited != nil {
		<-exited
	}
	return nil
}

// SyncDir makes a directory's entries durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return Sync(d)
}

// Retain removes files last modified before t, always keeping the newest.
// It returns how many files it removed.
func (l *Log) Retain(t time.Time) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for len(l.files) > 1 && l.files[0].ModTime.Before(t) {
		f := l.files[0]
		if err := l.discard(l.Path(f.MinTXID, f.MaxTXID)); err != nil {
			return n, err
		}
		l.files = l.files[1:]
		delete(l.stamps, f.MaxTXID)
		n++
	}
	return n, nil
}
