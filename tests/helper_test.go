package tests

import (
	"bufio"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Helper processes: the test binary re-executed to act as a separate SQLite
// client process (go-sqlite3), so that tests have several writers and
// readers in different processes, and processes that can be killed.
const (
	helperEnv     = "LITEFS_TEST_HELPER"
	helperArgsEnv = "LITEFS_TEST_HELPER_ARGS"
)

// helperArgs is what a helper process is told.
type helperArgs struct {
	Path        string        `json:"path"`
	JournalMode string        `json:"journal_mode"`
	Duration    time.Duration `json:"duration"`
	Seed        int64         `json:"seed"`
	Accounts    int           `json:"accounts"`
	Total       int           `json:"total"`
	Addr        string        `json:"addr"`   // where a web app listens
	Name        string        `json:"name"`   // the node a web app runs on
	Target      string        `json:"target"` // where a plain proxy sends requests
	Setup       string        `json:"setup"`  // SQL the writer runs on its connection first
}

// startHelper starts a helper process; its stdout is returned as lines.
func startHelper(t testing.TB, name string, args helperArgs) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	b, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+name, helperArgsEnv+"="+string(b))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, bufio.NewScanner(out)
}

func runHelper(name string, _ []string) int {
	var args helperArgs
	if err := json.Unmarshal([]byte(os.Getenv(helperArgsEnv)), &args); err != nil {
		fmt.Fprintln(os.Stderr, "helper args:", err)
		return 2
	}
	db, err := sql.Open("sqlite3", fmt.Sprintf("file:%s?_journal_mode=%s&_busy_timeout=10000&_txlock=immediate", args.Path, args.JournalMode))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	switch name {
	case "bank-writer":
		return bankWriter(db, args, os.Stdout)
	case "bank-reader":
		return bankReader(db, args, os.Stdout)
	case "acked-writer":
		return ackedWriter(db, args, os.Stdout)
	case "spill-hang":
		return spillHang(db, os.Stdout)
	case "spill-new-hang":
		return spillNewHang(db, os.Stdout)
	case "fault-writer":
		return faultWriterHelper(db, args, os.Stdin, os.Stdout)
	case "webapp":
		return webApp(db, args, os.Stdout)
	case "plain-proxy":
		return plainProxy(args, os.Stdout)
	case "snapshot-reader":
		return snapshotReader(db, args, os.Stdout)
	}
	fmt.Fprintln(os.Stderr, "unknown helper", name)
	return 2
}

// bankWriter moves money between accounts in transactions that also add a
// ledger row, until the duration passes; it prints "commits=N", the number
// of COMMITs that returned success.
func bankWriter(db *sql.DB, args helperArgs, w io.Writer) int {
	rng := rand.New(rand.NewSource(args.Seed))
	commits, busy := 0, 0
	deadline := time.Now().Add(args.Duration)
	for time.Now().Before(deadline) {
		from, to, amt := rng.Intn(args.Accounts), rng.Intn(args.Accounts), rng.Intn(100)
		err := func() error {
			tx, err := db.Begin()
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if _, err := tx.Exec(`UPDATE accounts SET balance = balance - ? WHERE id = ?`, amt, from); err != nil {
				return err
			}
			if _, err := tx.Exec(`UPDATE accounts SET balance = balance + ? WHERE id = ?`, amt, to); err != nil {
				return err
			}
			if _, err := tx.Exec(`INSERT INTO ledger (src, dst, amount) VALUES (?, ?, ?)`, from, to, amt); err != nil {
				return err
			}
			return tx.Commit()
		}()
		if err != nil {
			if strings.Contains(err.Error(), "locked") || strings.Contains(err.Error(), "busy") {
				busy++
				continue
			}
			fmt.Fprintln(os.Stderr, "bank-writer:", err)
			fmt.Fprintf(w, "commits=%d\n", commits)
			return 1
		}
		commits++
	}
	fmt.Fprintf(w, "commits=%d busy=%d\n", commits, busy)
	return 0
}

// bankReader sums all balances until the duration passes; the sum must
// never change. It prints "reads=N bad=M".
func bankReader(db *sql.DB, args helperArgs, w io.Writer) int {
	reads, bad := 0, 0
	deadline := time.Now().Add(args.Duration)
	for time.Now().Before(deadline) {
		var sum, n int
		if err := db.QueryRow(`SELECT sum(balance), count(*) FROM accounts`).Scan(&sum, &n); err != nil {
			if strings.Contains(err.Error(), "locked") || strings.Contains(err.Error(), "busy") {
				continue
			}
			fmt.Fprintln(os.Stderr, "bank-reader:", err)
			return 1
		}
		if sum != args.Total || n != args.Accounts {
			bad++
			fmt.Fprintf(os.Stderr, "bank-reader: torn read: sum=%d count=%d\n", sum, n)
		}
		reads++
	}
	fmt.Fprintf(w, "reads=%d bad=%d\n", reads, bad)
	return 0
}

