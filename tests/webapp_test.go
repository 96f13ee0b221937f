package tests

import (
	"bufio"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// webApp is the application the proxy tests put behind each node's proxy:
// an unchanged web app that reads and writes SQLite on the mount, knowing
// nothing of replication. Every response names the node it ran on
// (X-App-Node). It prints "listening" once it accepts connections.
//
//	POST /items (form v)    inserts a row, answers 201 and its id
//	GET  /items             lists the rows, "id v" per line
//	GET  /item?id=N         one row's value
//	GET  /headers           echoes Host and the X-Forwarded headers
//	GET  /events?id=X       a server-sent event stream of 3 events; the
//	                        second waits for GET /ack?id=X (at most 10s)
//	                        and says whether the ack came ("acked") or not
//	                        ("timeout"): a client that acks after reading
//	                        the first event proves it was not buffered
//	GET  /ws                a WebSocket that echoes one text message
//	POST /upload            counts and hashes the body as it streams in:
//	                        "<bytes> <sha256 hex>"
//	GET  /stats             how many writes (POSTs) reached this app
//
// Paths under /forwarded/ are the same handlers; the proxy tests list
// them in always-forward, so they run on the primary.
func webApp(db *sql.DB, args helperArgs, out io.Writer) int {
	// Run by litefs (exec), the app ends with it, even when it is killed.
	go func(ppid int) {
		for range time.Tick(100 * time.Millisecond) {
			if os.Getppid() != ppid {
				os.Exit(0)
			}
		}
	}(os.Getppid())
	var writes atomic.Int64
	mux := http.NewServeMux()
	handle := func(pattern string, h http.HandlerFunc) {
		method, path, _ := strings.Cut(pattern, " ")
		for _, p := range []string{path, "/forwarded" + path} {
			mux.HandleFunc(method+" "+p, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("X-App-Node", args.Name)
				h(w, r)
			})
		}
	}
	handle("POST /items", func(w http.ResponseWriter, r *http.Request) {
		writes.Add(1)
		res, err := db.Exec(`INSERT INTO items (v) VALUES (?)`, r.FormValue("v"))
		if err != nil {
			http.Error(w, "insert: "+err.Error(), http.StatusInternalServerError)
			return
		}
		id, _ := res.LastInsertId()
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintln(w, id)
	})
	handle("GET /items", func(w http.ResponseWriter, r *http.Request) {
		rows, err := db.Query(`SELECT id, v FROM items ORDER BY id`)
		if err != nil {
			http.Error(w, "select: "+err.Error(), http.StatusInternalServerError)
			return
		}
		defer rows.Close()
		var b strings.Builder
		for rows.Next() {
			var id int
			var v string
			if err := rows.Scan(&id, &v); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprintf(&b, "%d %s\n", id, v)
		}
		if err := rows.Err(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		io.WriteString(w, b.String())
	})
	handle("GET /item", func(w http.ResponseWriter, r *http.Request) {
		var v string
		if err := db.QueryRow(`SELECT v FROM items WHERE id = ?`, r.FormValue("id")).Scan(&v); err != nil {
			http.Error(w, "select: "+err.Error(), http.StatusNotFound)
			return
		}
		fmt.Fprintln(w, v)
	})
	handle("GET /headers", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Host: %s\n", r.Host)
		for _, h := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
			fmt.Fprintf(w, "%s: %s\n", h, r.Header.Get(h))
		}
	})
	var acksMu sync.Mutex
	acks := make(map[string]chan struct{})
	handle("GET /events", func(w http.ResponseWriter, r *http.Request) {
		id := r.FormValue("id")
		ack := make(chan struct{})
		acksMu.Lock()
		acks[id] = ack
		acksMu.Unlock()
		defer func() {
			acksMu.Lock()
			delete(acks, id)
			acksMu.Unlock()
		}()
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		fmt.Fprintf(w, "data: 1 %s\n\n", args.Name)
		w.(http.Flusher).Flush()
		how := "acked"
		select {
		case <-r.Context().Done():
			return
		case <-ack:
		case <-time.After(10 * time.Second):
			how = "timeout"
		}
		fmt.Fprintf(w, "data: 2 %s %s\n\n", args.Name, how)
		w.(http.Flusher).Flush()
		fmt.Fprintf(w, "data: 3 %s\n\n", args.Name)
	})
	mux.HandleFunc("GET /ack", func(w http.ResponseWriter, r *http.Request) {
		acksMu.Lock()
		ack, ok := acks[r.FormValue("id")]
		delete(acks, r.FormValue("id"))
		acksMu.Unlock()
		if !ok {
			http.Error(w, "no such stream", http.StatusNotFound)
			return
		}
		close(ack)
	})
	handle("GET /ws", func(w http.ResponseWriter, r *http.Request) { wsEcho(w, r, args.Name) })
	handle("POST /upload", func(w http.ResponseWriter, r *http.Request) {
		writes.Add(1)
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d %x\n", n, h.Sum(nil))
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "writes=%d\n", writes.Load())
	})
	ln, err := net.Listen("tcp", args.Addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "webapp:", err)
		return 2
	}
	fmt.Fprintln(out, "listening")
	// On SIGTERM (forwarded by litefs when it runs the app), finish the
	// requests in flight and exit, as a well-behaved app does.
	srv := &http.Server{Handler: mux}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	shutdown := make(chan struct{})
	go func() {
		defer close(shutdown)
		<-sigs
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, "webapp:", err)
		return 1
	}
	<-shutdown // Serve returns at once; the requests in flight finish here
	return 0
}

// wsGUID is RFC 6455's key suffix.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// wsEcho completes a WebSocket handshake and echoes one text message,
// prefixed with the node's name.
func wsEcho(w http.ResponseWriter, r *http.Request, node string) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "websocket upgrade expected", http.StatusBadRequest)
		return
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\nX-App-Node: %s\r\n\r\n",
		wsAccept(r.Header.Get("Sec-WebSocket-Key")), node)
	if err := rw.Flush(); err != nil {
		return
	}
	msg, err := wsRead(rw.Reader)
	if err != nil {
		return
	}
	_ = wsWrite(conn, []byte(node+": "+string(msg)), false)
}

// wsRead reads one unfragmented frame (payload under 64 KiB), unmasking it.
func wsRead(r *bufio.Reader) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	if hdr[0]&0x80 == 0 {
		return nil, errors.New("fragmented frame")
	}
	n := int(hdr[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, err
		}
		n = int(binary.BigEndian.Uint16(b[:]))
	case 127:
		return nil, errors.New("frame too long")
	}
	var mask [4]byte
	masked := hdr[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(r, mask[:]); err != nil {
			return nil, err
		}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return nil, err
	}
	if masked {
		for i := range p {
			p[i] ^= mask[i%4]
		}
	}
	return p, nil
}

// wsWrite writes one text frame; clients mask theirs.
func wsWrite(w io.Writer, p []byte, mask bool) error {
	b := []byte{0x81}
	m := byte(0)
	if mask {
		m = 0x80
	}
	if len(p) < 126 {
		b = append(b, m|byte(len(p)))
	} else {
		b = append(b, m|126)
		b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
	}
	if mask {
		key := [4]byte{1, 2, 3, 4}
		b = append(b, key[:]...)
		q := make([]byte, len(p))
		for i := range p {
			q[i] = p[i] ^ key[i%4]
		}
		p = q
	}
	_, err := w.Write(append(b, p...))
	return err
}
