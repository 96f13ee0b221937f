// Package ltx keeps the on-disk transaction log of one database: it writes
// LTX files durably, reads and verifies them, finds the log's position, and
// removes files past retention. It is the only package that speaks the LTX
// codec (github.com/superfly/ltx); everyone else uses the types here.
package ltx

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/litefs-project/litefs/checksum"
)

// TXID is a transaction ID; the first transaction of a database is 1.
type TXID uint64

// String returns the TXID as 16 hex digits, as LTX file names spell it.
func (t TXID) String() string { return fmt.Sprintf("%016x", uint64(t)) }

// Pos is a replication position: the last applied TXID and the database
// checksum after it. The zero Pos is an empty database.
type Pos struct {
	TXID     TXID
	Checksum checksum.Checksum
}

// String formats the position as the <db>-pos file does, without a newline.
func (p Pos) String() string { return p.TXID.String() + "/" + p.Checksum.String() }

// IsZero reports whether p is the position of an empty database.
func (p Pos) IsZero() bool { return p == Pos{} }

// ParsePos parses the format of Pos.String (a trailing newline is allowed).
func ParsePos(s string) (Pos, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok || len(a) != 16 || len(b) != 16 {
		return Pos{}, fmt.Errorf("parse position %q: want %%016x/%%016x", s)
	}
	txid, err := strconv.ParseUint(a, 16, 64)
	if err != nil {
		return Pos{}, fmt.Errorf("parse position txid %q: %w", a, err)
	}
	chk, err := strconv.ParseUint(b, 16, 64)
	if err != nil {
		return Pos{}, fmt.Errorf("parse position checksum %q: %w", b, err)
	}
	return Pos{TXID: TXID(txid), Checksum: checksum.Checksum(chk)}, nil
}

// Header describes one LTX file.
type Header struct {
	PageSize         uint32            // bytes per page
	Commit           uint32            // database size in pages after the transaction
	MinTXID, MaxTXID TXID              // the transactions it holds; equal for one transaction
	Timestamp        int64             // milliseconds since the Unix epoch
	PreApplyChecksum checksum.Checksum // database checksum before; zero when MinTXID is 1
	// Stamp orders the transaction among those of every primary: see
	// Stamp. The LTX format's node ID field carries it. Zero if unknown.
	Stamp Stamp
}

// Stamp orders transactions across primaries and databases: the lease
// term of the primary that wrote the transaction in the high 24 bits, and
// its place in that primary's publish order (over all databases) in the
// low 40. Every lease a node takes has a term above every earlier lease's,
// and a primary never gives two transactions the same place, so no two
// transactions share a stamp, and a later primary's transactions order
// after an earlier one's. Zero: written without one (an older version).
type Stamp uint64

// StampBits is how many low bits of a stamp hold the publish order.
const StampBits = 40

// MaxTerm is the largest term a stamp holds.
const MaxTerm = 1<<(64-StampBits) - 1

// NewStamp returns the stamp of the seq'th transaction of term.
func NewStamp(term, seq uint64) Stamp {
	return Stamp(term<<StampBits | seq&(1<<StampBits-1))
}

// Term returns the lease term of the primary that wrote the transaction.
func (s Stamp) Term() uint64 { return uint64(s) >> StampBits }

// Seq returns the transaction's place in its primary's publish order.
func (s Stamp) Seq() uint64 { return uint64(s) & (1<<StampBits - 1) }

// String returns "term.seq".
func (s Stamp) String() string { return fmt.Sprintf("%d.%d", s.Term(), s.Seq()) }

// PreApplyPos returns the position the file applies to.
func (h Header) PreApplyPos() Pos {
	return Pos{TXID: h.MinTXID - 1, Checksum: h.PreApplyChecksum}
}

// IsSnapshot reports whether the file holds the whole database.
func (h Header) IsSnapshot() bool { return h.MinTXID == 1 }

// ErrCorrupt is returned (wrapped in a *CorruptError) when an LTX file fails
// to decode or its checksums do not hold.
var ErrCorrupt = errors.New("corrupt ltx file")

// CorruptError names the LTX file that failed verification and why.
type CorruptError struct {
	Path string
	Err  error
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("corrupt ltx file %s: %v", e.Path, e.Err)
}

// Unwrap lets errors.Is match both ErrCorrupt and the cause.
func (e *CorruptError) Unwrap() []error { return []error{ErrCorrupt, e.Err} }
