package main

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

func TestProgress(t *testing.T) {
	t.Run("Line", func(t *testing.T) {
		var out bytes.Buffer
		now := time.Unix(0, 0)
		p := newProgressTo(&out, "import app.db", 4e6, func() time.Time { return now })
		r := p.Reader(strings.NewReader(strings.Repeat("x", 4e6)))
		buf := make([]byte, 1e6)
		for i := 0; i < 2; i++ {
			now = now.Add(time.Second)
			if _, err := io.ReadFull(r, buf); err != nil {
				t.Fatal(err)
			}
		}
		if got, want := out.String(), "\rimport app.db: 2.0 MB of 4.0 MB (50%), 1.0 MB/s\033[K"; !strings.HasSuffix(got, want) {
			t.Fatalf("got %q, want a line ending %q", got, want)
		}
		now = now.Add(2 * time.Second)
		if _, err := io.Copy(io.Discard, r); err != nil {
			t.Fatal(err)
		}
		p.finish("done")
		if got, want := out.String(), "\rimport app.db: 4.0 MB of 4.0 MB (100%), 1.0 MB/s; done\033[K\n"; !strings.HasSuffix(got, want) {
			t.Fatalf("got %q, want a line ending %q", got, want)
		}
	})
	t.Run("Throttled", func(t *testing.T) {
		var out bytes.Buffer
		now := time.Unix(0, 0)
		p := newProgressTo(&out, "export app.db", 0, func() time.Time { return now })
		w := p.Writer(io.Discard)
		for i := 0; i < 100; i++ {
			now = now.Add(10 * time.Millisecond) // 1 s in all: 4 lines
			w.Write(make([]byte, 1000))
		}
		if n := strings.Count(out.String(), "\r"); n != 4 {
			t.Fatalf("%d lines drawn in 1 s, want 4: %q", n, out.String())
		}
		if !strings.HasSuffix(out.String(), "export app.db: 100.0 KB, 100.0 KB/s\033[K") {
			t.Fatalf("no total: %q", out.String())
		}
	})
	t.Run("NotATerminal", func(t *testing.T) {
		var out bytes.Buffer
		p := newProgress(&out, "import app.db", 10)
		if p != nil {
			t.Fatal("progress on a buffer")
		}
		if _, err := io.ReadAll(p.Reader(strings.NewReader("0123456789"))); err != nil {
			t.Fatal(err)
		}
		p.finish("done")
		if out.Len() != 0 {
			t.Fatalf("printed %q", out.String())
		}
		f, err := os.CreateTemp(t.TempDir(), "out")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if newProgress(f, "x", 1) != nil {
			t.Fatal("progress on a regular file")
		}
	})
}
