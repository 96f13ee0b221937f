// Package tests holds the end-to-end tests: litefs processes built from
// cmd/litefs with real FUSE mounts, driven by real SQLite clients (go-sqlite3
// in this process and the sqlite3 CLI as separate processes).
package tests

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/litefs-project/litefs/replica"
)

// litefsBin is the litefs binary under test, built once by TestMain.
var litefsBin string

// apiClient calls the nodes' APIs, as the nodes do.
var apiClient = replica.NewClient()

func TestMain(m *testing.M) {
	flag.Parse()
	if helper := os.Getenv(helperEnv); helper != "" {
		os.Exit(runHelper(helper, flag.Args()))
	}
	if err := checkSetup(); err != nil {
		// A missing FUSE or sqlite3 is a setup failure, never a skip.
		fmt.Fprintln(os.Stderr, "tests: setup:", err)
		fmt.Fprintln(os.Stderr, "tests: run the README's test command (scripts/test), which installs fuse3, sqlite3, iproute2, util-linux, curl and systemd")
		os.Exit(2)
	}
	dir, err := os.MkdirTemp("", "litefs-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	binDir = dir
	// Tests run litefs built with the race detector (except in -short
	// mode); benchmarks build their own plain binary.
	if litefsBin, err = buildLitefs(!testing.Short() && os.Getenv("LITEFS_TEST_NORACE") == ""); err != nil {
		fmt.Fprintln(os.Stderr, "tests: build litefs:", err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var binDir string

// buildLitefs builds cmd/litefs into binDir.
func buildLitefs(race bool) (string, error) {
	name, args := "litefs", []string{"build"}
	if race {
		name, args = "litefs-race", append(args, "-race")
	}
	path := filepath.Join(binDir, name)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	build := exec.Command("go", append(args, "-o", path, "../cmd/litefs")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	return path, build.Run()
}

func checkSetup() error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("no /dev/fuse: %w", err)
	}
	for _, bin := range []string{"fusermount3", "sqlite3", "ip", "nsenter", "curl", "systemd-analyze"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s not found in PATH", bin)
		}
	}
	return nil
}
