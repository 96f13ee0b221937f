package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
)

// dbState is one state of a database read from its files, outside the
// mount: a live node's data directory or a copy kept under aside/.
type dbState struct {
	Dir  string
	Pos  ltx.Pos                        // where its log ends
	Sums map[ltx.TXID]checksum.Checksum // post-apply checksum of each LTX file, by its last TXID
	IDs  map[int]bool                   // ids in table t
}

// readDBState reads the database in dir (a dbs/<name> folder or an aside
// copy): its LTX files, and the ids of table t in the database as readers
// saw it (the file with the WAL's committed frames).
func readDBState(t testing.TB, dir string) dbState {
	t.Helper()
	st := dbState{Dir: dir, Sums: make(map[ltx.TXID]checksum.Checksum), IDs: make(map[int]bool)}
	ents, err := os.ReadDir(filepath.Join(dir, "ltx"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, ent := range ents {
		_, max, err := ltx.ParseFilename(ent.Name())
		if err != nil {
			continue // a temporary file
		}
		sum, err := ltx.ReadTrailer(filepath.Join(dir, "ltx", ent.Name()))
		if err != nil {
			t.Fatalf("ltx file in %s: %v", dir, err)
		}
		st.Sums[max] = sum
		if max > st.Pos.TXID {
			st.Pos = ltx.Pos{TXID: max, Checksum: sum}
		}
	}
	data := readLogicalDB(t, dir)
	if len(data) == 0 {
		return st
	}
	path := filepath.Join(t.TempDir(), "copy.db")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	out := mustSQLite3(t, path, "SELECT id FROM t ORDER BY id")
	for _, s := range strings.Fields(out) {
		id, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("id %q in %s", s, dir)
		}
		st.IDs[id] = true
	}
	return st
}

// asideStates returns the copies of db that node n keeps under
// data.dir/aside.
func asideStates(t testing.TB, n *Node, db string) []dbState {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(n.DataDir, "aside"))
	if os.IsNotExist(err) {
		return nil
	} else if err != nil {
		t.Fatal(err)
	}
	var a []dbState
	for _, ent := range ents {
		if ent.IsDir() && strings.HasPrefix(ent.Name(), db+".") {
			a = append(a, readDBState(t, filepath.Join(n.DataDir, "aside", ent.Name())))
		}
	}
	return a
}

// forkTXID returns the last TXID at which two histories of a database
// agree: the largest TXID for which both logs hold a file ending there with
// the same post-apply checksum (0 if none).
func forkTXID(a, b dbState) ltx.TXID {
	var fork ltx.TXID
	for txid, sum := range a.Sums {
		if other, ok := b.Sums[txid]; ok && other == sum && txid > fork {
			fork = txid
		}
	}
	return fork
}

var takeoverRe = regexp.MustCompile(`now the primary[^\n]*txids=map\[([^\]]*)\]`)

// takeoverTXID returns the TXID of db that node n had when it last became
// primary, from its log line saying so.
func takeoverTXID(t testing.TB, n *Node, db string) ltx.TXID {
	t.Helper()
	m := takeoverRe.FindAllStringSubmatch(n.Logs(), -1)
	if len(m) == 0 {
		t.Fatalf("%s never logged that it became the primary with its txids", n.Name)
	}
	for _, kv := range strings.Fields(m[len(m)-1][1]) {
		if name, v, ok := strings.Cut(kv, ":"); ok && name == db {
			txid, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatalf("txids in %q: %v", m[len(m)-1][0], err)
			}
			return ltx.TXID(txid)
		}
	}
	return 0 // the database did not exist there yet
}

// failoverReport says what a failover cost.
type failoverReport struct {
	Fork      ltx.TXID // the last transaction the old and the new primary share
	OldTXID   ltx.TXID // where the old primary's history ended (its aside copy)
	Aside     string   // the old primary's aside copy of its unreplicated tail; "" if it started cleanly
	Lost      []int    // acknowledged writes that no surviving node had received
	Preserved int      // acknowledged writes on the final primary
}

func (r failoverReport) String() string {
	if r.Aside == "" {
		return fmt.Sprintf("clean rejoin (no unreplicated tail); %d acknowledged writes all on the primary", r.Preserved)
	}
	return fmt.Sprintf("old primary kept TXIDs %d..%d aside (fork at %d) in %s; %d acknowledged writes no replica had received are lost: %v; %d acknowledged writes on the primary",
		r.Fork+1, r.OldTXID, r.Fork, filepath.Base(r.Aside), len(r.Lost), r.Lost[:min(len(r.Lost), 20)], r.Preserved)
}

