package replica

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
)

// A snapshot is applied in one pass as it arrives: its bytes are kept as
// the LTX file the log will hold, and its pages are decoded into a new
// database file beside the old one, their checksums computed on the way.
// Only once the whole file has verified (the LTX file checksum, and every
// page against the post-apply checksum) and both files are durable does
// the new file replace the old one, by rename: a damaged or cut snapshot
// changes nothing.

// snapshotWriteback is how many bytes of a received snapshot accumulate
// before the kernel is asked to start writing them to disk, so that the
// sync at the end has little left to do.
const snapshotWriteback = 8 << 20

// receivedSnapshot is a snapshot received, verified and durable, not yet
// installed.
type receivedSnapshot struct {
	hdr    ltx.Header
	post   checksum.Checksum
	tbl    *checksum.Table
	ltx    string // the LTX file, for the log
	db     string // the new database file
	elapse time.Duration
}

func (rs *receivedSnapshot) remove() {
	if rs != nil {
		os.Remove(rs.ltx)
		os.Remove(rs.db)
	}
}

// snapshotReceiver decodes a snapshot being received, in its own goroutine,
// from what write passes it.
type snapshotReceiver struct {
	begin streamBegin
	start time.Time
	pw    *io.PipeWriter
	done  chan struct{}
	res   *receivedSnapshot
	err   error
}

// receiveSnapshot starts receiving a snapshot; its files go in dir, on the
// data directory's filesystem.
func receiveSnapshot(b streamBegin, dir string) *snapshotReceiver {
	pr, pw := io.Pipe()
	sr := &snapshotReceiver{begin: b, start: time.Now(), pw: pw, done: make(chan struct{})}
	go func() {
		defer close(sr.done)
		sr.res, sr.err = decodeSnapshot(pr, dir)
		// Unblock a writer if decoding stopped early.
		pr.CloseWithError(errors.Join(sr.err, errSnapshotEnded))
	}()
	return sr
}

var errSnapshotEnded = errors.New("snapshot decoding ended")

// write passes the next bytes of the snapshot. It fails if decoding failed.
func (sr *snapshotReceiver) write(p []byte) error {
	if _, err := sr.pw.Write(p); err != nil {
		<-sr.done
		if sr.err != nil {
			return sr.err
		}
		return err
	}
	return nil
}

// finish ends the snapshot and returns it verified and durable.
func (sr *snapshotReceiver) finish() (*receivedSnapshot, error) {
	sr.pw.Close()
	<-sr.done
	if sr.err != nil {
		return nil, sr.err
	}
	sr.res.elapse = time.Since(sr.start)
	return sr.res, nil
}

// abort stops receiving and removes what was received. Safe on nil.
func (sr *snapshotReceiver) abort() {
	if sr == nil {
		return
	}
	sr.pw.CloseWithError(errSnapshotEnded)
	<-sr.done
	sr.res.remove()
}

// decodeSnapshot reads an LTX snapshot from r into two new files in dir:
// the LTX file itself and the database it holds; it verifies the file and
// syncs both. On failure it removes them.
func decodeSnapshot(r io.Reader, dir string) (_ *receivedSnapshot, err error) {
	lf, err := os.CreateTemp(dir, "recv-*.ltx")
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	df, err := os.CreateTemp(dir, "recv-*.db")
	if err != nil {
		os.Remove(lf.Name())
		return nil, err
	}
	defer df.Close()
	rs := &receivedSnapshot{ltx: lf.Name(), db: df.Name()}
	defer func() {
		if err != nil {
			rs.remove()
		}
	}()

	lw := newWriteback(lf)
	defer lw.stop()
	// A failure to keep the bytes (a full disk) stops decoding too: it is
	// that failure, not a damaged snapshot.
	corrupt := func(err error) error {
		if lw.err != nil {
			return lw.err
		}
		return corruptSnapshot(err)
	}
	dec, err := ltx.NewSnapshotReader(bufio.NewReaderSize(io.TeeReader(r, lw), 256<<10))
	if err != nil {
		return nil, corrupt(err)
	}
	hdr := dec.Header()
	ps := int64(hdr.PageSize)
	size := int64(hdr.Commit) * ps
	// No room is reserved ahead (fallocate), unlike for an apply in
	// place: the files are new, so a full disk fails a write, the
	// snapshot is dropped and nothing else has changed; and writing into
	// reserved (unwritten) extents cost about a third more CPU here.
	tbl := checksum.NewTable(hdr.PageSize)
	dw := newWriteback(df)
	defer dw.stop()
	// Pages arrive in order (a snapshot holds pages 1 to its commit size,
	// all but the lock page) and are written in runs of up to 1 MiB.
	run := make([]byte, max(ps, 1<<20/ps*ps))
	var runStart, runN uint32
	flush := func() error {
		if runN == 0 {
			return nil
		}
		n := int64(runN) * ps
		if _, err := df.WriteAt(run[:n], int64(runStart-1)*ps); err != nil {
			return err
		}
		dw.wrote(n)
		runN = 0
		return nil
	}
	for {
		if runN > 0 && int64(runN+1)*ps > int64(len(run)) {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		off := int64(runN) * ps
		pgno, c, err := dec.Next(run[off : off+ps])
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, corrupt(err)
		}
		if runN > 0 && pgno != runStart+runN {
			// Past the lock page: the page read goes in a new run.
			page := bytes.Clone(run[off : off+ps])
			if err := flush(); err != nil {
				return nil, err
			}
			copy(run, page)
		}
		if runN == 0 {
			runStart = pgno
		}
		runN++
		tbl.SetChecksum(pgno, c)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	post, err := dec.Close()
	if err != nil {
		return nil, corrupt(err)
	}
	tbl.Truncate(hdr.Commit)
	if got := tbl.Sum(); got != post {
		return nil, corruptSnapshot(fmt.Errorf("pages have checksum %s, trailer says %s", got, post))
	}
	if lw.err != nil {
		return nil, lw.err
	}
	if err := df.Truncate(size); err != nil {
		return nil, err
	}
	// Both syncs have little left to do: writeback started as the
	// files grew.
	lw.stop()
	dw.stop()
	if err := lf.Sync(); err != nil {
		return nil, err
	}
	if err := df.Sync(); err != nil {
		return nil, err
	}
	rs.hdr, rs.post, rs.tbl = hdr, post, tbl
	return rs, nil
}

func corruptSnapshot(err error) error {
	return &ltx.CorruptError{Path: "snapshot received", Err: err}
}

// writeback writes to f (appending, for the LTX file) and asks the kernel
// to start writing back every snapshotWriteback bytes. The requests are
// made by a goroutine of its own: submitting the writes can wait for the
// disk's queue, and decoding goes on meanwhile. stop ends it.
type writeback struct {
	f       *os.File
	n, due  int64
	err     error
	kick    chan int64 // where written bytes end, for the goroutine
	stopped chan struct{}
}

func newWriteback(f *os.File) *writeback {
	w := &writeback{f: f, kick: make(chan int64, 1), stopped: make(chan struct{})}
	go func() {
		defer close(w.stopped)
		var done int64
		for end := range w.kick {
			_ = unix.SyncFileRange(int(f.Fd()), done, end-done, unix.SYNC_FILE_RANGE_WRITE)
			done = end
		}
	}()
	return w
}

func (w *writeback) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.f.Write(p)
	if err != nil {
		// Kept for decodeSnapshot: the TeeReader would stop decoding
		// with it as if the stream had failed.
		w.err = err
		return n, err
	}
	w.wrote(int64(n))
	return n, nil
}

