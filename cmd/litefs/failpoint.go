package main

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// failpointEnv stops litefs, or the SQLite process it serves, right after
// a step of a commit, for crash tests: "STEP[#N]:ACTION", where STEP is one
// of fuse's Failpoint* steps, N counts its occurrences (default 1), and
// ACTION is "crash" (litefs kills itself with SIGKILL) or "kill-writer"
// (litefs kills the process that made the request).
const failpointEnv = "LITEFS_FAILPOINT"

// parseFailpoint returns the hook for a failpointEnv value.
func parseFailpoint(spec string, logger *slog.Logger) (func(step string, pid uint32), error) {
	target, action, ok := strings.Cut(spec, ":")
	if !ok || (action != "crash" && action != "kill-writer") {
		return nil, fmt.Errorf("%s=%q: want STEP[#N]:crash or STEP[#N]:kill-writer", failpointEnv, spec)
	}
	step, nth := target, int64(1)
	if s, n, ok := strings.Cut(target, "#"); ok {
		var err error
		if nth, err = strconv.ParseInt(n, 10, 64); err != nil || nth < 1 {
			return nil, fmt.Errorf("%s=%q: bad count %q", failpointEnv, spec, n)
		}
		step = s
	}
	logger.Warn("failpoint armed: litefs stops at a commit step, for tests", slog.String("failpoint", spec))
	var seen atomic.Int64
	return func(got string, pid uint32) {
		if got != step || seen.Add(1) != nth {
			return
		}
		logger.Warn("failpoint reached", slog.String("failpoint", spec), slog.Uint64("pid", uint64(pid)))
		if action == "kill-writer" {
			_ = syscall.Kill(int(pid), syscall.SIGKILL)
			return
		}
		_ = syscall.Kill(syscall.Getpid(), syscall.SIGKILL)
		select {} // the request is never answered
	}, nil
}
