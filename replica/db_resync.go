package replica

import (
	"context"
	"fmt"
)

// resync brings a live database back to its log's position after the node
// stepped down: with connections kept out by gate (waiting for a
// transaction in progress to end, its commit refused), it runs the same
// recovery as at start, then makes connections drop what they cached.
func (db *DB) resync(ctx context.Context, gate Gate) error {
	// The gate is taken before db.mu: a writer finishing its transaction
	// needs db.mu to be refused and let go of its locks.
	var unlock func() error
	if gate != nil {
		var err error
		if unlock, err = gate.Lock(ctx, db.name, db.isWAL()); err != nil {
			return fmt.Errorf("keep connections out: %w", err)
		}
	}
	db.mu.Lock()
	var err error
	if db.closed {
		err = ErrClosed
	} else {
		before := db.pos
		err = db.recover(true)
		db.resetDirty()
		if err == nil && db.pos != before {
			err = fmt.Errorf("database %q: log position moved from %s to %s while stepping down", db.name, before, db.pos)
		}
	}
	db.mu.Unlock()
	return db.reopenGate(gate, unlock, err)
}
