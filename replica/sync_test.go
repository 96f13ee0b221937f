package replica

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/lease"
	"github.com/litefs-project/litefs/ltx"
)

// syncStore opens a primary's store with sync-replicas 1 and one database.
func syncStore(t *testing.T, timeout time.Duration, fallback string) (*Store, *DB) {
	t.Helper()
	s := NewStore(t.TempDir())
	s.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s.SyncReplicas, s.SyncTimeout, s.SyncFallback = 1, timeout, fallback
	if err := s.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	db, err := s.CreateDB("a")
	if err != nil {
		t.Fatal(err)
	}
	return s, db
}

// syncTxn writes page 1 (a SQLite header, with b at its end) as a
// rollback-journal transaction and commits it, as the FUSE layer does.
func syncTxn(t *testing.T, db *DB, b byte) error {
	t.Helper()
	const ps = 512
	p := make([]byte, ps)
	copy(p, "SQLite format 3\x00")
	binary.BigEndian.PutUint16(p[16:], ps)
	binary.BigEndian.PutUint32(p[28:], 1)
	p[ps-1] = b
	if err := os.WriteFile(db.JournalPath(), []byte("journal"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := db.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	return db.RemoveJournal()
}

// ackWhenMoved acknowledges, as candidate session, every position of the
// store once database db passes txid.
func ackWhenMoved(s *Store, db *DB, session string, txid ltx.TXID) {
	go func() {
		for i := 0; i < 1000; i++ {
			changed := s.Changed()
			if db.Pos().TXID >= txid {
				pos := make(map[string]ltx.Pos)
				for _, d := range s.DBs() {
					pos[d.Name()] = d.Pos()
				}
				s.syncTracker().ack(session, pos, s.Stamp())
				return
			}
			select {
			case <-changed:
			case <-time.After(time.Second):
			}
		}
	}()
}

func TestSync_Commit(t *testing.T) {
	t.Run("Acknowledged", func(t *testing.T) {
		s, db := syncStore(t, 5*time.Second, SyncFallbackFail)
		ackWhenMoved(s, db, "c1", 1)
		if err := syncTxn(t, db, 1); err != nil {
			t.Fatalf("commit: %v", err)
		}
		if got := db.Pos().TXID; got != 1 {
			t.Errorf("position %s, want 1", got)
		}
	})

	t.Run("ErrSyncTimeout", func(t *testing.T) {
		s, db := syncStore(t, 5*time.Second, SyncFallbackFail)
		ackWhenMoved(s, db, "c1", 1)
		if err := syncTxn(t, db, 1); err != nil {
			t.Fatal(err)
		}
		s.syncTracker().timeout = 100 * time.Millisecond
		before, files := db.Pos(), len(db.Log().Files())
		start := time.Now()
		err := syncTxn(t, db, 2)
		if !errors.Is(err, ErrSyncTimeout) {
			t.Fatalf("commit: %v, want ErrSyncTimeout", err)
		}
		if d := time.Since(start); d < 100*time.Millisecond || d > 2*time.Second {
			t.Errorf("failed after %s, want about 100ms", d)
		}
		// Taken back: position, log and journal as before the commit.
		if db.Pos() != before || db.Log().Pos() != before || len(db.Log().Files()) != files {
			t.Errorf("position %s, log %s with %d files; want %s with %d", db.Pos(), db.Log().Pos(), len(db.Log().Files()), before, files)
		}
		if _, err := os.Stat(db.JournalPath()); err != nil {
			t.Errorf("journal: %v; it must stay for SQLite to roll back", err)
		}
		// The next commit takes the same TXID once acknowledged.
		ackWhenMoved(s, db, "c1", 2)
		if err := syncTxn(t, db, 3); err != nil {
			t.Fatalf("commit after a timeout: %v", err)
		}
		if got := db.Pos().TXID; got != 2 {
			t.Errorf("position %s, want 2", got)
		}
	})

	t.Run("FallbackAsync", func(t *testing.T) {
		s, db := syncStore(t, 100*time.Millisecond, SyncFallbackAsync)
		if err := syncTxn(t, db, 1); err != nil {
			t.Fatalf("commit: %v", err)
		}
		if got := s.syncTracker().mode(); got != SyncModeAsync {
			t.Fatalf("mode %q, want async", got)
		}
		start := time.Now()
		if err := syncTxn(t, db, 2); err != nil || time.Since(start) > 50*time.Millisecond {
			t.Fatalf("async commit: %v after %s", err, time.Since(start))
		}
		// A candidate that catches up brings synchronous mode back.
		s.syncTracker().ack("c1", map[string]ltx.Pos{"a": db.Pos()}, s.Stamp())
		if got := s.syncTracker().mode(); got != SyncModeSync {
			t.Fatalf("mode %q after catching up, want sync", got)
		}
	})

	t.Run("RollbackNeverWaits", func(t *testing.T) {
		s, db := syncStore(t, 5*time.Second, SyncFallbackFail)
		ackWhenMoved(s, db, "c1", 1)
		if err := syncTxn(t, db, 1); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := syncTxn(t, db, 1); err != nil { // the same page again: nothing changed
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("a commit that changed nothing waited %s", d)
		}
	})

	t.Run("DemoteAborts", func(t *testing.T) {
		s, db := syncStore(t, 10*time.Second, SyncFallbackFail)
		go func() {
			for i := 0; i < 1000 && db.Pos().TXID == 0; i++ {
				time.Sleep(time.Millisecond)
			}
			s.SetPrimary(false)
			s.syncTracker().abort(ErrReadOnly)
		}()
		start := time.Now()
		if err := syncTxn(t, db, 1); !errors.Is(err, ErrReadOnly) {
			t.Fatalf("commit: %v, want ErrReadOnly", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("waited %s", d)
		}
		if db.Pos().TXID != 0 {
			t.Errorf("position %s, want 0", db.Pos())
		}
	})
}

func TestSyncTracker(t *testing.T) {
	pos := func(txid ltx.TXID, sum byte) ltx.Pos { return ltx.Pos{TXID: txid, Checksum: checksum.Checksum(sum)} }
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	newest := ltx.NewStamp(1, 100) // a candidate's stamp newer than every commit's here

	t.Run("GroupCommit", func(t *testing.T) {
		tr := newSyncTracker(1, 5*time.Second, SyncFallbackFail, logger, nil)
		tr.reset(nil, 1)
		done := make(chan error, 2)
		go func() { done <- tr.wait("a", ltx.Pos{}, pos(1, 1)) }()
		go func() { done <- tr.wait("b", ltx.Pos{}, pos(1, 2)) }()
		for i := 0; i < 1000; i++ { // both waiting
			tr.mu.Lock()
			n := len(tr.waiters)
			tr.mu.Unlock()
			if n == 2 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		tr.ack("c1", map[string]ltx.Pos{"a": pos(1, 1), "b": pos(1, 2)}, newest) // one report releases both
		for i := 0; i < 2; i++ {
			select {
			case err := <-done:
				if err != nil {
					t.Error(err)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("a commit was not released")
			}
		}
	})

	t.Run("HoldsEverythingReleased", func(t *testing.T) {
		tr := newSyncTracker(1, 5*time.Second, SyncFallbackFail, logger, nil)
		tr.reset(nil, 1)
		// c1 releases a:1; c2 holds b:1 but not a:1, so it cannot release
		// b:1: then no candidate would hold both.
		tr.ack("c1", map[string]ltx.Pos{"a": pos(1, 1)}, newest)
		if err := tr.wait("a", ltx.Pos{}, pos(1, 1)); err != nil {
			t.Fatal(err)
		}
		tr.ack("c2", map[string]ltx.Pos{"b": pos(1, 2)}, newest)
		tr.timeout = 100 * time.Millisecond
		if err := tr.wait("b", ltx.Pos{}, pos(1, 2)); !errors.Is(err, ErrSyncTimeout) {
			t.Fatalf("wait: %v, want ErrSyncTimeout", err)
		}
	})

	t.Run("OtherHistory", func(t *testing.T) {
		tr := newSyncTracker(1, 100*time.Millisecond, SyncFallbackFail, logger, nil)
		tr.reset(nil, 1)
		// A candidate holding a taken-back transaction at the same TXID
		// does not hold this one.
		tr.ack("c1", map[string]ltx.Pos{"a": pos(1, 9)}, newest)
		if err := tr.wait("a", ltx.Pos{}, pos(1, 1)); !errors.Is(err, ErrSyncTimeout) {
			t.Fatalf("wait: %v, want ErrSyncTimeout", err)
		}
	})

	t.Run("OlderStamp", func(t *testing.T) {
		tr := newSyncTracker(1, 100*time.Millisecond, SyncFallbackFail, logger, nil)
		tr.reset(nil, 2)
		// A candidate that holds the position (through a snapshot) but
		// whose own stamp is older than the commit's does not count: an
		// election would compare that older stamp.
		tr.ack("c1", map[string]ltx.Pos{"a": pos(1, 1)}, ltx.NewStamp(1, 7))
		if err := tr.wait("a", ltx.Pos{}, pos(1, 1)); !errors.Is(err, ErrSyncTimeout) {
			t.Fatalf("wait: %v, want ErrSyncTimeout", err)
		}
		tr.ack("c1", map[string]ltx.Pos{"a": pos(1, 1)}, ltx.NewStamp(2, 2)) // the second commit: place 2
		if err := tr.wait("a", ltx.Pos{}, pos(1, 1)); err != nil {
			t.Fatalf("wait with the commit's stamp: %v", err)
		}
	})

	t.Run("InheritedPositions", func(t *testing.T) {
		tr := newSyncTracker(1, 100*time.Millisecond, SyncFallbackFail, logger, nil)
		// A new primary counts what it holds as acknowledged: a candidate
		// must hold it too before this term's commits count.
		tr.reset(map[string]ltx.Pos{"a": pos(5, 5)}, 1)
		tr.ack("c1", map[string]ltx.Pos{"a": pos(4, 4), "b": pos(1, 1)}, newest)
		if err := tr.wait("b", ltx.Pos{}, pos(1, 1)); !errors.Is(err, ErrSyncTimeout) {
			t.Fatalf("wait: %v, want ErrSyncTimeout", err)
		}
	})
}

func TestRole_SyncElection(t *testing.T) {
	for _, tt := range []struct {
		name   string
		sync   int
		n      int                       // lease.candidates
		others map[string]lease.Position // other candidates' published positions
		want   bool
	}{
		{"AsyncAlone", 0, 0, nil, true},
		{"SyncAlone", 1, 0, nil, false},
		{"SyncHeardFromOne", 1, 0, map[string]lease.Position{"b": {TXIDs: map[string]uint64{"a": 0}}}, true},
		{"SyncOtherAhead", 1, 0, map[string]lease.Position{"b": {TXIDs: map[string]uint64{"a": 5}}}, false},
		// Equal TXIDs: the newer stamp (a later term) is ahead.
		{"SyncOtherNewerTerm", 1, 0, map[string]lease.Position{"b": {TXIDs: map[string]uint64{}, Stamp: 2 << 40}}, false},
		{"SyncTwoHeardFromOne", 2, 0, map[string]lease.Position{"b": {TXIDs: map[string]uint64{"a": 0}}}, false},
		// Five candidates, sync-replicas 1: four remain when the primary
		// is gone, and only hearing from three of them meets the one
		// holding every acknowledged transaction for sure.
		{"SyncFiveHeardFromTwo", 1, 5, map[string]lease.Position{"b": {}, "c": {}}, false},
		{"SyncFiveHeardFromThree", 1, 5, map[string]lease.Position{"b": {}, "c": {}, "d": {}}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mem := lease.NewMemory()
			s := NewStore(t.TempDir())
			s.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
			if err := s.Open(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Close() })
			s.SetPrimary(false)
			for name, p := range tt.others {
				if err := mem.Leaser(lease.Node{Hostname: name, Candidate: true}, time.Second, 0).Publish(context.Background(), p); err != nil {
					t.Fatal(err)
				}
			}
			r := NewRole(mem.Leaser(lease.Node{Hostname: "self", Candidate: true}, time.Second, 0), s, nil, nil)
			r.SyncReplicas, r.Candidates = tt.sync, tt.n
			if got := r.elect(context.Background(), false, 0); got != tt.want {
				t.Errorf("elected %v, want %v", got, tt.want)
			}
			if got := s.IsPrimary(); got != tt.want {
				t.Errorf("primary %v, want %v", got, tt.want)
			}
		})
	}
}

type nopFlusher struct{}

func (nopFlusher) Flush() {}

// TestServer_SendOrdered checks that with sync-replicas the stream sends
// the files of several databases in the order their commits were
// published, so a replica always holds a prefix of the primary's commits.
func TestServer_SendOrdered(t *testing.T) {
	s, a := syncStore(t, 50*time.Millisecond, SyncFallbackAsync) // no candidate: async after the first
	b, err := s.CreateDB("b")
	if err != nil {
		t.Fatal(err)
	}
	for i := byte(1); i <= 3; i++ {
		for _, db := range []*DB{a, b} {
			if err := syncTxn(t, db, i); err != nil {
				t.Fatal(err)
			}
		}
	}
	var buf bytes.Buffer
	srv := NewServer(s, "p")
	if err := srv.sendOrdered(context.Background(), &streamWriter{w: &buf, flusher: nopFlusher{}}, s.syncTracker(), map[string]ltx.Pos{}, s.Logger); err != nil {
		t.Fatal(err)
	}
	var got []string
	r := bufio.NewReader(&buf)
	for i := 0; i < 1000; i++ {
		typ, payload, err := readFrame(r)
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if typ == frameBegin {
			var bg streamBegin
			if err := json.Unmarshal(payload, &bg); err != nil {
				t.Fatal(err)
			}
			got = append(got, bg.DB)
		}
	}
	if want := "a b a b a b"; strings.Join(got, " ") != want {
		t.Errorf("files sent for %v, want %s", got, want)
	}
}
