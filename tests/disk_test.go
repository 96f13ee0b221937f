package tests

import (
	"database/sql"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gosqlite3 "github.com/mattn/go-sqlite3"

	"github.com/litefs-project/litefs/ltx"
)

// diskModes are the journal modes the full-disk tests run in: one
// rollback-journal mode and WAL.
var diskModes = []string{"DELETE", "WAL"}

// Log lines the full-disk tests look for: one when an episode starts,
// naming where, and one when it ends.
const (
	diskFullLog    = "disk is full"
	diskRoomLog    = "disk has room again"
	diskFullErrMsg = "database or disk is full"
)

// tmpfs is a small tmpfs the test mounts over a node's data directory, so
// that the node's disk can be filled and freed.
type tmpfs struct {
	t       *testing.T
	dir     string
	fillers int
}

// mountTmpfs mounts a tmpfs of size (mount's size= option) over n's data
// directory, before n starts. Cleanup stops n first, then unmounts.
func mountTmpfs(t *testing.T, n *Node, size string) *tmpfs {
	t.Helper()
	if err := os.MkdirAll(n.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", n.DataDir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs on %s: %v: %s", n.DataDir, err, out)
	}
	t.Cleanup(func() {
		n.Stop()
		for i := 0; i < 50; i++ {
			if exec.Command("umount", n.DataDir).Run() == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("tmpfs at %s stayed busy; detaching it", n.DataDir)
		_ = exec.Command("umount", "-l", n.DataDir).Run()
	})
	return &tmpfs{t: t, dir: n.DataDir}
}

// remount changes the tmpfs's size in place.
func (fs *tmpfs) remount(size string) {
	fs.t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,size="+size, fs.dir).CombinedOutput(); err != nil {
		fs.t.Fatalf("remount %s with size %s: %v: %s", fs.dir, size, err, out)
	}
}

// avail returns the bytes free on the tmpfs and its size.
func (fs *tmpfs) avail() (free, size int64) {
	fs.t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(fs.dir, &st); err != nil {
		fs.t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize, int64(st.Blocks) * st.Bsize
}

// fill writes a new filler file at the root of the tmpfs (beside dbs/,
// where litefs does not look) until the disk is full, then gives back
// leave bytes (rounded up to whole pages).
func (fs *tmpfs) fill(leave int64) {
	fs.t.Helper()
	fs.fillers++
	path := filepath.Join(fs.dir, fmt.Sprintf("filler-%d", fs.fillers))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		fs.t.Fatal(err)
	}
	defer f.Close()
	_, size := fs.avail()
	var n int64
	for _, chunk := range []int{64 << 10, 4 << 10, 512} {
		buf := make([]byte, chunk)
		for i := int64(0); i <= size/int64(chunk)+1; i++ {
			w, err := f.Write(buf)
			n += int64(w)
			if errors.Is(err, syscall.ENOSPC) {
				break
			} else if err != nil {
				fs.t.Fatal(err)
			}
		}
	}
	if leave > 0 {
		fs.give(path, leave)
	}
	free, _ := fs.avail()
	fs.t.Logf("filled %s with %d bytes; %d bytes free", fs.dir, n, free)
}

// giveBack frees n bytes (rounded up to whole pages) from the newest
// filler.
func (fs *tmpfs) giveBack(n int64) {
	fs.t.Helper()
	fs.give(filepath.Join(fs.dir, fmt.Sprintf("filler-%d", fs.fillers)), n)
	free, _ := fs.avail()
	fs.t.Logf("gave back %d bytes; %d bytes free", n, free)
}

func (fs *tmpfs) give(path string, n int64) {
	fs.t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		fs.t.Fatal(err)
	}
	n = (n + 4095) / 4096 * 4096
	if err := os.Truncate(path, max(0, (fi.Size()-n)/4096*4096)); err != nil {
		fs.t.Fatal(err)
	}
}

// free removes every filler file.
func (fs *tmpfs) free() {
	fs.t.Helper()
	for i := 1; i <= fs.fillers; i++ {
		if err := os.Remove(filepath.Join(fs.dir, fmt.Sprintf("filler-%d", i))); err != nil && !os.IsNotExist(err) {
			fs.t.Fatal(err)
		}
	}
}

