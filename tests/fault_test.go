package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/litefs-project/litefs/internal/testconsul"
)

// Fault tests: a cluster on the Consul lease loses parts of its network
// or has its primary frozen, with real processes, real mounts and a real
// Consul agent, and must keep every promise it makes in every timing.

// netLab is a network made by the test: a bridge in the test's own network
// namespace, holding the Consul agent's address, and one network namespace
// per node joined to the bridge by a veth pair. Setting a node's veth down
// cuts it off from Consul and from the other nodes, while its mount, in
// the test's mount namespace, stays reachable.
type netLab struct {
	t      testing.TB
	tag    string // in every device and namespace name, so leftovers can be found
	prefix string // the subnet, "10.X.N."
	n      int
}

// newNetLab makes a lab of n namespaces on 10.X.subnet.0/24. Names and X
// derive from the tag and this process's ID, so that test runs side by
// side (in other checkouts) keep out of each other's way, and a crashed
// earlier run's leftovers with the same names are removed first;
// everything is removed at the end of the test.
func newNetLab(t testing.TB, tag string, subnet, n int) *netLab {
	t.Helper()
	run := os.Getpid() % 150
	l := &netLab{t: t, tag: fmt.Sprintf("%s%02x", tag, run), prefix: fmt.Sprintf("10.%d.%d.", 100+run, subnet), n: n}
	l.clean()
	t.Cleanup(l.clean)
	l.ip("link", "add", l.bridge(), "type", "bridge")
	l.ip("addr", "add", l.HostIP()+"/24", "dev", l.bridge())
	l.ip("link", "set", l.bridge(), "up")
	for i := 0; i < n; i++ {
		l.ip("netns", "add", l.NS(i))
		l.ip("link", "add", l.veth(i), "type", "veth", "peer", "name", "eth0", "netns", l.NS(i))
		l.ip("link", "set", l.veth(i), "master", l.bridge(), "up")
		l.ip("-n", l.NS(i), "addr", "add", l.IP(i)+"/24", "dev", "eth0")
		l.ip("-n", l.NS(i), "link", "set", "eth0", "up")
		l.ip("-n", l.NS(i), "link", "set", "lo", "up")
	}
	return l
}

func (l *netLab) bridge() string    { return "lfs-" + l.tag + "-br" }
func (l *netLab) veth(i int) string { return fmt.Sprintf("lfs-%s-v%d", l.tag, i) }

// NS returns the name of node i's network namespace.
func (l *netLab) NS(i int) string { return fmt.Sprintf("lfs-%s-%d", l.tag, i) }

// HostIP returns the bridge's address, in the test's namespace.
func (l *netLab) HostIP() string { return l.prefix + "1" }

// IP returns node i's address, in its namespace.
func (l *netLab) IP(i int) string { return l.prefix + strconv.Itoa(11+i) }

// Cut takes node i off the network: its veth on the bridge goes down.
func (l *netLab) Cut(i int) { l.ip("link", "set", l.veth(i), "down") }

// Heal puts node i back on the network.
func (l *netLab) Heal(i int) { l.ip("link", "set", l.veth(i), "up") }

