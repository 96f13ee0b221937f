package tests

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestMount_Concurrent runs writer and reader processes on one database:
// transfers between accounts keep the total constant, readers must never
// see another total, and every COMMIT that returned is in the ledger.
func TestMount_Concurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("concurrency load: skipped in -short mode")
	}
	const accounts, balance = 20, 1000
	for _, mode := range journalModes {
		t.Run(mode, func(t *testing.T) {
			n := startNode(t)
			path := n.Path("bank.db")
			mustSQLite3(t, path, fmt.Sprintf(`PRAGMA journal_mode=%s;
				CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
				CREATE TABLE ledger (id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER);
				WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM s WHERE i < %d)
				INSERT INTO accounts SELECT i, %d FROM s;`, mode, accounts-1, balance))

			setup := n.Pos("bank.db").TXID
			seed := time.Now().UnixNano()
			t.Logf("seed=%d", seed)
			args := helperArgs{Path: path, JournalMode: mode, Duration: 3 * time.Second,
				Accounts: accounts, Total: accounts * balance}
			type proc struct {
				name string
				out  func() string
				wait func() error
			}
			var procs []proc
			for i, role := range []string{"bank-writer", "bank-writer", "bank-writer", "bank-reader", "bank-reader"} {
				a := args
				a.Seed = seed + int64(i)
				cmd, out := startHelper(t, role, a)
				procs = append(procs, proc{name: role, out: func() string {
					var last string
					for out.Scan() {
						last = out.Text()
					}
					return last
				}, wait: cmd.Wait})
			}
			// A sqlite3 CLI process writes too: a script of transfers, each
			// its own transaction; -bail stops it at the first failure.
			var script strings.Builder
			rng := rand.New(rand.NewSource(seed))
			const cliTransfers = 100
			for i := 0; i < cliTransfers; i++ {
				from, to, amt := rng.Intn(accounts), rng.Intn(accounts), rng.Intn(100)
				fmt.Fprintf(&script, "BEGIN IMMEDIATE; UPDATE accounts SET balance = balance - %d WHERE id = %d; UPDATE accounts SET balance = balance + %d WHERE id = %d; INSERT INTO ledger (src, dst, amount) VALUES (%d, %d, %d); COMMIT;\n",
					amt, from, amt, to, from, to, amt)
			}
			cliOut, cliErr := sqlite3(t, path, fmt.Sprintf("PRAGMA journal_mode=%s;\n%s", mode, script.String()))
			if cliErr != nil {
				t.Fatalf("sqlite3 writer: %v: %s", cliErr, cliOut)
			}

			commits := cliTransfers
			for _, p := range procs {
				last := p.out()
				if err := p.wait(); err != nil {
					t.Fatalf("%s: %v (last output %q)", p.name, err, last)
				}
				t.Logf("%s: %s", p.name, last)
				switch p.name {
				case "bank-writer":
					var c, busy int
					if _, err := fmt.Sscanf(last, "commits=%d busy=%d", &c, &busy); err != nil {
						t.Fatalf("writer output %q", last)
					}
					commits += c
				case "bank-reader":
					var reads, bad int
					if _, err := fmt.Sscanf(last, "reads=%d bad=%d", &reads, &bad); err != nil {
						t.Fatalf("reader output %q", last)
					}
					if bad != 0 || reads == 0 {
						t.Errorf("reader: %d torn reads of %d", bad, reads)
					}
				}
			}
			got := mustSQLite3(t, path, "SELECT count(*), (SELECT sum(balance) FROM accounts) FROM ledger; PRAGMA integrity_check")
			if want := fmt.Sprintf("%d|%d\nok", commits, accounts*balance); got != want {
				t.Fatalf("ledger rows|total = %q, want %q", got, want)
			}
			// One LTX file per transaction: the setup, then each transfer.
			if pos := n.Pos("bank.db"); int(pos.TXID) != int(setup)+commits {
				t.Errorf("txid %d, want %d (setup %d + %d transfers)", pos.TXID, int(setup)+commits, setup, commits)
			}
		})
	}
}

