package tests

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/replica"
)

// Node is one litefs process with its own mount and data directory.
type Node struct {
	t          testing.TB
	Name       string
	Dir        string
	MountDir   string
	DataDir    string
	ConfigPath string
	HTTPAddr   string
	Bin        string   // litefs binary; litefsBin by default
	Env        []string // more environment for the next start, e.g. LITEFS_FAILPOINT
	// NetNS, if set, names a network namespace (under /run/netns) that
	// litefs runs in. Only the network namespace changes: the mount is
	// made in, and seen from, the test's own mount namespace.
	NetNS string
	// Secret is the cluster secret (http.secret) the node requires.
	Secret string
	// TLS is the node's http.tls; Client calls its API with both.
	TLS replica.TLSFiles

	mu     sync.Mutex
	cmd    *exec.Cmd
	logs   bytes.Buffer
	exited chan struct{}
	err    error // exit status once exited
}

// NodeConfig describes a node to start.
type NodeConfig struct {
	Name       string // lease.hostname
	Replica    bool   // lease.candidate: false
	PrimaryURL string // lease.advertise-url of a replica: the primary's API
	Retention  string // data.retention, if set
	Extra      string // more top-level YAML
	// Consul, if set, is the Consul agent's URL: the node uses the Consul
	// lease (Replica still makes it a non-candidate).
	Consul string
	// ConsulTTL and LockDelay are lease.consul.ttl and lock-delay.
	ConsulTTL, LockDelay string
	// Lease is more YAML inside the lease section.
	Lease string
	// HTTPAddr is http.addr; a free loopback port if empty.
	HTTPAddr string
	// NetNS is the network namespace litefs runs in (see Node.NetNS).
	NetNS string
	// Secret is http.secret, the cluster secret.
	Secret string
	// TLS, if it names a certificate, is http.tls: the node serves https.
	TLS replica.TLSFiles
}

// NewNode prepares a primary with a config file; extra YAML is appended.
func NewNode(t testing.TB, extra string) *Node {
	t.Helper()
	return NewNodeWith(t, NodeConfig{Name: "node1", Extra: extra})
}

// NewNodeWith prepares a node with a config file. Its API listens on a
// free loopback port.
func NewNodeWith(t testing.TB, cfg NodeConfig) *Node {
	t.Helper()
	dir := t.TempDir()
	n := &Node{t: t, Name: cfg.Name, Dir: dir, MountDir: filepath.Join(dir, "mnt"),
		DataDir: filepath.Join(dir, "data"), ConfigPath: filepath.Join(dir, "litefs.yml"), Bin: litefsBin,
		HTTPAddr: cfg.HTTPAddr, NetNS: cfg.NetNS, Secret: cfg.Secret, TLS: cfg.TLS}
	if n.HTTPAddr == "" {
		n.HTTPAddr = freeAddr(t)
	}
	data := ""
	if cfg.Retention != "" {
		data = fmt.Sprintf("  retention: %s\n  retention-monitor-interval: 100ms\n", cfg.Retention)
	}
	lease := fmt.Sprintf("  candidate: true\n  advertise-url: %s\n", n.URL())
	if cfg.Replica {
		lease = fmt.Sprintf("  candidate: false\n  advertise-url: %s\n", cfg.PrimaryURL)
	}
	typ := "static"
	if cfg.Consul != "" {
		typ = "consul"
		lease = fmt.Sprintf("  candidate: %t\n  advertise-url: %s\n  consul:\n    url: %s\n    key: litefs/test\n    ttl: %s\n    lock-delay: %s\n",
			!cfg.Replica, n.URL(), cfg.Consul, orDefault(cfg.ConsulTTL, "10s"), orDefault(cfg.LockDelay, "1s"))
	}
	secret := ""
	if cfg.Secret != "" {
		secret = fmt.Sprintf("  secret: %q\n", cfg.Secret)
	}
	if cfg.TLS.Enabled() {
		secret += fmt.Sprintf("  tls:\n    cert: %s\n    key: %s\n    ca: %s\n    mutual: %t\n", cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.CA, cfg.TLS.Mutual)
	}
	n.WriteConfig(fmt.Sprintf("fuse:\n  dir: %s\ndata:\n  dir: %s\n%shttp:\n  addr: %s\n%slease:\n  type: %s\n  hostname: %s\n%s%s%s",
		n.MountDir, n.DataDir, data, n.HTTPAddr, secret, typ, n.Name, lease, cfg.Lease, cfg.Extra))
	t.Cleanup(func() {
		n.Stop()
		_ = exec.Command("fusermount3", "-uz", n.MountDir).Run()
		n.dumpLogsOnFailure()
	})
	return n
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// URL returns the node's API URL.
func (n *Node) URL() string {
	if n.TLS.Enabled() {
		return "https://" + n.HTTPAddr
	}
	return "http://" + n.HTTPAddr
}

// Client returns a client of the node's API with its secret and TLS.
func (n *Node) Client() *replica.Client {
	n.t.Helper()
	c, err := replica.NewClientWith(n.Secret, n.TLS)
	if err != nil {
		n.t.Fatal(err)
	}
	return c
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t testing.TB) string {
	t.Helper()
	// The port is free when asked for, but the kernel may offer it again
	// before the node binds it: never hand out the same one twice.
	handedOut.Lock()
	defer handedOut.Unlock()
	for i := 0; i < 100; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if !handedOut.m[addr] {
			handedOut.m[addr] = true
			return addr
		}
	}
	t.Fatal("no free loopback port not handed out before")
	return ""
}

