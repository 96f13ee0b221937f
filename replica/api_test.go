package replica

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

// TestAPI_Errors checks that errors cross the API intact: the client
// returns them wrapped around the sentinel the server returned.
func TestAPI_Errors(t *testing.T) {
	store := NewStore(t.TempDir())
	store.SetPrimary(false)
	if err := store.Open(); err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	srv := NewServer(store, "node1")
	srv.Handoff = func(ctx context.Context, to string) (HandoffResult, error) {
		if to == "" {
			return HandoffResult{}, fmt.Errorf("%w: none is connected", ErrNoCandidate)
		}
		return HandoffResult{}, fmt.Errorf("%w: the primary is node2", ErrNotPrimary)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	c := NewClient()
	ctx := context.Background()

	_, err := c.Handoff(ctx, hs.URL, "node3")
	if !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("handoff on a replica: %v, want ErrNotPrimary", err)
	}
	var apiErr *Error
	if !errors.As(err, &apiErr) || apiErr.Status != 409 || apiErr.Code != "not-primary" || apiErr.Message != "this node is not the primary: the primary is node2" {
		t.Fatalf("error %#v", apiErr)
	}
	if IsUnreachable(err) {
		t.Fatalf("an answer is not unreachable: %v", err)
	}
	if _, err := c.Handoff(ctx, hs.URL, ""); !errors.Is(err, ErrNoCandidate) || errors.Is(err, ErrNotPrimary) {
		t.Fatalf("handoff without candidates: %v, want ErrNoCandidate only", err)
	}
	// The stream of a replica is refused with ErrNotPrimary.
	if _, err := c.stream(ctx, hs.URL, streamRequest{Node: "x"}); !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("stream from a replica: %v", err)
	}
	srv.Handoff = nil
	if _, err := c.Handoff(ctx, hs.URL, ""); !errors.Is(err, errNoHandoff) {
		t.Fatalf("handoff on a static lease: %v", err)
	}
	// Nobody listening: unreachable, and no sentinel.
	dead := httptest.NewServer(nil)
	dead.Close()
	if _, err := c.Info(ctx, dead.URL); !IsUnreachable(err) || errors.Is(err, ErrNotPrimary) {
		t.Fatalf("info from a closed server: %v", err)
	}
}

// TestAPI_InfoWait checks GET /info: a node already at the wanted
// positions answers at once (a database with no transaction is wanted at
// nothing), one that is not answers when the wait ends, and the client's
// wait ends with its context, naming what the node has.
func TestAPI_InfoWait(t *testing.T) {
	store := NewStore(t.TempDir())
	if err := store.Open(); err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := store.CreateDB("a.db"); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(NewServer(store, "node1").Handler())
	defer hs.Close()
	c := NewClient()
	ctx := context.Background()

	info, err := c.Info(ctx, hs.URL)
	if err != nil || info.Node != "node1" || !info.Primary || info.Positions["a.db"] != (ltx.Pos{}).String() {
		t.Fatalf("info %+v %v", info, err)
	}
	start := time.Now()
	if _, err := c.WaitPositions(ctx, hs.URL, map[string]ltx.Pos{"a.db": {}}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("waiting for a position the node has took %s", d)
	}

	want := map[string]ltx.Pos{"a.db": {TXID: 5, Checksum: 1 << 63}}
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = c.WaitPositions(wctx, hs.URL, want)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting for a position the node never reaches: %v", err)
	}
	// The server bounds the wait it was asked for.
	var got NodeInfo
	err = c.call(ctx, "GET", hs.URL, "/info?wait=100ms&want=a.db="+want["a.db"].String(), nil, &got)
	if err != nil || got.Has(want) {
		t.Fatalf("info after a wait: %+v %v", got, err)
	}
	if err := c.call(ctx, "GET", hs.URL, "/info?wait=1s&want=a.db", nil, &got); err == nil {
		t.Fatal("a want without a position was accepted")
	}
}
