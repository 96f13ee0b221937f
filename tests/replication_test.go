package tests

import (
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gosqlite3 "github.com/mattn/go-sqlite3"

	"github.com/litefs-project/litefs/ltx"
)

// Cluster is a primary and replicas on the static lease, each its own
// litefs process with its own mount and data directory.
type Cluster struct {
	Primary  *Node
	Replicas []*Node
}

// startCluster starts a primary and n replicas following it; every node's
// invariants are checked when the test ends, after the replicas caught up.
func startCluster(t *testing.T, n int, retention string) *Cluster {
	t.Helper()
	c := &Cluster{Primary: NewNodeWith(t, NodeConfig{Name: "primary", Retention: retention})}
	c.Primary.Start()
	for i := 0; i < n; i++ {
		r := NewNodeWith(t, NodeConfig{Name: fmt.Sprintf("replica%d", i+1), Replica: true, PrimaryURL: c.Primary.URL(), Retention: retention})
		r.Start()
		c.Replicas = append(c.Replicas, r)
	}
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		for _, node := range c.Nodes() {
			if node.running() {
				node.CheckInvariants()
			}
		}
	})
	return c
}

// Nodes returns every node, the primary first.
func (c *Cluster) Nodes() []*Node { return append([]*Node{c.Primary}, c.Replicas...) }

// WaitConverged waits until every running replica has the primary's
// position for every database in the primary's mount.
func (c *Cluster) WaitConverged(t *testing.T, dbs ...string) {
	t.Helper()
	for _, r := range c.Replicas {
		if !r.running() {
			continue
		}
		for _, db := range dbs {
			want := c.Primary.Pos(db)
			waitUntil(t, 30*time.Second, fmt.Sprintf("%s to reach %s of %s", r.Name, want, db), func() bool {
				b, err := os.ReadFile(r.Path(db + "-pos"))
				return err == nil && strings.TrimSpace(string(b)) == want.String()
			})
		}
	}
}

// dump returns a table's rows in order, through the sqlite3 CLI.
func dump(t testing.TB, n *Node, db, query string) string {
	t.Helper()
	return mustSQLite3(t, n.Path(db), query)
}