// handedOut are the addresses freeAddr returned in this process.
var handedOut = struct {
	sync.Mutex
	m map[string]bool
}{m: make(map[string]bool)}

// WriteConfig replaces the node's config file.
func (n *Node) WriteConfig(yaml string) {
	n.t.Helper()
	if err := os.WriteFile(n.ConfigPath, []byte(yaml), 0o644); err != nil {
		n.t.Fatal(err)
	}
}

// StartCmd starts litefs mount without waiting for the mount.
func (n *Node) StartCmd() {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	cmd := exec.Command(n.Bin, "mount", "-config", n.ConfigPath)
	if n.NetNS != "" {
		// nsenter enters the network namespace only and then executes
		// litefs, so the process is litefs itself (signals reach it).
		// ip netns exec would also make a mount namespace of its own,
		// hiding the FUSE mount from everyone else.
		cmd = exec.Command("nsenter", "--net=/run/netns/"+n.NetNS, "--", n.Bin, "mount", "-config", n.ConfigPath)
	}
	cmd.Env = append(os.Environ(), n.Env...)
	cmd.Stdout, cmd.Stderr = &lockedWriter{n: n}, &lockedWriter{n: n}
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.cmd, n.exited, n.err = cmd, make(chan struct{}), nil
	exited := n.exited
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.err = err
		n.mu.Unlock()
		close(exited)
	}()
}

type lockedWriter struct{ n *Node }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.n.mu.Lock()
	defer w.n.mu.Unlock()
	return w.n.logs.Write(p)
}

// Logs returns everything the process printed so far.
func (n *Node) Logs() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.logs.String()
}