func (l *netLab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// clean removes the lab's namespaces (and with them the veth pairs) and
// bridge, whatever is left of them.
func (l *netLab) clean() {
	for i := 0; i < l.n; i++ {
		_ = exec.Command("ip", "netns", "del", l.NS(i)).Run()
		_ = exec.Command("ip", "link", "del", l.veth(i)).Run()
	}
	_ = exec.Command("ip", "link", "del", l.bridge()).Run()
}

// startLabCluster starts a Consul agent on the lab's bridge and a
// candidate in each of its namespaces, serving its API on its own address;
// opts change each node's configuration.
func startLabCluster(t testing.TB, l *netLab, opts ...func(*NodeConfig)) *ConsulCluster {
	t.Helper()
	c := &ConsulCluster{Consul: testconsul.StartOn(t, l.HostIP())}
	for i := 0; i < l.n; i++ {
		cfg := c.nodeConfig(fmt.Sprintf("node%d", i+1))
		cfg.HTTPAddr, cfg.NetNS = l.IP(i)+":20202", l.NS(i)
		for _, o := range opts {
			o(&cfg)
		}
		c.Nodes = append(c.Nodes, NewNodeWith(t, cfg))
	}
	c.start(t)
	for _, n := range c.Nodes {
		if !isMounted(n.MountDir) {
			t.Fatalf("%s's mount is not visible from the test's mount namespace", n.Name)
		}
	}
	return c
}

// attempt is one write of a faultWriter: its id, and whether its COMMIT
// returned success.
type attempt struct {
	id         int
	ok         bool
	start, end time.Time
	err        string
}

// faultWriter is a separate process writing to one node's mount through
// go-sqlite3, never giving up, reporting every attempt.
type faultWriter struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser

	mu       sync.Mutex
	attempts []attempt
	done     chan struct{}
}

func startFaultWriter(t testing.TB, path, mode string) *faultWriter {
	t.Helper()
	b, _ := json.Marshal(helperArgs{Path: path, JournalMode: mode, Duration: time.Minute})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=fault-writer", helperArgsEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &faultWriter{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go w.read(out)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-w.done
		_ = cmd.Wait()
	})
	return w
}

func (w *faultWriter) read(out io.Reader) {
	defer close(w.done)
	s := bufio.NewScanner(out)
	for s.Scan() {
		f := strings.SplitN(s.Text(), " ", 5)
		if len(f) < 4 {
			continue
		}
		id, _ := strconv.Atoi(f[1])
		start, _ := strconv.ParseInt(f[2], 10, 64)
		end, _ := strconv.ParseInt(f[3], 10, 64)
		a := attempt{id: id, ok: f[0] == "ok", start: time.Unix(0, start), end: time.Unix(0, end)}
		if len(f) == 5 {
			a.err = f[4]
		}
		w.mu.Lock()
		w.attempts = append(w.attempts, a)
		w.mu.Unlock()
	}
}

// Attempts returns the attempts reported so far.
func (w *faultWriter) Attempts() []attempt {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]attempt(nil), w.attempts...)
}

// count returns how many reported attempts satisfy f.
func (w *faultWriter) count(f func(attempt) bool) int {
	n := 0
	for _, a := range w.Attempts() {
		if f(a) {
			n++
		}
	}
	return n
}

// Stop asks the writer to stop after its current attempt and waits for
// every report.
func (w *faultWriter) Stop(t testing.TB) {
	t.Helper()
	_ = w.stdin.Close()
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the writer did not stop within 30s")
	}
}

// waitAcks waits until n more writes than now are acknowledged.
func (w *faultWriter) waitAcks(t testing.TB, n int) {
	t.Helper()
	ok := func(a attempt) bool { return a.ok }
	before := w.count(ok)
	waitUntil(t, 20*time.Second, fmt.Sprintf("%d more acknowledged writes", n), func() bool { return w.count(ok) >= before+n })
}

// acks returns the writer's acknowledged writes, as made on node.
func (w *faultWriter) acks(node string) []ack {
	var a []ack
	for _, at := range w.Attempts() {
		if at.ok {
			a = append(a, ack{id: at.id, node: node, at: at.end})
		}
	}
	return a
}

// Errors a writer may see from a node that is not, or no longer safely,
// the primary.
const (
	// errReadOnly is SQLITE_READONLY: the answer of a replica.
	errReadOnly = "attempt to write a readonly database"
	// errRefused is how SQLite reports a write litefs refused with EROFS
	// through a descriptor opened for writing: an I/O error.
	errRefused = "disk I/O error: read-only file system"
)

// movedAsideTime returns when n moved a database aside, zero if it did not.
func movedAsideTime(t testing.TB, n *Node) time.Time {
	t.Helper()
	if !strings.Contains(n.Logs(), "database moved aside") {
		return time.Time{}
	}
	return logTime(t, n, "database moved aside")
}