func TestReplication_Converge(t *testing.T) {
	for _, mode := range journalModes {
		t.Run(mode, func(t *testing.T) {
			c := startCluster(t, 2, "")
			p := c.Primary.OpenDB("app.db", mode)
			p.SetMaxOpenConns(1)
			mustExec(t, p, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)`)
			rng := rand.New(rand.NewSource(time.Now().UnixNano()))
			for i := 0; i < 200; i++ {
				switch rng.Intn(4) {
				case 0, 1:
					mustExec(t, p, `INSERT INTO t (v, n) VALUES (hex(randomblob(?)), ?)`, 10+rng.Intn(2000), i)
				case 2:
					mustExec(t, p, `UPDATE t SET v = hex(randomblob(50)) WHERE id % 7 = ?`, rng.Intn(7))
				case 3:
					mustExec(t, p, `DELETE FROM t WHERE id % 11 = ?`, rng.Intn(11))
				}
			}
			// A second database, created and written while replicas follow.
			mustSQLite3(t, c.Primary.Path("other.db"), fmt.Sprintf("PRAGMA journal_mode=%s; CREATE TABLE o (x); INSERT INTO o VALUES (42);", mode))
			c.WaitConverged(t, "app.db", "other.db")
			const q = "SELECT id, v, n FROM t ORDER BY id"
			want := dump(t, c.Primary, "app.db", q)
			for _, r := range c.Replicas {
				if got := dump(t, r, "app.db", q); got != want {
					t.Errorf("%s: rows differ from the primary's", r.Name)
				}
				if got := dump(t, r, "other.db", "SELECT x FROM o; PRAGMA integrity_check"); got != "42\nok" {
					t.Errorf("%s: other.db %q", r.Name, got)
				}
			}
			// A deleted database goes away on replicas too.
			if err := os.Remove(c.Primary.Path("other.db")); err != nil {
				t.Fatal(err)
			}
			for _, r := range c.Replicas {
				waitUntil(t, 10*time.Second, r.Name+" to delete other.db", func() bool {
					_, err := os.Stat(r.Path("other.db"))
					return os.IsNotExist(err)
				})
				if _, err := os.Stat(filepath.Join(r.DataDir, "dbs", "other.db")); !os.IsNotExist(err) {
					t.Errorf("%s: other.db's directory is still there: %v", r.Name, err)
				}
			}
		})
	}
}

// TestReplication_Lag reads .lag: zero on a replica that has everything the
// primary last reported, growing while the primary is unreachable.
func TestReplication_Lag(t *testing.T) {
	c := startCluster(t, 1, "")
	r := c.Replicas[0]
	mustSQLite3(t, c.Primary.Path("app.db"), "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	c.WaitConverged(t, "app.db")
	waitUntil(t, 10*time.Second, ".lag to read 0", func() bool {
		return strings.TrimSpace(readFile(t, r.Path(".lag"))) == "0"
	})
	if _, err := os.Stat(c.Primary.Path(".lag")); !os.IsNotExist(err) {
		t.Errorf(".lag on the primary: %v", err)
	}
	c.Primary.Stop()
	waitUntil(t, 15*time.Second, ".lag to grow and .primary to go", func() bool {
		lag := strings.TrimSpace(readFile(t, r.Path(".lag")))
		_, err := os.Stat(r.Path(".primary"))
		return lag != "0" && os.IsNotExist(err)
	})
	// Reads go on from local data while the primary is away.
	if got := dump(t, r, "app.db", "SELECT x FROM t"); got != "1" {
		t.Fatalf("read on replica without primary: %q", got)
	}
	c.Primary.Start()
	c.WaitConverged(t, "app.db")
}

func TestReplication_ReadOnly(t *testing.T) {
	for _, mode := range journalModes {
		t.Run(mode, func(t *testing.T) {
			c := startCluster(t, 1, "")
			mustSQLite3(t, c.Primary.Path("app.db"), fmt.Sprintf("PRAGMA journal_mode=%s; CREATE TABLE t (x); INSERT INTO t VALUES (1);", mode))
			c.WaitConverged(t, "app.db")
			r := c.Replicas[0]
			before := r.Pos("app.db")

			out, err := sqlite3(t, r.Path("app.db"), "INSERT INTO t VALUES (2);")
			if err == nil || !strings.Contains(out, "attempt to write a readonly database") {
				t.Fatalf("sqlite3 write on replica: %v %q, want attempt to write a readonly database", err, out)
			}
			db := r.OpenDB("app.db", mode)
			_, err = db.Exec(`INSERT INTO t VALUES (3)`)
			var serr gosqlite3.Error
			if !errors.As(err, &serr) || serr.Code != gosqlite3.ErrReadonly {
				t.Fatalf("go-sqlite3 write on replica: %v, want SQLITE_READONLY", err)
			}
			if _, err := os.Create(r.Path("new.db")); err == nil {
				t.Fatal("created a database on a replica")
			}
			if got := r.Pos("app.db"); got != before {
				t.Fatalf("replica position moved: %v -> %v", before, got)
			}
			var n int
			if err := db.QueryRow(`SELECT count(*) FROM t`).Scan(&n); err != nil || n != 1 {
				t.Fatalf("read on replica: %d %v", n, err)
			}
			db.Close()
			if !strings.Contains(r.Logs(), "send writes to the primary") || !strings.Contains(r.Logs(), "primary=primary") {
				t.Errorf("replica log does not name the primary:\n%s", r.Logs())
			}
			if got := strings.TrimSpace(readFile(t, r.Path(".primary"))); got != "primary" {
				t.Errorf(".primary = %q", got)
			}
			if _, err := os.Stat(c.Primary.Path(".primary")); !os.IsNotExist(err) {
				t.Errorf(".primary on the primary: %v", err)
			}
		})
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestReplication_ReaderInvariant reads on a replica, in other processes,
// while the primary runs transfers: the total never changes.
func TestReplication_ReaderInvariant(t *testing.T) {
	if testing.Short() {
		t.Skip("load test: skipped in -short mode")
	}
	const accounts, balance = 20, 1000
	for _, mode := range journalModes {
		t.Run(mode, func(t *testing.T) {
			c := startCluster(t, 1, "")
			mustSQLite3(t, c.Primary.Path("bank.db"), fmt.Sprintf(`PRAGMA journal_mode=%s;
				CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
				CREATE TABLE ledger (id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER);
				WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM s WHERE i < %d)
				INSERT INTO accounts SELECT i, %d FROM s;`, mode, accounts-1, balance))
			c.WaitConverged(t, "bank.db")
			args := helperArgs{JournalMode: mode, Duration: 3 * time.Second, Accounts: accounts, Total: accounts * balance}
			w := args
			w.Path, w.Seed = c.Primary.Path("bank.db"), time.Now().UnixNano()
			t.Logf("seed=%d", w.Seed)
			writer, wout := startHelper(t, "bank-writer", w)
			rd := args
			rd.Path = c.Replicas[0].Path("bank.db")
			var readers []func() (string, error)
			for i := 0; i < 2; i++ {
				cmd, out := startHelper(t, "bank-reader", rd)
				readers = append(readers, func() (string, error) {
					var last string
					for out.Scan() {
						last = out.Text()
					}
					return last, cmd.Wait()
				})
			}
			for wout.Scan() {
				t.Logf("writer: %s", wout.Text())
			}
			if err := writer.Wait(); err != nil {
				t.Fatal(err)
			}
			for _, wait := range readers {
				last, err := wait()
				var reads, bad int
				if _, serr := fmt.Sscanf(last, "reads=%d bad=%d", &reads, &bad); err != nil || serr != nil {
					t.Fatalf("reader: %v %q", err, last)
				}
				t.Logf("replica reader: %s", last)
				if bad != 0 || reads == 0 {
					t.Errorf("replica reader: %d torn reads of %d", bad, reads)
				}
			}
			c.WaitConverged(t, "bank.db")
		})
	}
}

// TestReplication_ReplicaRestart stops a replica, writes, and starts it
// again: it resumes from its position using the primary's log.
func TestReplication_ReplicaRestart(t *testing.T) {
	c := startCluster(t, 1, "")
	path := c.Primary.Path("app.db")
	mustSQLite3(t, path, "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	c.WaitConverged(t, "app.db")
	r := c.Replicas[0]
	stopped := r.Pos("app.db").TXID
	r.Stop()
	for i := 2; i <= 20; i++ {
		mustSQLite3(t, path, fmt.Sprintf("INSERT INTO t VALUES (%d);", i))
	}
	r.Start()
	c.WaitConverged(t, "app.db")
	if got := dump(t, r, "app.db", "SELECT count(*), sum(x) FROM t"); got != "20|210" {
		t.Fatalf("replica: %q", got)
	}
	// It caught up through the log, not a snapshot: its own log has one
	// file per transaction since it stopped. (How it got its first
	// transactions depends on when it connected.)
	for txid := stopped + 1; txid <= c.Primary.Pos("app.db").TXID; txid++ {
		name := ltx.FormatFilename(txid, txid)
		if _, err := os.Stat(filepath.Join(r.DataDir, "dbs", "app.db", "ltx", name)); err != nil {
			t.Errorf("replica log: %v", err)
		}
	}
}

// TestReplication_PastRetention stops a replica for longer than the
// primary keeps LTX files: it catches up from a snapshot, keeping its old
// state aside (the primary cannot prove it was on its history).
func TestReplication_PastRetention(t *testing.T) {
	c := startCluster(t, 1, "200ms")
	path := c.Primary.Path("app.db")
	mustSQLite3(t, path, "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	c.WaitConverged(t, "app.db")
	r := c.Replicas[0]
	r.Stop()
	for i := 2; i <= 10; i++ {
		mustSQLite3(t, path, fmt.Sprintf("INSERT INTO t VALUES (%d);", i))
	}
	ltxDir := filepath.Join(c.Primary.DataDir, "dbs", "app.db", "ltx")
	waitUntil(t, 10*time.Second, "retention to remove old ltx files", func() bool {
		ents, _ := os.ReadDir(ltxDir)
		return len(ents) == 1
	})
	r.Start()
	c.WaitConverged(t, "app.db")
	if got := dump(t, r, "app.db", "SELECT count(*), sum(x) FROM t; PRAGMA integrity_check"); got != "10|55\nok" {
		t.Fatalf("replica: %q", got)
	}
	// The primary can no longer tell whether the replica's transactions
	// are its own, so the replica keeps its old state aside.
	if aside, _ := os.ReadDir(filepath.Join(r.DataDir, "aside")); len(aside) != 1 {
		t.Errorf("aside holds %d entries, want the replica's old state", len(aside))
	}
}

// TestReplication_PrimaryRestart restarts the primary: replicas reconnect
// and resume.
func TestReplication_PrimaryRestart(t *testing.T) {
	c := startCluster(t, 2, "")
	path := c.Primary.Path("app.db")
	mustSQLite3(t, path, "PRAGMA journal_mode=WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	c.WaitConverged(t, "app.db")
	c.Primary.Restart()
	for i := 2; i <= 10; i++ {
		mustSQLite3(t, path, fmt.Sprintf("INSERT INTO t VALUES (%d);", i))
	}
	c.WaitConverged(t, "app.db")
	for _, r := range c.Replicas {
		if got := dump(t, r, "app.db", "SELECT count(*) FROM t"); got != "10" {
			t.Fatalf("%s: %q", r.Name, got)
		}
	}
}

// TestReplication_Divergence gives a replica a history the primary does not
// have: a database changed behind its back while stopped, and a database
// ahead of the primary's. Each is moved aside, with a log line saying
// where, and replaced by the primary's.
func TestReplication_Divergence(t *testing.T) {
	c := startCluster(t, 1, "")
	r := c.Replicas[0]
	for _, db := range []string{"changed.db", "ahead.db"} {
		mustSQLite3(t, c.Primary.Path(db), "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
	}
	c.WaitConverged(t, "changed.db", "ahead.db")
	r.Stop()

	// ahead.db: the replica runs as a primary on its own for a while.
	r.WriteConfig(strings.Replace(readFile(t, r.ConfigPath), "candidate: false", "candidate: true", 1))
	r.Start()
	for i := 0; i < 5; i++ {
		mustSQLite3(t, r.Path("ahead.db"), "INSERT INTO t VALUES (99);")
	}
	r.Stop()
	r.WriteConfig(strings.Replace(readFile(t, r.ConfigPath), "candidate: true", "candidate: false", 1))

	// changed.db: the replica's file is changed behind its back.
	f, err := os.OpenFile(filepath.Join(r.DataDir, "dbs", "changed.db", "database"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("behind its back"), 4096+3000)
	f.Close()

	mustSQLite3(t, c.Primary.Path("ahead.db"), "INSERT INTO t VALUES (2);")
	r.Start()
	c.WaitConverged(t, "changed.db", "ahead.db")
	for _, db := range []string{"changed.db", "ahead.db"} {
		if got, want := dump(t, r, db, "SELECT group_concat(x) FROM t; PRAGMA integrity_check"), dump(t, c.Primary, db, "SELECT group_concat(x) FROM t; PRAGMA integrity_check"); got != want {
			t.Errorf("%s on replica %q, primary %q", db, got, want)
		}
	}
	aside, _ := os.ReadDir(filepath.Join(r.DataDir, "aside"))
	if len(aside) != 2 {
		t.Fatalf("aside folder holds %d entries, want 2 (one per diverged database)", len(aside))
	}
	for _, ent := range aside {
		dir := filepath.Join(r.DataDir, "aside", ent.Name())
		if _, err := os.Stat(filepath.Join(dir, "database")); err != nil {
			t.Errorf("aside copy %s has no database: %v", ent.Name(), err)
		}
		if !strings.Contains(r.Logs(), dir) {
			t.Errorf("no log line names %s", dir)
		}
	}
}

// faultProxy forwards TCP connections to a target; the first connection
// that carries more than after bytes from the target is damaged there: one
// byte flipped (corrupt) or the connection cut (truncate), or, with stall
// set, held there until stall is closed.
type faultProxy struct {
	ln      net.Listener
	target  string
	after   int64
	corrupt bool
	stall   chan struct{}
	done    atomic.Bool // the fault was injected
	refuse  atomic.Bool // close new connections at once
	// thenRefuse sets refuse once the fault is injected, so that the
	// client's state after the fault can be looked at.
	thenRefuse bool
	wg         sync.WaitGroup
}

func startFaultProxy(t *testing.T, target string, after int64, corrupt bool) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: target, after: after, corrupt: corrupt}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *faultProxy) URL() string { return "http://" + p.ln.Addr().String() }

func (p *faultProxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.refuse.Load() {
			in.Close()
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer in.Close()
			out, err := net.DialTimeout("tcp", p.target, 5*time.Second)
			if err != nil {
				return
			}
			defer out.Close()
			go io.Copy(out, in)
			p.copyFaulty(in, out)
		}()
	}
}

// copyFaulty copies the target's bytes to the client, injecting the fault
// once.
func (p *faultProxy) copyFaulty(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	var n int64
	for {
		m, err := src.Read(buf)
		if m > 0 {
			b := buf[:m]
			if !p.done.Load() && n+int64(m) > p.after {
				i := p.after - n
				if i < 0 {
					i = 0
				}
				if p.thenRefuse {
					p.refuse.Store(true)
				}
				if p.stall != nil {
					dst.Write(b[:i])
					p.done.Store(true)
					<-p.stall
					b = b[i:]
					n += i
					m -= int(i)
				} else if !p.corrupt {
					dst.Write(b[:i])
					p.done.Store(true)
					return // cut the stream mid-frame
				} else {
					b[i] ^= 0x5a
					p.done.Store(true)
				}
			}
			if _, err := dst.Write(b); err != nil {
				return
			}
			n += int64(m)
		}
		if err != nil {
			return
		}
	}
}

// TestReplication_FaultyStream damages the stream between the primary and
// a replica while a large transaction travels: the replica refuses what it
// received, reconnects, and converges undamaged.
func TestReplication_FaultyStream(t *testing.T) {
	for _, corrupt := range []bool{true, false} {
		name := map[bool]string{true: "Corrupt", false: "Truncated"}[corrupt]
		t.Run(name, func(t *testing.T) {
			primary := NewNodeWith(t, NodeConfig{Name: "primary"})
			primary.Start()
			mustSQLite3(t, primary.Path("app.db"), "CREATE TABLE t (x); INSERT INTO t VALUES (1);")
			proxy := startFaultProxy(t, primary.HTTPAddr, 200<<10, corrupt)
			r := NewNodeWith(t, NodeConfig{Name: "replica1", Replica: true, PrimaryURL: proxy.URL()})
			r.Start()
			c := &Cluster{Primary: primary, Replicas: []*Node{r}}
			c.WaitConverged(t, "app.db")
			// About 1 MB of pages: the fault lands inside this file.
			mustSQLite3(t, primary.Path("app.db"), "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 1000) INSERT INTO t SELECT randomblob(1000) FROM s;")
			c.WaitConverged(t, "app.db")
			if !proxy.done.Load() {
				t.Fatal("the fault was never injected; the test proves nothing")
			}
			if !strings.Contains(r.Logs(), "reconnecting") {
				t.Errorf("replica did not notice the damaged stream:\n%s", r.Logs())
			}
			if got := dump(t, r, "app.db", "SELECT count(*) FROM t; PRAGMA integrity_check"); got != "1001\nok" {
				t.Fatalf("replica: %q", got)
			}
			r.CheckInvariants()
			primary.CheckInvariants()
		})
	}
}
