package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// progressInterval is how often a progress line is redrawn.
const progressInterval = 250 * time.Millisecond

// progress draws "label: done of total (pct), rate" on one terminal line,
// redrawn at most every progressInterval, for the bytes counted through
// Reader or Writer. It is pure presentation: a nil *progress (output not a
// terminal) counts nothing and prints nothing.
type progress struct {
	w     io.Writer
	label string
	total int64 // bytes expected; 0 if unknown
	now   func() time.Time

	mu    sync.Mutex
	done  int64
	start time.Time
	drawn time.Time
}

// newProgress returns a progress line on out if out is a terminal, and nil
// (quiet) otherwise.
func newProgress(out io.Writer, label string, total int64) *progress {
	f, ok := out.(*os.File)
	if !ok || !isTerminal(f) {
		return nil
	}
	return newProgressTo(out, label, total, time.Now)
}

func newProgressTo(w io.Writer, label string, total int64, now func() time.Time) *progress {
	t := now()
	return &progress{w: w, label: label, total: total, now: now, start: t, drawn: t}
}

// isTerminal reports whether f is a terminal (what golang.org/x/term's
// IsTerminal asks on Linux).
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// add counts n more bytes and redraws the line if it is due.
func (p *progress) add(n int) {
	if p == nil || n <= 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += int64(n)
	if t := p.now(); t.Sub(p.drawn) >= progressInterval || p.done == p.total {
		p.drawn = t
		fmt.Fprintf(p.w, "\r%s\033[K", p.line(t))
	}
}

// finish draws the last line with what was counted, then msg if not
// empty, and ends the line. Nothing counted, nothing drawn.
func (p *progress) finish(msg string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == 0 {
		return
	}
	line := p.line(p.now())
	if msg != "" {
		line += "; " + msg
	}
	fmt.Fprintf(p.w, "\r%s\033[K\n", line)
}

// line is the text of the progress line at t. p.mu held.
func (p *progress) line(t time.Time) string {
	s := p.label + ": " + formatBytes(p.done)
	if p.total > 0 {
		s += fmt.Sprintf(" of %s (%d%%)", formatBytes(p.total), p.done*100/p.total)
	}
	if el := t.Sub(p.start).Seconds(); el > 0 {
		s += fmt.Sprintf(", %s/s", formatBytes(int64(float64(p.done)/el)))
	}
	return s
}

// Reader returns r counting what is read from it.
func (p *progress) Reader(r io.Reader) io.Reader {
	if p == nil {
		return r
	}
	return &progressReader{r: r, p: p}
}

// Writer returns w counting what is written to it.
func (p *progress) Writer(w io.Writer) io.Writer {
	if p == nil {
		return w
	}
	return &progressWriter{w: w, p: p}
}

type progressReader struct {
	r io.Reader
	p *progress
}

func (r *progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.p.add(n)
	return n, err
}

type progressWriter struct {
	w io.Writer
	p *progress
}

func (w *progressWriter) Write(b []byte) (int, error) {
	n, err := w.w.Write(b)
	w.p.add(n)
	return n, err
}

// formatBytes writes n in B, KB, MB or GB (powers of 1000, as disk and
// network rates are given).
func formatBytes(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f KB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}

// doneOrFailed is the last word of a progress line.
func doneOrFailed(err error) string {
	if err != nil {
		return "failed"
	}
	return "done"
}