// logTime returns the time of n's first log line containing s.
func logTime(t testing.TB, n *Node, s string) time.Time {
	t.Helper()
	for _, line := range strings.Split(n.Logs(), "\n") {
		if !strings.Contains(line, s) {
			continue
		}
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], "time=") {
			at, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(f[0], "time="))
			if err != nil {
				t.Fatalf("time of %q: %v", line, err)
			}
			return at
		}
	}
	t.Fatalf("%s never logged %q", n.Name, s)
	return time.Time{}
}

// checkRefusals checks how the writer's attempts failed on a primary that
// lost its lease (fenced) and stepped down at steppedDown:
//
//   - SQLITE_READONLY is always right;
//   - until the step-down is done, a commit refused while the node was
//     fenced, or while it was stepping down, fails with an error SQLite
//     derived from EROFS ("read-only file system"): SQLite had its journal
//     or WAL open for writing, and reports a failed write or open as an
//     I/O error or "unable to open";
//   - after the step-down, in rollback mode, every attempt must fail with
//     SQLITE_READONLY (the journal cannot be created); in WAL mode a
//     connection opened while the node was the primary still writes its
//     WAL through its descriptor, so it gets the EROFS I/O error (SQLite
//     has no way to hear "read-only" there); new connections get
//     SQLITE_READONLY;
//   - anything else (a bad descriptor, a corrupt database) is wrong.
//
// A connection whose database was moved aside on the node (its history
// differed from the new primary's) gets an I/O error: its file is gone,
// and a new connection sees the database the primary sent.
func checkRefusals(t testing.TB, mode string, attempts []attempt, steppedDown, movedAside time.Time) {
	t.Helper()
	for _, a := range attempts {
		during := !a.start.After(steppedDown.Add(time.Millisecond)) // log times are in ms
		replaced := !movedAside.IsZero() && !a.start.Before(movedAside.Add(-time.Millisecond))
		switch {
		case a.ok || a.err == errReadOnly:
		case during && strings.HasSuffix(a.err, ": read-only file system"):
		case mode == "wal" && a.err == errRefused:
		case replaced && strings.HasPrefix(a.err, "disk I/O error"):
		default:
			t.Errorf("write %d (begun %s after the step-down) failed with %q; want %q, or an EROFS error while stepping down",
				a.id, a.start.Sub(steppedDown), a.err, errReadOnly)
		}
	}
}

// checkFailedNowhere fails the test if a write the writer saw fail exists
// on any node or in any node's aside copies: a refused commit must leave
// nothing behind.
func checkFailedNowhere(t testing.TB, c *ConsulCluster, db string, attempts []attempt) {
	t.Helper()
	failed := make(map[int]bool)
	for _, a := range attempts {
		if !a.ok {
			failed[a.id] = true
		}
	}
	for _, n := range c.Nodes {
		states := []map[int]bool{dumpIDs(t, n, db)}
		where := []string{n.Name}
		for _, st := range asideStates(t, n, db) {
			states, where = append(states, st.IDs), append(where, st.Dir)
		}
		for i, ids := range states {
			for id := range ids {
				if failed[id] {
					t.Errorf("write %d failed for the writer but exists on %s", id, where[i])
				}
			}
		}
	}
}

// errorKinds summarises the writer's errors for the log.
func errorKinds(attempts []attempt) map[string]int {
	m := make(map[string]int)
	for _, a := range attempts {
		if !a.ok {
			m[a.err]++
		}
	}
	return m
}

// readLag reads a replica's .lag file, in milliseconds.
func readLag(t testing.TB, n *Node) int {
	t.Helper()
	b, err := os.ReadFile(n.Path(".lag"))
	if err != nil {
		t.Fatalf("%s/.lag: %v", n.Name, err)
	}
	lag, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("%s/.lag = %q", n.Name, b)
	}
	return lag
}

func nodeIndex(c *ConsulCluster, n *Node) int {
	for i, m := range c.Nodes {
		if m == n {
			return i
		}
	}
	panic("node not in cluster")
}