// checkDiskFullErr checks that a write refused for lack of space reached
// the application as SQLITE_FULL.
func checkDiskFullErr(t *testing.T, err error) {
	t.Helper()
	var serr gosqlite3.Error
	if !errors.As(err, &serr) || serr.Code != gosqlite3.ErrFull || !strings.Contains(err.Error(), diskFullErrMsg) {
		t.Fatalf("write on a full disk: %v (%#v), want SQLITE_FULL %q", err, err, diskFullErrMsg)
	}
}

// checkRows checks that the table holds exactly the acknowledged ids.
func checkRows(t *testing.T, db *sql.DB, acked []int) {
	t.Helper()
	rows, err := db.Query(`SELECT id FROM t ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []int
	for rows.Next() {
		var id int
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		got = append(got, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := append([]int(nil), acked...)
	sort.Ints(want)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("rows %v\nwant the acknowledged ones %v", got, want)
	}
}

// countLines counts log lines that contain every one of subs.
func countLines(logs string, subs ...string) int {
	n := 0
	for _, line := range strings.Split(logs, "\n") {
		ok := true
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			n++
		}
	}
	return n
}

// TestDisk_PrimaryFull fills the primary's data directory while an
// application writes: every refused commit reaches the application as
// SQLITE_FULL, litefs logs once that the disk is full and where, nothing
// acknowledged is lost and nothing refused appears, the node keeps running
// (exit-on-error is off by default), and commits resume by themselves once
// space is freed, by deleting a file or growing the filesystem.
func TestDisk_PrimaryFull(t *testing.T) {
	for _, mode := range diskModes {
		t.Run(mode, func(t *testing.T) {
			n := NewNodeWith(t, NodeConfig{Name: "primary"})
			disk := mountTmpfs(t, n, "4m")
			n.Start()
			db := n.OpenDB("app.db", mode)
			db.SetMaxOpenConns(1)
			mustExec(t, db, `CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)`)
			mustExec(t, db, `CREATE INDEX t_v ON t (substr(v, 1, 16))`)
			seed := time.Now().UnixNano()
			t.Logf("seed=%d", seed)
			rng := rand.New(rand.NewSource(seed))
			var acked []int
			next := 1
			insert := func(size int) error {
				id := next
				next++
				_, err := db.Exec(`INSERT INTO t VALUES (?, randomblob(?))`, id, size)
				if err == nil {
					acked = append(acked, id)
				}
				return err
			}
			for i := 0; i < 20; i++ {
				if err := insert(100 + rng.Intn(3000)); err != nil {
					t.Fatal(err)
				}
			}

			// A filler takes most of the disk; transactions of random
			// sizes take the rest, so the disk fills at a different
			// point of a transaction in each run.
			disk.fill(384 << 10)
			var full error
			for i := 0; i < 500 && full == nil; i++ {
				full = insert(200 + rng.Intn(8000))
			}
			if full == nil {
				t.Fatal("500 transactions fit on the disk: it never filled")
			}
			t.Logf("first refused commit after %d acknowledged: %v", len(acked), full)
			checkDiskFullErr(t, full)
			// Smaller and smaller transactions find whatever room is
			// left, until none is.
			for _, size := range []int{4000, 1000, 100, 1} {
				for i := 0; i < 100; i++ {
					if err := insert(size); err != nil {
						checkDiskFullErr(t, err)
						break
					}
				}
			}
			out, err := sqlite3(t, n.Path("app.db"), "INSERT INTO t VALUES (1000000, randomblob(5000));")
			if err == nil || !strings.Contains(out, diskFullErrMsg) {
				t.Fatalf("sqlite3 on a full disk: %v %q, want %q", err, out, diskFullErrMsg)
			}
			t.Logf("sqlite3 CLI on a full disk: %q", out)

			// While the disk is full: everything acknowledged is there,
			// nothing refused is, the log matches the database, and the
			// node runs on, having said once what is wrong and where.
			episodes := 1
			whileFull := func() {
				t.Helper()
				checkRows(t, db, acked)
				n.CheckInvariants()
				if !n.running() {
					t.Fatalf("litefs exited on a full disk: %v", n.ExitErr())
				}
				if got := countLines(n.Logs(), diskFullLog, n.DataDir); got != episodes {
					t.Fatalf("%d log lines say the disk is full and name %s, want %d (one per episode):\n%s", got, n.DataDir, episodes, n.Logs())
				}
			}
			// afterFull checks that commits go through again by
			// themselves, and that the end of the episode was logged.
			afterFull := func(how string) {
				t.Helper()
				for i := 0; i < 20; i++ {
					if err := insert(100 + rng.Intn(8000)); err != nil {
						t.Fatalf("commit after %s: %v", how, err)
					}
				}
				checkRows(t, db, acked)
				n.CheckInvariants()
				if got := countLines(n.Logs(), diskRoomLog); got != episodes {
					t.Errorf("%d log lines say the disk has room again, want %d", got, episodes)
				}
			}
			whileFull()

			// Deleting a file frees space.
			disk.free()
			afterFull("deleting a file")
			mustSQLite3(t, n.Path("app.db"), "INSERT INTO t VALUES (1000001, randomblob(5000));")
			acked = append(acked, 1000001)
			checkRows(t, db, acked)

			if mode == "WAL" {
				// A WAL that starts over after a complete checkpoint
				// overwrites frames already on disk, so SQLite's writes
				// need no new space and the commit fails only when its
				// LTX file is written: the frames must not stay valid in
				// the WAL, and SQLite's retry of the rest of a split write
				// must fail too.
				var busy, logFrames, done int
				if err := db.QueryRow(`PRAGMA wal_checkpoint(PASSIVE)`).Scan(&busy, &logFrames, &done); err != nil || busy != 0 || logFrames != done {
					t.Fatalf("checkpoint: busy %d, %d of %d frames: %v", busy, done, logFrames, err)
				}
				ltxDir := filepath.Join(n.DataDir, "dbs", "app.db", "ltx")
				atLTX := countLines(n.Logs(), diskFullLog, ltxDir)
				disk.fill(0)
				err := insert(3000)
				checkDiskFullErr(t, err)
				episodes++
				whileFull()
				if got := countLines(n.Logs(), diskFullLog, ltxDir); got != atLTX+1 {
					t.Fatalf("the commit did not fail at its ltx file:\n%s", n.Logs())
				}
				if got := mustSQLite3(t, n.Path("app.db"), "SELECT count(*) FROM t; PRAGMA integrity_check"); got != fmt.Sprintf("%d\nok", len(acked)) {
					t.Fatalf("sqlite3 after a refused commit: %q, want %d rows", got, len(acked))
				}
				disk.free()
				afterFull("deleting a file")
			}

			// Full again, to the last byte; this time the filesystem grows.
			_, size := disk.avail()
			disk.fill(0)
			for i := 0; i < 100; i++ {
				if err := insert(8000); err != nil {
					checkDiskFullErr(t, err)
					break
				} else if i == 99 {
					t.Fatal("the disk never filled")
				}
			}
			episodes++
			whileFull()
			disk.remount(strconv.FormatInt(2*size/1024, 10) + "k")
			afterFull("the filesystem grew")
			if got := mustSQLite3(t, n.Path("app.db"), "PRAGMA integrity_check"); got != "ok" {
				t.Fatalf("integrity_check: %s", got)
			}
		})
	}
}

// TestDisk_ReplicaFull fills a replica's data directory while the primary
// writes: the replica pauses applying (its position stays, it serves reads
// of what it has, logs once that its disk is full and where, and retries),
// first with no room even to receive a transaction, then with room to
// receive it but not to apply it; once space is freed, by deleting a file
// or growing the filesystem, it converges with the primary by itself, from
// the primary's log, without a snapshot and without moving anything aside.
func TestDisk_ReplicaFull(t *testing.T) {
	for _, mode := range diskModes {
		t.Run(mode, func(t *testing.T) {
			p := NewNodeWith(t, NodeConfig{Name: "primary"})
			p.Start()
			r := NewNodeWith(t, NodeConfig{Name: "replica1", Replica: true, PrimaryURL: p.URL()})
			disk := mountTmpfs(t, r, "2m")
			r.Start()
			c := &Cluster{Primary: p, Replicas: []*Node{r}}

			pdb := p.OpenDB("app.db", mode)
			pdb.SetMaxOpenConns(1)
			mustExec(t, pdb, `CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)`)
			next := 1
			// insert commits one transaction of rows of about 4 KB each,
			// each on pages of its own: the database grows by one page
			// per row.
			insert := func(rows int) {
				t.Helper()
				tx, err := pdb.Begin()
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback()
				for i := 0; i < rows; i++ {
					if _, err := tx.Exec(`INSERT INTO t VALUES (?, randomblob(3900))`, next); err != nil {
						t.Fatal(err)
					}
					next++
				}
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
			}
			insert(10)
			c.WaitConverged(t, "app.db")

			// A reader that stays open through the episodes
			// (TestReplication_WALLongReaders covers the order in which
			// connections read after an apply).
			rdb := r.OpenDB("app.db", mode)
			count := func() string {
				var n int
				if err := rdb.QueryRow(`SELECT count(*) FROM t`).Scan(&n); err != nil {
					t.Fatalf("read on the replica: %v", err)
				}
				return strconv.Itoa(n)
			}
			const q = "SELECT count(*), sum(length(v)), group_concat(hex(substr(v, 1, 4))) FROM t"
			episodes := 0

			// paused checks that the replica has not moved from before,
			// serves reads of what it has, and retries.
			paused := func(before string, rows string) {
				t.Helper()
				connects := strings.Count(p.Logs(), "replica connected")
				waitUntil(t, 30*time.Second, "the replica to retry twice", func() bool {
					return strings.Count(p.Logs(), "replica connected") >= connects+2
				})
				if got := r.Pos("app.db").String(); got != before {
					t.Fatalf("replica moved from %s to %s with a full disk", before, got)
				}
				if got := count(); got != rows {
					t.Fatalf("replica reader: %s rows, want %s", got, rows)
				}
				if got := mustSQLite3(t, r.Path("app.db"), "SELECT count(*) FROM t"); got != rows {
					t.Fatalf("sqlite3 on the replica: %s rows, want %s", got, rows)
				}
				if !r.running() {
					t.Fatalf("the replica exited on a full disk: %v", r.ExitErr())
				}
				r.CheckInvariants()
				if got := countLines(r.Logs(), diskFullLog, r.DataDir); got != episodes {
					t.Fatalf("%d log lines say the disk is full and name %s, want %d (one per episode):\n%s", got, r.DataDir, episodes, r.Logs())
				}
			}
			waitFull := func() {
				t.Helper()
				episodes++
				waitUntil(t, 30*time.Second, "the replica to log that its disk is full", func() bool {
					return countLines(r.Logs(), diskFullLog, r.DataDir) >= episodes
				})
			}

			// Episode 1: not a byte left, so the replica cannot even
			// receive the transaction.
			before, rows := r.Pos("app.db").String(), count()
			disk.fill(0)
			insert(16)
			ltxDir := filepath.Join(p.DataDir, "dbs", "app.db", "ltx")
			txid := p.Pos("app.db").TXID
			newest := filepath.Join(ltxDir, ltx.FormatFilename(txid, txid))
			fi, err := os.Stat(newest)
			if err != nil {
				t.Fatal(err)
			}
			waitFull()
			paused(before, rows)
			// Room to receive the transaction but not to apply it: the
			// database must grow by 16 pages.
			disk.giveBack(fi.Size() + 4096)
			paused(before, rows)
			disk.free()
			c.WaitConverged(t, "app.db")
			if got := count(); got != strconv.Itoa(next-1) {
				t.Fatalf("replica reader: %s rows, want %d", got, next-1)
			}
			if got, want := dump(t, r, "app.db", q), dump(t, p, "app.db", q); got != want {
				t.Fatalf("replica %q, primary %q", got, want)
			}
			if got := countLines(r.Logs(), diskRoomLog); got != 1 {
				t.Errorf("%d log lines say the disk has room again, want 1", got)
			}

			// Episode 2: full again; the filesystem grows.
			before, rows = r.Pos("app.db").String(), count()
			_, size := disk.avail()
			disk.fill(0)
			insert(16)
			waitFull()
			paused(before, rows)
			disk.remount(strconv.FormatInt(2*size/1024, 10) + "k")
			insert(3)
			c.WaitConverged(t, "app.db")
			if got := count(); got != strconv.Itoa(next-1) {
				t.Fatalf("replica reader: %s rows, want %d", got, next-1)
			}
			if got, want := dump(t, r, "app.db", q+"; PRAGMA integrity_check"), dump(t, p, "app.db", q+"; PRAGMA integrity_check"); got != want {
				t.Fatalf("replica %q, primary %q", got, want)
			}

			// It caught up from the primary's log: one file per
			// transaction, no snapshot, nothing moved aside.
			checkCaughtUpFromLog(t, p, r)
			if strings.Contains(p.Logs(), "sending a snapshot") {
				t.Errorf("the primary sent a snapshot")
			}
			r.CheckInvariants()
			p.CheckInvariants()
		})
	}
}

// TestDisk_ReplicaApplyRedo makes a replica's database file refuse writes
// (it is made immutable) while a transaction arrives: the transaction
// enters the replica's log, then cannot be written to its database, as
// when a disk that cannot allocate ahead fills up halfway through an
// apply. The replica keeps serving what it had, and once the file can be
// written again it finishes the transaction from its own log and goes on:
// no snapshot, nothing moved aside.
func TestDisk_ReplicaApplyRedo(t *testing.T) {
	for _, mode := range diskModes {
		t.Run(mode, func(t *testing.T) {
			c := startCluster(t, 1, "")
			p, r := c.Primary, c.Replicas[0]
			mustSQLite3(t, p.Path("app.db"), fmt.Sprintf(`PRAGMA journal_mode=%s; CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);
				INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c');`, mode))
			c.WaitConverged(t, "app.db")
			before := r.Pos("app.db")

			dbFile := filepath.Join(r.DataDir, "dbs", "app.db", "database")
			if out, err := exec.Command("chattr", "+i", dbFile).CombinedOutput(); err != nil {
				t.Fatalf("chattr +i %s: %v: %s", dbFile, err, out)
			}
			immutable := true
			t.Cleanup(func() {
				if immutable {
					_ = exec.Command("chattr", "-i", dbFile).Run()
				}
			})
			// The database does not grow, so nothing is allocated ahead
			// and the failure comes after the file entered the log.
			mustSQLite3(t, p.Path("app.db"), "UPDATE t SET v = upper(v);")
			waitUntil(t, 30*time.Second, "the replica to fail writing its database", func() bool {
				return strings.Contains(r.Logs(), "operation not permitted")
			})
			if got := r.Pos("app.db"); got != before {
				t.Fatalf("replica position moved from %s to %s without its database", before, got)
			}
			if got := dump(t, r, "app.db", "SELECT group_concat(v) FROM t"); got != "a,b,c" {
				t.Fatalf("replica reads %q, want what it had (a,b,c)", got)
			}

			if out, err := exec.Command("chattr", "-i", dbFile).CombinedOutput(); err != nil {
				t.Fatalf("chattr -i %s: %v: %s", dbFile, err, out)
			}
			immutable = false
			c.WaitConverged(t, "app.db")
			if got := dump(t, r, "app.db", "SELECT group_concat(v) FROM t; PRAGMA integrity_check"); got != "A,B,C\nok" {
				t.Fatalf("replica reads %q", got)
			}
			if !strings.Contains(r.Logs(), "finishing the apply") {
				t.Errorf("the replica did not finish the transaction from its log:\n%s", r.Logs())
			}
			checkCaughtUpFromLog(t, p, r)
			mustSQLite3(t, p.Path("app.db"), "INSERT INTO t VALUES (4, 'd');")
			c.WaitConverged(t, "app.db")
		})
	}
}

// checkCaughtUpFromLog fails unless replica r holds one LTX file per
// transaction of primary p (no snapshot replaced them) and moved nothing
// aside.
func checkCaughtUpFromLog(t *testing.T, p, r *Node) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(r.DataDir, "dbs", "app.db", "ltx"))
	if err != nil {
		t.Fatal(err)
	}
	if txid := int(p.Pos("app.db").TXID); len(ents) != txid {
		t.Errorf("replica log holds %d files, want one per transaction (%d): a snapshot replaced them", len(ents), txid)
	}
	if _, err := os.Stat(filepath.Join(r.DataDir, "aside")); !os.IsNotExist(err) {
		t.Errorf("the replica moved data aside: %v", err)
	}
}