// TestMount_Crash kills litefs with SIGKILL during a write load, restarts
// it on the stale mount, and checks that the database is intact, every
// acknowledged commit is present and the position matches the file.
func TestMount_Crash(t *testing.T) {
	rounds := 3
	if testing.Short() {
		rounds = 1
	}
	for _, mode := range journalModes {
		t.Run(mode, func(t *testing.T) {
			n := startNode(t)
			path := n.Path("app.db")
			mustSQLite3(t, path, fmt.Sprintf("PRAGMA journal_mode=%s; CREATE TABLE acked (id INTEGER PRIMARY KEY, payload TEXT);", mode))
			rng := rand.New(rand.NewSource(time.Now().UnixNano()))
			acked := 0
			for round := 0; round < rounds; round++ {
				_, out := startHelper(t, "acked-writer", helperArgs{Path: path, JournalMode: mode, Duration: 10 * time.Second})
				// Let it write a random while, then kill litefs under it.
				var last int
				stopAfter := 20 + rng.Intn(200)
				for i := 0; i < stopAfter && out.Scan(); i++ {
					last, _ = strconv.Atoi(out.Text())
				}
				n.Kill()
				for out.Scan() { // acknowledged before the kill landed
					last, _ = strconv.Atoi(out.Text())
				}
				acked = last
				t.Logf("round %d: killed litefs after %d acknowledged commits", round, acked)

				n.Start() // on the stale mount
				got := mustSQLite3(t, path, "PRAGMA integrity_check; SELECT count(*) FROM acked WHERE id <= "+strconv.Itoa(acked))
				if want := "ok\n" + strconv.Itoa(acked); got != want {
					t.Fatalf("after crash: %q, want %q\n%s", got, want, n.Logs())
				}
				n.CheckInvariants()
				// Start over for the next round from a clean table.
				mustSQLite3(t, path, fmt.Sprintf("PRAGMA journal_mode=%s; DELETE FROM acked;", mode))
			}
		})
	}
}

// TestMount_HotJournalAtStart kills litefs while a transaction has written
// pages into the database file (rollback modes) or frames into the WAL
// without a commit frame; at restart litefs rolls the journal back, and the
// WAL's uncommitted frames are ignored.
func TestMount_HotJournalAtStart(t *testing.T) {
	for _, mode := range journalModes {
		t.Run(mode, func(t *testing.T) {
			n := startNode(t)
			path := n.Path("app.db")
			mustSQLite3(t, path, fmt.Sprintf(`PRAGMA journal_mode=%s; CREATE TABLE big (id INTEGER PRIMARY KEY, payload TEXT);
				WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < 2000)
				INSERT INTO big (payload) SELECT lower(hex(randomblob(300))) FROM s;`, mode))
			before := n.Pos("app.db")
			want := mustSQLite3(t, path, "SELECT sum(length(payload)), max(payload) FROM big")
			written := "database" // where the transaction's pages go before COMMIT
			if mode == "WAL" {
				written = "wal"
			}
			clean, _ := os.ReadFile(filepath.Join(n.DataDir, "dbs", "app.db", written))

			cmd, out := startHelper(t, "spill-hang", helperArgs{Path: path, JournalMode: mode})
			if !out.Scan() || out.Text() != "ready" {
				t.Fatalf("spill helper did not get ready")
			}
			n.Kill()
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			dirty, _ := os.ReadFile(filepath.Join(n.DataDir, "dbs", "app.db", written))
			if bytes.Equal(clean, dirty) {
				t.Fatalf("the transaction did not reach the %s file; the test proves nothing", written)
			}

			n.Start()
			if got := n.Pos("app.db"); got != before {
				t.Fatalf("position %v, want %v", got, before)
			}
			if mode != "WAL" && !strings.Contains(n.Logs(), "rolling back the hot journal") {
				t.Errorf("no log line about the rollback:\n%s", n.Logs())
			}
			if got := mustSQLite3(t, path, "PRAGMA integrity_check; SELECT sum(length(payload)), max(payload) FROM big"); got != "ok\n"+want {
				t.Fatalf("after recovery: %q, want %q", got, "ok\n"+want)
			}
		})
	}
}