// primaryAmong returns the one node of nodes that says it is primary, or
// nil; two at once fail the test.
func primaryAmong(t testing.TB, nodes []*Node) *Node {
	t.Helper()
	var p *Node
	for _, n := range nodes {
		if info, err := getAPIInfo(n); err == nil && info.Primary {
			if p != nil {
				t.Fatalf("two primaries at once: %s and %s", p.Name, n.Name)
			}
			p = n
		}
	}
	return p
}

// TestFault_PartitionPrimary cuts the primary off from Consul and from the
// replicas while a writer on its own host keeps writing to it:
//
//   - it stops acknowledging writes before its lease could expire (no
//     COMMIT returns TTL after the cut, which is after its last renewal);
//   - the other side elects a new primary, which takes writes;
//   - a write the old primary refused exists nowhere, and the writes it
//     acknowledged after the cut reached no one;
//   - healed, it rejoins as a replica of the new primary, converges with
//     its data, and keeps its unreplicated tail aside.
//
// It runs in rollback (DELETE) and in WAL mode.
func TestFault_PartitionPrimary(t *testing.T) {
	for _, mode := range []string{"delete", "wal"} {
		t.Run(mode, func(t *testing.T) { testPartitionPrimary(t, mode) })
	}
}

func testPartitionPrimary(t *testing.T, mode string) {
	lab := newNetLab(t, "pp", 0, 3)
	c := startLabCluster(t, lab)
	p := c.WaitPrimary(t, time.Second)
	mustSQLite3(t, p.Path("db"), "PRAGMA journal_mode="+mode+"; CREATE TABLE t(id INTEGER PRIMARY KEY, node TEXT, pad BLOB);")
	w := startFaultWriter(t, p.Path("db"), mode)
	waitUntil(t, 10*time.Second, "30 acknowledged writes", func() bool { return w.count(func(a attempt) bool { return a.ok }) >= 30 })

	lab.Cut(nodeIndex(c, p))
	cut := time.Now() // the last renewal that got through was sent before
	var others []*Node
	for _, n := range c.Nodes {
		if n != p {
			others = append(others, n)
		}
	}
	var np *Node
	waitUntil(t, 20*time.Second, "a primary on the other side", func() bool {
		np = primaryAmong(t, others)
		return np != nil
	})
	elected := time.Since(cut)
	// The cut-off primary has stepped down by itself, and refuses writes.
	waitUntil(t, 10*time.Second, p.Name+" to step down", func() bool {
		return strings.Contains(p.Logs(), "this node is now a replica")
	})
	waitUntil(t, 10*time.Second, "refused writes on "+p.Name, func() bool {
		return w.count(func(a attempt) bool { return !a.ok && a.start.After(cut) }) >= 3
	})
	// It serves reads from its own data meanwhile.
	if out, err := sqlite3(t, p.Path("db"), "SELECT count(*) > 0 FROM t"); err != nil || out != "1" {
		t.Errorf("read on the cut-off %s: %v %s", p.Name, err, out)
	}
	// The new primary takes writes: its history now differs from the old
	// primary's tail, if it has one.
	for i := 1; i <= 3; i++ {
		mustSQLite3(t, np.Path("db"), fmt.Sprintf("INSERT INTO t(id, node) VALUES (%d, '%s')", 1000000+i, np.Name))
	}

	lab.Heal(nodeIndex(c, p))
	c.WaitConverged(t, "db")
	waitUntil(t, 10*time.Second, p.Name+" to follow "+np.Name, func() bool {
		b, err := os.ReadFile(p.Path(".primary"))
		return err == nil && strings.TrimSpace(string(b)) == np.Name
	})
	// After it healed, the old primary (a replica now) still refuses
	// writes, with SQLite's read-only error.
	healed := time.Now()
	waitUntil(t, 10*time.Second, "writes tried after the partition healed", func() bool {
		return w.count(func(a attempt) bool { return a.start.After(healed) }) >= 3
	})
	w.Stop(t)
	attempts := w.Attempts()

	var lastAck time.Time
	afterCut := 0 // writes begun after the cut and acknowledged: they reached no one
	for _, a := range attempts {
		if a.ok && a.end.After(lastAck) {
			lastAck = a.end
		}
		if a.ok && a.start.After(cut) {
			afterCut++
		}
		if a.ok && !a.end.Before(cut.Add(testTTL)) {
			t.Errorf("write %d was acknowledged %s after the cut, past the TTL %s: the primary's last renewal was before the cut",
				a.id, a.end.Sub(cut), testTTL)
		}
	}
	checkRefusals(t, mode, attempts, logTime(t, p, "this node is now a replica"), movedAsideTime(t, p))
	// A new connection on the old primary gets SQLite's read-only error.
	if out, err := sqlite3(t, p.Path("db"), "INSERT INTO t(id) VALUES (2000000)"); err == nil || !strings.Contains(out, errReadOnly) {
		t.Errorf("write through a new connection on %s after it stepped down: %v %s", p.Name, err, out)
	}
	for _, id := range []int{1000001, 1000002, 1000003} {
		if !dumpIDs(t, p, "db")[id] {
			t.Errorf("%s lacks the new primary's write %d", p.Name, id)
		}
	}
	checkFailedNowhere(t, c, "db", attempts)
	rep := checkFailover(t, c, p, np, "db", w.acks(p.Name))
	t.Logf("partition of primary %s (%s): %s elected %s after the cut; last write acknowledged %s after the cut (TTL %s); errors: %v",
		p.Name, mode, np.Name, elected.Round(time.Millisecond), lastAck.Sub(cut).Round(time.Millisecond), testTTL, errorKinds(attempts))
	t.Logf("partition of primary %s: %s", p.Name, rep)
	if rep.Aside == "" && afterCut > 0 {
		t.Errorf("%s acknowledged %d writes begun after the cut, which reached no one, but kept no tail aside", p.Name, afterCut)
	}
}

