package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/litefs-project/litefs/replica"
)

// eventStream reads GET /events of n.
type eventStream struct {
	events chan replica.Event
	cancel func()
}

func openEvents(t *testing.T, n *Node) *eventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, n.URL()+"/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		cancel()
		t.Fatalf("GET /events of %s: %v %v", n.Name, err, resp)
	}
	es := &eventStream{events: make(chan replica.Event, 1000), cancel: cancel}
	go func() {
		defer resp.Body.Close()
		defer close(es.events)
		s := bufio.NewScanner(resp.Body)
		for s.Scan() {
			var ev replica.Event
			var data json.RawMessage
			ev.Data = &data
			if json.Unmarshal(s.Bytes(), &ev) == nil {
				es.events <- ev
			}
		}
	}()
	t.Cleanup(cancel)
	return es
}

func (es *eventStream) next(t *testing.T, what string) (replica.Event, json.RawMessage) {
	t.Helper()
	select {
	case ev, ok := <-es.events:
		if !ok {
			t.Fatalf("the event stream ended waiting for %s", what)
		}
		return ev, *ev.Data.(*json.RawMessage)
	case <-time.After(15 * time.Second):
		t.Fatalf("no event for 15s waiting for %s", what)
	}
	panic("unreachable")
}

// TestEvents follows GET /events on a primary and a replica: init first,
// then one tx event per transaction in order with the position each
// reached, and primaryChange when the replica loses its primary.
func TestEvents(t *testing.T) {
	p := NewNodeWith(t, NodeConfig{Name: "primary"})
	p.Start()
	r := NewNodeWith(t, NodeConfig{Name: "replica", Replica: true, PrimaryURL: p.URL()})
	r.Start()
	waitUntil(t, 10*time.Second, "the replica to connect", func() bool {
		info, err := getAPIInfo(r)
		return err == nil && info.Connected
	})
	pe, re := openEvents(t, p), openEvents(t, r)
	for _, c := range []struct {
		es      *eventStream
		primary bool
		host    string
	}{{pe, true, ""}, {re, false, "primary"}} {
		ev, data := c.es.next(t, "init")
		var d replica.PrimaryEventData
		if ev.Type != "init" || json.Unmarshal(data, &d) != nil || d.IsPrimary != c.primary || d.Hostname != c.host {
			t.Fatalf("first event %+v %s", ev, data)
		}
	}

	const n = 10
	mustSQLite3(t, p.Path("db"), "CREATE TABLE t (x)")
	for i := 0; i < n; i++ {
		mustSQLite3(t, p.Path("db"), fmt.Sprintf("INSERT INTO t VALUES (%d)", i))
	}
	want := p.Pos("db")
	for _, es := range []*eventStream{pe, re} {
		for txid := uint64(1); txid <= uint64(want.TXID); txid++ {
			ev, data := es.next(t, fmt.Sprintf("tx %d", txid))
			var d replica.TxEventData
			if ev.Type != "tx" || ev.DB != "db" || json.Unmarshal(data, &d) != nil || d.TXID != fmt.Sprintf("%016x", txid) ||
				d.PageSize != 4096 || d.Commit < 2 || time.Since(d.Timestamp) > time.Minute {
				t.Fatalf("event for txid %d: %+v %s", txid, ev, data)
			}
			if txid == uint64(want.TXID) && d.PostApplyChecksum != want.Checksum.String() {
				t.Fatalf("last tx event has checksum %s, the position is %s", d.PostApplyChecksum, want)
			}
		}
	}

	p.Stop()
	ev, data := re.next(t, "primaryChange")
	var d replica.PrimaryEventData
	if ev.Type != "primaryChange" || json.Unmarshal(data, &d) != nil || d.IsPrimary || d.Hostname != "" {
		t.Fatalf("after the primary stopped: %+v %s", ev, data)
	}
}