// checkFailover checks, once the cluster has converged, what losing the
// primary old (crashed or cut off while a writer ran) may have cost with
// asynchronous replication, in every timing:
//
//   - either old rejoined cleanly and no acknowledged write is missing on
//     the final primary, or old kept exactly its unreplicated tail aside:
//     an aside copy whose history agrees with the primary's up to the
//     TXID the new primary had when it took over, and goes on past it;
//   - an acknowledged write missing on the final primary was acknowledged
//     by old, is in old's aside copy, and is newer than every write of
//     old's that survived (the tail, never a hole), and there are no more
//     of them than transactions in the tail;
//   - no other node kept an acknowledged write aside that is missing on
//     the primary: everything a replica had received survived.
//
// takeover is the node that was elected when old was lost.
func checkFailover(t testing.TB, c *ConsulCluster, old, takeover *Node, db string, acks []ack) failoverReport {
	t.Helper()
	p := c.WaitPrimary(t, 30*time.Second)
	var r failoverReport
	have := dumpIDs(t, p, db)
	var lost []int
	oldMaxKept := 0
	for _, a := range acks {
		switch {
		case !have[a.id]:
			lost = append(lost, a.id)
			if a.node != old.Name {
				t.Errorf("write %d acknowledged by %s, not by the lost primary %s, is missing on %s", a.id, a.node, old.Name, p.Name)
			}
		case a.node == old.Name:
			oldMaxKept = max(oldMaxKept, a.id)
		}
		if have[a.id] {
			r.Preserved++
		}
	}
	sort.Ints(lost)
	r.Lost = lost

	// Nothing another node had received is gone.
	for _, n := range c.Nodes {
		if n == old {
			continue
		}
		for _, st := range asideStates(t, n, db) {
			var gone []int
			for _, id := range lost {
				if st.IDs[id] {
					gone = append(gone, id)
				}
			}
			if len(gone) > 0 {
				t.Errorf("%s had received acknowledged writes %v but kept them aside in %s: the new primary was elected without them",
					n.Name, gone[:min(len(gone), 20)], st.Dir)
			}
		}
	}

	if logs := old.Logs(); strings.Contains(logs, "does not match its own log") || strings.Contains(logs, "rebuilt it from its own ltx files") {
		t.Errorf("%s's database did not match its own log after the failure; recovery must be exact", old.Name)
	}
	copies := asideStates(t, old, db)
	if len(copies) == 0 {
		if len(lost) > 0 {
			t.Errorf("%d acknowledged writes are missing on %s and %s kept nothing aside: %v", len(lost), p.Name, old.Name, lost[:min(len(lost), 20)])
		}
		return r
	}
	if len(copies) > 1 {
		t.Errorf("%s kept %d copies of %s aside, want one", old.Name, len(copies), db)
	}
	aside := copies[len(copies)-1]
	r.Aside, r.OldTXID = aside.Dir, aside.Pos.TXID
	if !strings.Contains(old.Logs(), aside.Dir) {
		t.Errorf("no log line of %s names its aside copy %s", old.Name, aside.Dir)
	}
	primary := readDBState(t, filepath.Join(p.DataDir, "dbs", db))
	r.Fork = forkTXID(aside, primary)
	if took := takeoverTXID(t, takeover, db); r.Fork != took {
		t.Errorf("%s's aside copy agrees with %s's history up to TXID %d, but %s took over at TXID %d",
			old.Name, p.Name, r.Fork, takeover.Name, took)
	}
	if aside.Pos.TXID <= r.Fork {
		t.Errorf("%s's aside copy ends at TXID %d, within the shared history (fork %d): nothing needed keeping aside", old.Name, aside.Pos.TXID, r.Fork)
	}
	if n := int(aside.Pos.TXID - r.Fork); len(lost) > n {
		t.Errorf("%d acknowledged writes lost, more than the %d transactions of the unreplicated tail", len(lost), n)
	}
	for _, id := range lost {
		if !aside.IDs[id] {
			t.Errorf("acknowledged write %d is missing on %s and not in %s's aside copy %s", id, p.Name, old.Name, aside.Dir)
		}
		if id < oldMaxKept {
			t.Errorf("acknowledged write %d of %s is lost but its later write %d survived: a hole, not a tail", id, old.Name, oldMaxKept)
		}
	}
	return r
}

// dumpIDs returns the ids in table t of db on node n, read through its
// mount.
func dumpIDs(t testing.TB, n *Node, db string) map[int]bool {
	t.Helper()
	have := make(map[int]bool)
	for _, s := range strings.Fields(dump(t, n, db, "SELECT id FROM t ORDER BY id")) {
		id, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("id %q on %s", s, n.Name)
		}
		have[id] = true
	}
	return have
}
