package fuse

import (
	"bytes"
	"encoding/binary"
	"testing"
)

func TestNextWALIndexHeader(t *testing.T) {
	e := binary.NativeEndian
	hdr := make([]byte, 48)
	e.PutUint32(hdr[0:], 3007000) // version
	e.PutUint32(hdr[8:], 41)      // change counter
	hdr[12] = 1                   // isInit
	e.PutUint16(hdr[14:], 4096)
	sum := walIndexChecksum(hdr[:40])
	e.PutUint32(hdr[40:], sum[0])
	e.PutUint32(hdr[44:], sum[1])
	index := append(append(append([]byte{}, hdr...), hdr...), 0, 0, 0, 0)

	got := nextWALIndexHeader(index)
	if len(got) != walIndexHeaderSize || !bytes.Equal(got[:48], got[48:]) {
		t.Fatalf("got %d bytes, copies equal %t", len(got), bytes.Equal(got[:48], got[48:]))
	}
	if n := e.Uint32(got[8:]); n != 42 {
		t.Errorf("change counter %d, want 42", n)
	}
	if s := walIndexChecksum(got[:40]); e.Uint32(got[40:]) != s[0] || e.Uint32(got[44:]) != s[1] {
		t.Error("checksum not redone")
	}
	zero := make([]byte, walIndexHeaderSize)
	for what, mutate := range map[string]func(b []byte){
		"frames in the wal": func(b []byte) { e.PutUint32(b[16:], 5); e.PutUint32(b[64:], 5) },
		"copies differ":     func(b []byte) { b[60]++ },
		"bad checksum":      func(b []byte) { b[40]++; b[88]++ },
		"not initialized":   func(b []byte) { b[12], b[60] = 0, 0 },
		"backfilled":        func(b []byte) { e.PutUint32(b[96:], 1) },
	} {
		b := append([]byte{}, index...)
		mutate(b)
		if got := nextWALIndexHeader(b); !bytes.Equal(got, zero) {
			t.Errorf("%s: header kept, want it zeroed", what)
		}
	}
}