// Start starts litefs and waits until the mount is served.
func (n *Node) Start() {
	n.t.Helper()
	n.StartCmd()
	deadline := time.Now().Add(15 * time.Second)
	for !n.served() {
		select {
		case <-n.exited:
			n.t.Fatalf("litefs exited before mounting: %v\n%s", n.ExitErr(), n.Logs())
		default:
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("litefs did not mount within 15s\n%s", n.Logs())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WaitExit waits for the process to exit and returns its exit status.
func (n *Node) WaitExit(d time.Duration) error {
	n.t.Helper()
	select {
	case <-n.exited:
		return n.ExitErr()
	case <-time.After(d):
		n.t.Fatalf("litefs did not exit within %s\n%s", d, n.Logs())
		return nil
	}
}

// ExitErr returns the exit status of a process that exited.
func (n *Node) ExitErr() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.err
}

func (n *Node) running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM and waits; SIGKILL after 15s.
func (n *Node) Stop() {
	if !n.running() {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(15 * time.Second):
		n.t.Errorf("litefs did not stop on SIGTERM within 15s; killing it\n%s", n.Logs())
		n.Kill()
	}
}

// PID returns the process id of the running litefs.
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd.Process.Pid
}

// Kill sends SIGKILL and waits. The mount is left stale, as after a crash.
func (n *Node) Kill() {
	if !n.running() {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.exited
}

// Restart stops the node if running and starts it again.
func (n *Node) Restart() {
	n.t.Helper()
	n.Stop()
	n.Start()
}

// Path returns the path of a file in the mount.
func (n *Node) Path(name string) string { return filepath.Join(n.MountDir, name) }

// Pos reads <db>-pos from the mount.
func (n *Node) Pos(db string) ltx.Pos {
	n.t.Helper()
	b, err := os.ReadFile(n.Path(db + "-pos"))
	if err != nil {
		n.t.Fatal(err)
	}
	pos, err := ltx.ParsePos(string(b))
	if err != nil {
		n.t.Fatal(err)
	}
	return pos
}

// OpenDB opens a database in the mount with go-sqlite3.
func (n *Node) OpenDB(name, journalMode string) *sql.DB {
	n.t.Helper()
	return openDB(n.t, n.Path(name), journalMode)
}

func openDB(t testing.TB, path, journalMode string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite3", fmt.Sprintf("file:%s?_journal_mode=%s&_busy_timeout=10000&_txlock=immediate", path, journalMode))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// CheckInvariants checks every database in the mount: its -pos checksum
// equals a full recompute of the database as readers see it (the file plus
// the WAL's committed frames), the LTX files hold contiguous TXIDs whose
// pre-apply checksums chain, and replaying them from the first rebuilds the
// database byte for byte.
//
// It reads the files in the data directory, not through the mount: closing
// a descriptor of the mounted database would drop the POSIX locks that
// SQLite connections in this process hold on it.
func (n *Node) CheckInvariants() {
	n.t.Helper()
	ents, err := os.ReadDir(n.MountDir)
	if err != nil {
		n.t.Fatalf("read mount: %v", err)
	}
	for _, ent := range ents {
		name := ent.Name()
		if strings.HasPrefix(name, ".") || strings.HasSuffix(name, "-journal") || strings.HasSuffix(name, "-wal") ||
			strings.HasSuffix(name, "-shm") || strings.HasSuffix(name, "-pos") {
			continue // the mount lists databases and their companions; -pos files are read by name
		}
		pos := n.Pos(name)
		data := readLogicalDB(n.t, filepath.Join(n.DataDir, "dbs", name))
		if got := recompute(n.t, data); got != pos.Checksum {
			n.t.Errorf("%s: -pos checksum %s, full recompute %s (txid %s)", name, pos.Checksum, got, pos.TXID)
		}
		replay := replayLog(n.t, filepath.Join(n.DataDir, "dbs", name, "ltx"), pos)
		if replay != nil && !bytes.Equal(replay, data) {
			n.t.Errorf("%s: replaying the ltx log does not rebuild the database (%d vs %d bytes)", name, len(replay), len(data))
		}
	}
}

// readLogicalDB returns the database in dir as readers see it: the file
// with the WAL's committed frames (current salts, up to the last commit
// frame) laid over it.
func readLogicalDB(t testing.TB, dir string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "database"))
	if err != nil {
		t.Fatal(err)
	}
	wal, err := os.ReadFile(filepath.Join(dir, "wal"))
	if os.IsNotExist(err) || len(wal) < 32 {
		return data
	} else if err != nil {
		t.Fatal(err)
	}
	pageSize := int(binary.BigEndian.Uint32(wal[8:]))
	salts := wal[16:24]
	type frame struct {
		pgno, commit uint32
		off          int
	}
	var frames []frame
	last := -1
	for off := 32; off+24+pageSize <= len(wal); off += 24 + pageSize {
		if !bytes.Equal(wal[off+8:off+16], salts) {
			break
		}
		f := frame{binary.BigEndian.Uint32(wal[off:]), binary.BigEndian.Uint32(wal[off+4:]), off}
		frames = append(frames, f)
		if f.commit != 0 {
			last = len(frames) - 1
		}
	}
	for _, f := range frames[:last+1] {
		if end := int(f.pgno) * pageSize; end > len(data) {
			data = append(data, make([]byte, end-len(data))...)
		}
		copy(data[int(f.pgno-1)*pageSize:], wal[f.off+24:f.off+24+pageSize])
		if f.commit != 0 {
			if size := int(f.commit) * pageSize; size < len(data) {
				data = data[:size]
			} else {
				data = append(data, make([]byte, size-len(data))...)
			}
		}
	}
	return data
}

// recompute returns the checksum of a whole database image.
func recompute(t testing.TB, data []byte) checksum.Checksum {
	t.Helper()
	if len(data) == 0 {
		return 0
	}
	pageSize := uint32(data[16])<<8 | uint32(data[17])
	if pageSize == 1 {
		pageSize = 65536
	}
	tbl, err := checksum.Read(bytes.NewReader(data), pageSize)
	if err != nil {
		t.Fatal(err)
	}
	return tbl.Sum()
}

// replayLog checks the log in dir ends at pos with contiguous, chained files
// and, if it starts at TXID 1, returns the database it rebuilds.
func replayLog(t testing.TB, dir string, pos ltx.Pos) []byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var (
		db      []byte
		prev    ltx.Pos
		started bool
	)
	for i, ent := range ents {
		d, err := ltx.ReadFile(filepath.Join(dir, ent.Name()))
		if err != nil {
			t.Fatalf("ltx file: %v", err)
		}
		h := d.Header
		if i == 0 {
			started = h.MinTXID == 1
		} else if h.PreApplyPos() != prev {
			t.Errorf("%s: pre-apply position %v, previous file ends at %v", ent.Name(), h.PreApplyPos(), prev)
		}
		prev = ltx.Pos{TXID: h.MaxTXID, Checksum: d.PostApplyChecksum}
		if !started {
			continue
		}
		size := int(h.Commit) * int(h.PageSize)
		if len(db) < size {
			db = append(db, make([]byte, size-len(db))...)
		}
		db = db[:size]
		for _, p := range d.Pages {
			copy(db[int(p.Pgno-1)*int(h.PageSize):], p.Data)
		}
		if got := recompute(t, db); got != d.PostApplyChecksum {
			t.Errorf("%s: post-apply checksum %s, replayed database %s", ent.Name(), d.PostApplyChecksum, got)
		}
	}
	if prev != pos {
		t.Errorf("ltx log in %s ends at %v, -pos says %v", dir, prev, pos)
	}
	if !started {
		return nil
	}
	return db
}

