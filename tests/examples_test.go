package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestExamples_Systemd checks the example unit with systemd-analyze
// verify, pointed at the litefs binary under test.
func TestExamples_Systemd(t *testing.T) {
	b, err := os.ReadFile("../examples/systemd/litefs.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	unit := strings.ReplaceAll(string(b), "/usr/local/bin/litefs", litefsBin)
	path := filepath.Join(dir, "litefs.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", "--man=no", path).CombinedOutput()
	// Without a running systemd (a container), verify may still say so;
	// anything about the unit itself is a failure.
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.Contains(line, "litefs.service") {
			t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
		}
	}
}

// TestExamples_DockerApp runs the container example's stand-in app
// through litefs's exec on a real mount: it writes, and SIGTERM reaches it
// through litefs, which exits cleanly.
func TestExamples_DockerApp(t *testing.T) {
	b, err := os.ReadFile("../examples/docker/app.sh")
	if err != nil {
		t.Fatal(err)
	}
	n := NewNode(t, "")
	script := filepath.Join(n.Dir, "app.sh")
	if err := os.WriteFile(script, []byte(strings.ReplaceAll(string(b), "/litefs/", n.MountDir+"/")), 0o755); err != nil {
		t.Fatal(err)
	}
	n.WriteConfig(readFile(t, n.ConfigPath) + fmt.Sprintf("exec:\n  - cmd: %s\n", script))
	n.Start()
	waitUntil(t, 20*time.Second, "the app to write three rows", func() bool {
		out, err := exec.Command("sqlite3", n.Path("app.db"), "SELECT count(*) FROM beats").Output()
		c, _ := strconv.Atoi(strings.TrimSpace(string(out)))
		return err == nil && c >= 3
	})
	n.Stop()
	if err := n.ExitErr(); err != nil {
		t.Fatalf("litefs exited with %v after SIGTERM to the app\n%s", err, n.Logs())
	}
}