// ackedWriter inserts rows 1, 2, 3, ... one per transaction and prints each
// id after its COMMIT returned, until an error or the duration passes.
func ackedWriter(db *sql.DB, args helperArgs, w io.Writer) int {
	if args.Setup != "" {
		if _, err := db.Exec(args.Setup); err != nil {
			fmt.Fprintln(os.Stderr, "acked-writer setup:", err)
			return 1
		}
	}
	deadline := time.Now().Add(args.Duration)
	payload := strings.Repeat("x", 500)
	for id := 1; time.Now().Before(deadline); id++ {
		if _, err := db.Exec(`INSERT INTO acked (id, payload) VALUES (?, ?)`, id, payload); err != nil {
			fmt.Fprintln(os.Stderr, "acked-writer stopped:", err)
			return 0
		}
		fmt.Fprintf(w, "%d\n", id)
	}
	return 0
}

// spillHang starts a transaction larger than the page cache, so SQLite
// writes pages into the database file before COMMIT, prints "ready" and
// waits to be killed: a hot journal with a half-written database.
func spillHang(db *sql.DB, w io.Writer) int {
	if _, err := db.Exec(`PRAGMA cache_size = 2`); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	tx, err := db.Begin()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := tx.Exec(`UPDATE big SET payload = upper(payload)`); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Fprintln(w, "ready")
	time.Sleep(time.Minute)
	return 0
}

// spillNewHang starts the first transaction of a new database, larger
// than the page cache, so SQLite writes pages into the empty database file
// before COMMIT (not page 1 first), prints "ready" and waits to be killed.
func spillNewHang(db *sql.DB, w io.Writer) int {
	for _, q := range []string{
		`PRAGMA cache_size = 2`,
		`BEGIN`,
		`CREATE TABLE t (x)`,
		`WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 200) INSERT INTO t SELECT randomblob(1000) FROM c`,
	} {
		if _, err := db.Exec(q); err != nil {
			fmt.Fprintln(os.Stderr, q+":", err)
			return 1
		}
	}
	fmt.Fprintln(w, "ready")
	time.Sleep(time.Minute)
	return 0
}

// faultWriterHelper inserts rows 1, 2, 3, ... into t, one per transaction, until
// stdin closes or the duration passes, and never gives up: an attempt that
// fails is reported and the next one takes the next id, so an id whose
// write failed is never written again. For every attempt it prints
// "ok|err ID START_NS END_NS [ERROR]", the wall-clock times (Unix
// nanoseconds) it began and returned.
func faultWriterHelper(db *sql.DB, args helperArgs, stdin io.Reader, w io.Writer) int {
	stop := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		close(stop)
	}()
	deadline := time.Now().Add(args.Duration)
	for id := 1; time.Now().Before(deadline); id++ {
		select {
		case <-stop:
			return 0
		default:
		}
		start := time.Now()
		_, err := db.Exec(`INSERT INTO t (id, node, pad) VALUES (?, 'writer', randomblob(100 + abs(random()) % 2000))`, id)
		end := time.Now()
		if err != nil {
			fmt.Fprintf(w, "err %d %d %d %s\n", id, start.UnixNano(), end.UnixNano(), strings.ReplaceAll(err.Error(), "\n", " "))
			time.Sleep(5 * time.Millisecond)
			continue
		}
		fmt.Fprintf(w, "ok %d %d %d\n", id, start.UnixNano(), end.UnixNano())
	}
	return 0
}

// snapshotReader reads table t and the schema in one read transaction at a
// time, on one connection kept open, until the duration passes. It prints
// "ready" after its first read, then each distinct result once as
// "seen COUNT|MIN|MAX|TABLES" and finally "reads=N errors=M"; an error
// other than busy is printed to stderr and counted.
func snapshotReader(db *sql.DB, args helperArgs, w io.Writer) int {
	seen := make(map[string]bool)
	reads, errs := 0, 0
	for deadline := time.Now().Add(args.Duration); time.Now().Before(deadline); {
		var res string
		err := func() error {
			tx, err := db.Begin()
			if err != nil {
				return err
			}
			defer tx.Rollback()
			var n, tables int
			var lo, hi string
			if err := tx.QueryRow(`SELECT count(*), min(v), max(v) FROM t`).Scan(&n, &lo, &hi); err != nil {
				return err
			}
			if err := tx.QueryRow(`SELECT count(*) FROM sqlite_master WHERE type = 'table'`).Scan(&tables); err != nil {
				return err
			}
			res = fmt.Sprintf("%d|%s|%s|%d", n, lo, hi, tables)
			return nil
		}()
		if err != nil {
			if strings.Contains(err.Error(), "locked") || strings.Contains(err.Error(), "busy") {
				continue
			}
			errs++
			fmt.Fprintln(os.Stderr, "snapshot-reader:", err)
			continue
		}
		if reads == 0 {
			fmt.Fprintln(w, "ready")
		}
		reads++
		if !seen[res] {
			seen[res] = true
			fmt.Fprintln(w, "seen "+res)
		}
	}
	fmt.Fprintf(w, "reads=%d errors=%d\n", reads, errs)
	return 0
}