// wrote records n more bytes written and asks for writeback of what is
// due; a request the goroutine has not taken yet is replaced by this one,
// which covers it.
func (w *writeback) wrote(n int64) {
	w.n += n
	if w.n-w.due < snapshotWriteback {
		return
	}
	w.due = w.n
	select {
	case w.kick <- w.n:
	default:
		select {
		case <-w.kick:
		default:
		}
		w.kick <- w.n
	}
}

// stop ends the goroutine. Safe twice.
func (w *writeback) stop() {
	select {
	case <-w.stopped:
		return
	default:
	}
	close(w.kick)
	<-w.stopped
}

// installSnapshot makes a received snapshot the database: its LTX file
// enters the log (replacing the files there), then its database file
// replaces the old one by rename, and the position moves. Readers are kept
// out by gate meanwhile and forget what they cached. A crash after the log
// has the snapshot and before the rename is finished at the next start,
// as for any apply (the newest LTX file is applied again).
func (db *DB) installSnapshot(ctx context.Context, rs *receivedSnapshot, gate Gate) error {
	start := time.Now()
	hdr := rs.hdr
	db.mu.Lock()
	if db.closed {
		db.mu.Unlock()
		return ErrClosed
	}
	unlock, err := db.lockGate(ctx, gate)
	if err != nil {
		db.mu.Unlock()
		return err
	}
	err = db.installSnapshotLocked(rs)
	db.mu.Unlock()
	if err = db.reopenGate(gate, unlock, err); err == nil {
		db.metrics.applied([]ltx.Header{hdr}, rs.elapse+time.Since(start))
	}
	return err
}

// installSnapshotLocked: db.mu held, readers kept out.
func (db *DB) installSnapshotLocked(rs *receivedSnapshot) error {
	hdr := rs.hdr
	// Committed WAL frames belong to the database being replaced, but
	// they are part of its position until the log moves on: moving them
	// into the file keeps the old state whole if this stops midway.
	if err := db.checkpointWAL(); err != nil {
		return err
	}
	if err := db.log.Adopt(rs.ltx, hdr, rs.post); err != nil {
		return fmt.Errorf("adopt snapshot ltx: %w", err)
	}
	if err := os.Rename(rs.db, db.path(DatabaseFile)); err != nil {
		return fmt.Errorf("install snapshot %s: %w", hdr.MaxTXID, err)
	}
	if err := ltx.SyncDir(db.dir); err != nil {
		return err
	}
	// The new file takes the old one's descriptor, so that every holder
	// of db.f (readers pass through it without db.mu) reads the new
	// file from now on.
	nf, err := os.OpenFile(db.path(DatabaseFile), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = unix.Dup3(int(nf.Fd()), int(db.f.Fd()), unix.O_CLOEXEC)
	nf.Close()
	if err != nil {
		return fmt.Errorf("install snapshot %s: reopen the database file: %w", hdr.MaxTXID, err)
	}
	db.pageSize, db.chk = hdr.PageSize, rs.tbl
	db.pos = ltx.Pos{TXID: hdr.MaxTXID, Checksum: rs.post}
	db.publish()
	db.logger.Debug("applied", slog.String(LogKeyTXID, hdr.MaxTXID.String()), slog.Bool("snapshot", true))
	return nil
}