// TestFault_PartitionReplica cuts a replica off from the primary and from
// Consul while the primary takes writes: the replica keeps serving reads
// from its own data, its .lag grows, and once healed it catches up with
// the primary and .lag returns to 0.
func TestFault_PartitionReplica(t *testing.T) {
	lab := newNetLab(t, "pr", 1, 3)
	c := startLabCluster(t, lab)
	p := c.WaitPrimary(t, time.Second)
	mustSQLite3(t, p.Path("db"), "CREATE TABLE t(id INTEGER PRIMARY KEY, node TEXT, pad BLOB);")
	w := startFaultWriter(t, p.Path("db"), "delete")
	waitUntil(t, 10*time.Second, "20 acknowledged writes", func() bool { return w.count(func(a attempt) bool { return a.ok }) >= 20 })
	var r *Node
	for _, n := range c.Nodes {
		if n != p {
			r = n
		}
	}
	waitUntil(t, 10*time.Second, r.Name+" to catch up", func() bool { return readLag(t, r) == 0 && len(dumpIDs(t, r, "db")) >= 20 })

	cut := time.Now()
	lab.Cut(nodeIndex(c, r))
	// .lag grows once the replica notices it hears nothing from the
	// primary; reads go on meanwhile.
	reads := 0
	waitUntil(t, 20*time.Second, r.Name+"'s .lag to grow past 1s", func() bool {
		if out, err := sqlite3(t, r.Path("db"), "SELECT count(*) FROM t"); err != nil {
			t.Fatalf("read on the cut-off replica %s: %v %s", r.Name, err, out)
		}
		reads++
		return readLag(t, r) > 1000
	})
	lag1 := readLag(t, r)
	waitUntil(t, 5*time.Second, r.Name+"'s .lag to keep growing", func() bool { return readLag(t, r) >= lag1+200 })
	noticed := time.Since(cut)
	if primaryAmong(t, c.Nodes) != p {
		t.Fatalf("%s is no longer the primary while a replica was cut off", p.Name)
	}
	cutCount := len(dumpIDs(t, r, "db"))
	if pc := len(dumpIDs(t, p, "db")); cutCount >= pc {
		t.Errorf("the cut-off replica has %d rows, the primary %d: the partition did not hold", cutCount, pc)
	}

	lab.Heal(nodeIndex(c, r))
	healed := time.Now()
	waitUntil(t, 30*time.Second, r.Name+" to be connected again", func() bool {
		b, err := os.ReadFile(r.Path(".primary"))
		return err == nil && strings.TrimSpace(string(b)) == p.Name && readLag(t, r) == 0
	})
	// The writer goes on a little after the heal, then stops, so that
	// catching up has a fixed target.
	w.waitAcks(t, 20)
	w.Stop(t)
	waitUntil(t, 30*time.Second, r.Name+" to catch up after the partition healed", func() bool {
		return readLag(t, r) == 0 && r.Pos("db") == p.Pos("db")
	})
	caughtUp := time.Since(healed)
	c.WaitConverged(t, "db")
	// A replica coming back changes nothing for the primary.
	if got := c.WaitPrimary(t, time.Second); got != p {
		t.Errorf("the primary is %s after %s came back, not %s", got.Name, r.Name, p.Name)
	}
	if strings.Contains(p.Logs(), "now a replica") {
		t.Errorf("%s stepped down while only a replica was cut off", p.Name)
	}
	if lag := readLag(t, r); lag != 0 {
		t.Errorf("%s/.lag = %d after catching up", r.Name, lag)
	}
	checkNoneLost(t, p, "db", w.acks(p.Name))
	checkNoneLost(t, r, "db", w.acks(p.Name))
	for _, n := range c.Nodes {
		if copies := asideStates(t, n, "db"); len(copies) > 0 {
			t.Errorf("%s kept %s aside; nothing diverged", n.Name, copies[0].Dir)
		}
	}
	t.Logf("partition of replica %s: %d reads served while cut off (%d rows, primary went on); .lag past 1s and growing %s after the cut (%d ms); caught up %s after healing",
		r.Name, reads, cutCount, noticed.Round(time.Millisecond), lag1, caughtUp.Round(time.Millisecond))
}

