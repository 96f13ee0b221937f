package replica

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// The replication stream is a sequence of frames on one long-lived HTTP
// response from the primary. Each frame is:
//
//	type (1 byte) | payload length (4 bytes, big-endian) | payload | CRC-32C of all before (4 bytes)
//
// A file (an LTX file or a snapshot, itself an LTX file) travels as a
// begin frame, chunk frames and an end frame; the replica spools it, checks
// its length, verifies it as an LTX file, and only then applies it. A
// frame that fails its CRC or is too long ends the stream; the replica
// reconnects and resumes from its position.
const (
	frameHello     = 'H' // JSON streamHello
	frameHeartbeat = 'P' // JSON streamHeartbeat
	frameBegin     = 'B' // JSON streamBegin
	frameChunk     = 'C' // file bytes
	frameEnd       = 'E' // empty: the file is complete
	frameDelete    = 'D' // JSON streamDelete

	maxFramePayload = 1 << 20
	chunkSize       = 256 << 10
)

// ErrBadFrame is returned when a stream frame fails its checksum, is too
// long, or is of an unknown type.
var ErrBadFrame = errors.New("bad replication stream frame")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// streamRequest is what a replica sends to open the stream.
type streamRequest struct {
	Node         string            `json:"node"`
	AdvertiseURL string            `json:"advertise_url,omitempty"` // the replica's API URL
	Candidate    bool              `json:"candidate,omitempty"`     // whether it may become primary
	Positions    map[string]string `json:"positions"`               // db -> ltx.Pos.String()
}

// streamHello opens the stream.
type streamHello struct {
	Hostname string `json:"hostname"`            // the primary's lease.hostname
	ProxyURL string `json:"proxy_url,omitempty"` // the primary's HTTP proxy, if it runs one
	// Session names this stream in the candidate's acknowledgements;
	// Acks asks for them (the primary has lease.sync-replicas set and the
	// replica is a candidate).
	Session string `json:"session,omitempty"`
	Acks    bool   `json:"acks,omitempty"`
	// Positions are the primary's positions as the stream starts, as in
	// heartbeats: a replica learns at once how far behind it is, before
	// the files that bring it up, which it may fail to apply (a full
	// disk) or wait to (readers).
	Positions map[string]string `json:"positions,omitempty"`
}

// ackRequest is the body of POST /ack: the positions a candidate holds
// durably, on the stream named by Session.
type ackRequest struct {
	Session   string            `json:"session"`
	Positions map[string]string `json:"positions"` // db -> ltx.Pos.String()
	// Stamp is the candidate's newest stamp (Store.Stamp): with an older
	// stamp than a commit's, it does not count for that commit.
	Stamp uint64 `json:"stamp"`
}

// streamHeartbeat says the primary is alive and where its databases are.
type streamHeartbeat struct {
	TimeMS    int64             `json:"time_ms"`
	Positions map[string]string `json:"positions"`
}

// streamBegin announces a file.
type streamBegin struct {
	DB        string `json:"db"`
	Size      int64  `json:"size"`
	Snapshot  bool   `json:"snapshot"`
	Divergent bool   `json:"divergent"` // the replica's history differs from the primary's
	// Streamed says the file is encoded as it is sent, so its size is
	// not known ahead (Size is zero): the end frame ends it, and its own
	// checksums and trailer say whether it is whole. Snapshots are sent so.
	Streamed bool `json:"streamed,omitempty"`
}

// streamDelete says a database was deleted on the primary.
type streamDelete struct {
	DB string `json:"db"`
}

func writeFrame(w io.Writer, typ byte, payload []byte) error {
	if len(payload) > maxFramePayload {
		return fmt.Errorf("frame payload of %d bytes", len(payload))
	}
	b := make([]byte, 0, 9+len(payload))
	b = append(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, payload...)
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	_, err := w.Write(b)
	return err
}

func readFrame(r *bufio.Reader) (byte, []byte, error) {
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return 0, nil, err
	}
	switch hdr[0] {
	case frameHello, frameHeartbeat, frameBegin, frameChunk, frameEnd, frameDelete:
	default:
		return 0, nil, fmt.Errorf("%w: type %q", ErrBadFrame, hdr[0])
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFramePayload {
		return 0, nil, fmt.Errorf("%w: payload of %d bytes", ErrBadFrame, n)
	}
	b := make([]byte, n+4)
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, nil, fmt.Errorf("%w: truncated: %v", ErrBadFrame, err)
	}
	sum := crc32.Update(crc32.Checksum(hdr, castagnoli), castagnoli, b[:n])
	if sum != binary.BigEndian.Uint32(b[n:]) {
		return 0, nil, fmt.Errorf("%w: checksum mismatch", ErrBadFrame)
	}
	return hdr[0], b[:n], nil
}
