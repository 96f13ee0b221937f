package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// syncShadowEnv names a directory in which litefs keeps, for crash tests,
// what a crash of the machine could leave of its data directory: each
// file as it was when litefs last synced it. A sync also makes the
// removals from the synced file's directory durable, as a journaling
// filesystem's commit does.
// Files never synced are not there; the test decides what a crash leaves
// of them.
const syncShadowEnv = "LITEFS_SYNC_SHADOW"

// syncShadow returns the hook that keeps the shadow of dataDir in dir.
func syncShadow(dataDir, dir string, logger *slog.Logger) (func(f *os.File), error) {
	dataDir, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%s: %w", syncShadowEnv, err)
	}
	logger.Warn("keeping a shadow of what was synced, for crash tests", slog.String("dir", dir))
	var mu sync.Mutex
	return func(f *os.File) {
		rel, err := filepath.Rel(dataDir, f.Name())
		if err != nil || strings.HasPrefix(rel, "..") {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if err := shadowCopy(filepath.Join(dataDir, rel), filepath.Join(dir, rel)); err != nil {
			logger.Error("sync shadow: copy", slog.String("file", rel), slog.Any("error", err))
		}
		if err := shadowRemoved(filepath.Dir(filepath.Join(dataDir, rel)), filepath.Dir(filepath.Join(dir, rel))); err != nil {
			logger.Error("sync shadow: removals", slog.Any("error", err))
		}
	}, nil
}

// shadowCopy copies the file at src to dst; a directory is only created.
func shadowCopy(src, dst string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return os.MkdirAll(dst, 0o755)
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, b, fi.Mode().Perm())
}

// shadowRemoved removes from the shadow directory dir the files no longer
// in the real directory real.
func shadowRemoved(real, dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, ent := range ents {
		if ent.IsDir() {
			continue
		}
		if _, err := os.Lstat(filepath.Join(real, ent.Name())); os.IsNotExist(err) {
			if err := os.Remove(filepath.Join(dir, ent.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}