// TestFault_PausedPrimary freezes the primary's litefs process (SIGSTOP)
// for twice the TTL while a writer keeps writing to it, then lets it go on
// (SIGCONT): a new primary is elected meanwhile, and the old one must
// acknowledge nothing after it resumes unless it still holds the lease.
// It runs in rollback (DELETE) and in WAL mode.
func TestFault_PausedPrimary(t *testing.T) {
	for _, mode := range []string{"delete", "wal"} {
		t.Run(mode, func(t *testing.T) { testPausedPrimary(t, mode) })
	}
}

func testPausedPrimary(t *testing.T, mode string) {
	c := startConsulCluster(t, 3)
	p := c.WaitPrimary(t, time.Second)
	mustSQLite3(t, p.Path("db"), "PRAGMA journal_mode="+mode+"; CREATE TABLE t(id INTEGER PRIMARY KEY, node TEXT, pad BLOB);")
	w := startFaultWriter(t, p.Path("db"), mode)
	waitUntil(t, 10*time.Second, "30 acknowledged writes", func() bool { return w.count(func(a attempt) bool { return a.ok }) >= 30 })
	// The scenario is a primary paused under load with its replicas
	// following: they must have the database first.
	for _, n := range c.Nodes {
		if n != p {
			waitUntil(t, 10*time.Second, n.Name+" to receive the database", func() bool {
				_, err := os.Stat(n.Path("db-pos"))
				return err == nil
			})
		}
	}

	pid := p.cmd.Process.Pid
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	stopped := time.Now()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var others []*Node
	for _, n := range c.Nodes {
		if n != p {
			others = append(others, n)
		}
	}
	var np *Node
	// litefs promises a new primary within TTL + lock delay + 1s (3.5 s),
	// so before the pause ends.
	waitUntil(t, 2*testTTL, "a primary among the others while it is paused (TTL + lock delay + 1s = 3.5s)", func() bool {
		np = primaryAmong(t, others)
		return np != nil
	})
	elected := time.Since(stopped)
	time.Sleep(time.Until(stopped.Add(2 * testTTL))) // the pause lasts 2×TTL: the scenario, not a wait
	resumed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// It finds its lease gone and steps down.
	waitUntil(t, 10*time.Second, p.Name+" to step down", func() bool {
		info, err := getAPIInfo(p)
		return err == nil && !info.Primary
	})
	steppedDown := time.Since(resumed)
	waitUntil(t, 10*time.Second, "writes tried after the resume", func() bool {
		return w.count(func(a attempt) bool { return a.start.After(resumed) }) >= 10
	})
	w.Stop(t)
	attempts := w.Attempts()
	if got := c.WaitPrimary(t, 10*time.Second); got != np {
		t.Errorf("the primary is %s, not %s elected during the pause", got.Name, np.Name)
	}
	c.WaitConverged(t, "db")

	final := dumpIDs(t, np, "db")
	// A commit logged before the pause whose reply reached SQLite after it
	// was decided while the lease held: the pause fell between its last
	// check and the reply, a window no check in the process can close
	// (only storage that fences writes could). It is then the unreplicated
	// tail that checkFailover accounts for. A commit logged after the
	// resume would be a fencing bug.
	loggedAfter := ltxWrittenAfter(t, p, "db", stopped) // nothing is written while it is stopped
	inFlight := 0
	for _, a := range attempts {
		switch {
		case a.ok && a.end.After(resumed) && !final[a.id] && (a.start.After(stopped) || len(loggedAfter) > 0):
			t.Errorf("write %d was acknowledged %s after %s resumed, without the lease (it began %s before the pause), and is not on the primary %s; ltx files logged after the resume: %v",
				a.id, a.end.Sub(resumed), p.Name, stopped.Sub(a.start), np.Name, loggedAfter)
		case a.ok && a.end.After(resumed) && !final[a.id]:
			t.Logf("write %d was logged before the pause and its reply came %s after the resume: the tail of an asynchronous primary", a.id, a.end.Sub(resumed))
		case a.start.After(resumed) && a.ok:
			t.Errorf("write %d, begun after %s resumed without the lease, was acknowledged", a.id, p.Name)
		case a.start.Before(stopped) && a.end.After(resumed):
			inFlight++
		}
	}
	checkRefusals(t, mode, attempts, logTime(t, p, "this node is now a replica"), movedAsideTime(t, p))
	checkFailedNowhere(t, c, "db", attempts)
	rep := checkFailover(t, c, p, np, "db", w.acks(p.Name))
	t.Logf("paused primary %s (%s) for %s: %s elected %s after the pause began; %s stepped down %s after resuming; %d writes in flight across the pause; errors: %v",
		p.Name, mode, 2*testTTL, np.Name, elected.Round(time.Millisecond), p.Name, steppedDown.Round(time.Millisecond), inFlight, errorKinds(attempts))
	t.Logf("paused primary %s: %s", p.Name, rep)
}

// ltxWrittenAfter returns the LTX files of db that n kept aside (its own
// history past the fork; its live log holds what it received since) and
// wrote after t.
func ltxWrittenAfter(tb testing.TB, n *Node, db string, t time.Time) []string {
	tb.Helper()
	dirs, err := filepath.Glob(filepath.Join(n.DataDir, "aside", db+".*", "ltx"))
	if err != nil {
		tb.Fatal(err)
	}
	var a []string
	for _, dir := range dirs {
		ents, _ := os.ReadDir(dir)
		for _, ent := range ents {
			if fi, err := ent.Info(); err == nil && fi.ModTime().After(t) {
				a = append(a, filepath.Join(dir, ent.Name()))
			}
		}
	}
	return a
}