// served reports whether this process's mount is up. litefs starts its API
// only after mounting, so an answer from the API means the new mount is in
// place; the mount table alone can still list a stale mount that the new
// process is about to replace.
func (n *Node) served() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := n.Client().Info(ctx, n.URL())
	return err == nil && isMounted(n.MountDir)
}

// isMounted reports whether dir is a FUSE mount point.
func isMounted(dir string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 4 && fields[4] == dir && strings.Contains(s.Text(), "fuse.litefs") {
			return true
		}
	}
	return false
}

// sqlite3 runs the sqlite3 CLI as a separate process.
func sqlite3(t testing.TB, path string, sql string) (string, error) {
	t.Helper()
	cmd := exec.Command("sqlite3", "-bail", "-cmd", ".timeout 10000", path, sql)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// mustSQLite3 runs the sqlite3 CLI and fails the test on error.
func mustSQLite3(t testing.TB, path string, sql string) string {
	t.Helper()
	out, err := sqlite3(t, path, sql)
	if err != nil {
		if len(sql) > 200 {
			sql = sql[:200] + "..."
		}
		t.Fatalf("sqlite3 %q: %v: %s", sql, err, out)
	}
	return out
}

// waitUntil polls cond every 10ms until it is true or d passes.
func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dumpLogsOnFailure prints the node's logs if the test failed.
func (n *Node) dumpLogsOnFailure() {
	if n.t.Failed() {
		n.t.Logf("litefs logs of %s:\n%s", n.Name, n.Logs())
	}
}
