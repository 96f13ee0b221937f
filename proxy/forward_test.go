package proxy

import (
	"bytes"
	"io"
	"net/http"
	"testing"
)

// countingReader counts what was read from it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// TestNewRetryBody: only bodies of known length up to maxRetryBody are
// kept in memory to be sent again; larger and chunked ones stream, and
// nothing is read from them up front.
func TestNewRetryBody(t *testing.T) {
	for _, tt := range []struct {
		name   string
		size   int64
		length int64 // Content-Length; -1: chunked
		keep   bool
	}{
		{"Small", 100, 100, true},
		{"Limit", maxRetryBody, maxRetryBody, true},
		{"Large", maxRetryBody + 1, maxRetryBody + 1, false},
		{"Huge", 100 << 20, 100 << 20, false},
		{"SmallChunked", 100, -1, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := &countingReader{r: io.LimitReader(zeroReader{}, tt.size)}
			r, _ := http.NewRequest("POST", "http://app/upload", io.NopCloser(src))
			r.ContentLength = tt.length
			b, err := newRetryBody(r)
			if err != nil {
				t.Fatal(err)
			}
			if b.keep != tt.keep {
				t.Fatalf("keep %t, want %t", b.keep, tt.keep)
			}
			if !tt.keep && (src.n != 0 || b.buf != nil) {
				t.Fatalf("a streamed body was read ahead: %d bytes, %d kept", src.n, len(b.buf))
			}
			b.rewind(r) // a streamed body is left as it is: sent once
			got, err := io.ReadAll(r.Body)
			if err != nil || int64(len(got)) != tt.size || !bytes.Equal(got, make([]byte, tt.size)) {
				t.Fatalf("body sent: %d bytes, %v; want %d", len(got), err, tt.size)
			}
			if tt.keep {
				// Kept: sent again from the start.
				b.rewind(r)
				if again, _ := io.ReadAll(r.Body); int64(len(again)) != tt.size {
					t.Fatalf("sent again: %d bytes, want %d", len(again), tt.size)
				}
			}
		})
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
