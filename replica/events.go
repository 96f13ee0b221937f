package replica

import (
	"encoding/json"
	"net/http"
	"os"
	"time"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
)

// Event is one line of GET /events, in LiteFS's format: "init" first,
// then "tx" for every transaction committed or applied here, and
// "primaryChange" when the node's role or its primary changes.
type Event struct {
	Type string `json:"type"`
	DB   string `json:"db,omitempty"`
	Data any    `json:"data"`
}

// PrimaryEventData is the data of "init" and "primaryChange" events.
type PrimaryEventData struct {
	IsPrimary bool   `json:"isPrimary"`
	Hostname  string `json:"hostname,omitempty"` // the primary's, on a replica connected to it
}

// TxEventData is the data of a "tx" event.
type TxEventData struct {
	TXID              string    `json:"txID"`
	PostApplyChecksum string    `json:"postApplyChecksum"`
	PageSize          uint32    `json:"pageSize"`
	Commit            uint32    `json:"commit"`
	Timestamp         time.Time `json:"timestamp"`
}

// handleEvents streams events until the client goes away. It waits on the
// store's notifications; every transaction after the stream starts is
// reported once, in order (collapsed into the newest if the log no longer
// holds the files between).
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, errBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	primaryData := func() PrimaryEventData {
		p := s.Store.Primary()
		return PrimaryEventData{IsPrimary: p.Self, Hostname: p.Hostname}
	}
	roleChanged, changed := s.Store.RoleChanged(), s.Store.Changed()
	last := primaryData()
	seen := make(map[string]ltx.TXID)
	for _, db := range s.Store.DBs() {
		seen[db.Name()] = db.Pos().TXID
	}
	if enc.Encode(Event{Type: "init", Data: last}) != nil {
		return
	}
	flusher.Flush()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-roleChanged:
			roleChanged = s.Store.RoleChanged()
			if cur := primaryData(); cur != last {
				last = cur
				if enc.Encode(Event{Type: "primaryChange", Data: cur}) != nil {
					return
				}
			}
		case <-changed:
			changed = s.Store.Changed()
			for _, db := range s.Store.DBs() {
				for _, ev := range txEvents(db, seen[db.Name()]) {
					if enc.Encode(ev) != nil {
						return
					}
				}
				seen[db.Name()] = db.Pos().TXID
			}
		}
		flusher.Flush()
	}
}

// txEvents returns the "tx" events of db after TXID after, up to its
// position.
func txEvents(db *DB, after ltx.TXID) []Event {
	pos := db.Pos()
	if pos.TXID <= after {
		return nil
	}
	var a []Event
	next := after + 1
	for _, f := range db.Log().Files() {
		if f.MaxTXID < next || f.MaxTXID > pos.TXID {
			continue
		}
		path := db.Log().Path(f.MinTXID, f.MaxTXID)
		hdr, post, err := readHeaderTrailer(path)
		if err != nil || f.MinTXID > next {
			a = nil // a gap: report the newest only
			break
		}
		a = append(a, txEvent(db.Name(), hdr, post))
		next = f.MaxTXID + 1
	}
	if next <= pos.TXID || a == nil {
		hdr := db.Log().LastHeader()
		a = []Event{txEvent(db.Name(), hdr, pos.Checksum)}
		a[0].Data.(*TxEventData).TXID = pos.TXID.String()
	}
	return a
}

func txEvent(name string, hdr ltx.Header, post checksum.Checksum) Event {
	return Event{Type: "tx", DB: name, Data: &TxEventData{
		TXID: hdr.MaxTXID.String(), PostApplyChecksum: post.String(), PageSize: hdr.PageSize, Commit: hdr.Commit,
		Timestamp: time.UnixMilli(hdr.Timestamp).UTC(),
	}}
}

// readHeaderTrailer reads an LTX file's header and post-apply checksum.
func readHeaderTrailer(path string) (ltx.Header, checksum.Checksum, error) {
	f, err := os.Open(path)
	if err != nil {
		return ltx.Header{}, 0, err
	}
	defer f.Close()
	d, err := ltx.NewDecoder(f)
	if err != nil {
		return ltx.Header{}, 0, err
	}
	post, err := ltx.ReadTrailer(path)
	if err != nil {
		return ltx.Header{}, 0, err
	}
	return d.Header(), post, nil
}
