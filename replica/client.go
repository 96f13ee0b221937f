package replica

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/litefs-project/litefs/ltx"
)

// DefaultCallTimeout bounds a call to a node's API that has no deadline of
// its own (the stream and waits excepted).
const DefaultCallTimeout = 10 * time.Second

// Client calls nodes' APIs: the replication stream, /info, /handoff. Error
// answers come back wrapped around the sentinel the server returned, so
// callers match them with errors.Is (ErrNotPrimary, ErrNoCandidate, ...).
// It is safe for concurrent use.
type Client struct {
	HTTP *http.Client
	// CallTimeout bounds calls that have no deadline of their own.
	CallTimeout time.Duration
	// Secret is the cluster secret sent with every request.
	Secret string
}

// NewClient returns a client with timeouts fit for a cluster: an
// unreachable node fails fast, not after the system's TCP timeouts.
func NewClient() *Client {
	return &Client{
		HTTP: &http.Client{Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
			TLSHandshakeTimeout: 5 * time.Second,
			// An import asks "Expect: 100-continue": the file is sent only
			// once the node agrees to take it (a replica refuses at once).
			ExpectContinueTimeout: time.Second,
			ResponseHeaderTimeout: 10 * time.Second,
			MaxIdleConnsPerHost:   4,
			IdleConnTimeout:       90 * time.Second,
		}},
		CallTimeout: DefaultCallTimeout,
	}
}

// NewClientWith returns a client that sends the cluster secret (if any)
// and, if files name any, uses TLS with them (see TLSFiles.ClientConfig).
func NewClientWith(secret string, files TLSFiles) (*Client, error) {
	c := NewClient()
	c.Secret = secret
	if files.CA != "" || files.Enabled() {
		cfg, err := files.ClientConfig()
		if err != nil {
			return nil, err
		}
		c.HTTP.Transport.(*http.Transport).TLSClientConfig = cfg
	}
	return c, nil
}

// Error is an error answer from a node's API. It unwraps to the sentinel
// error its code names, if any.
type Error struct {
	Method, URL string
	Status      int
	Code        string // the server's error code, "" if none
	Message     string
	// PrimaryURL is the primary's API URL a replica named in a
	// not-primary answer, if it knows it.
	PrimaryURL string
	sentinel   error
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.URL, e.Status, http.StatusText(e.Status), e.Message)
}

func (e *Error) Unwrap() error { return e.sentinel }

// readError turns a non-200 answer into an *Error.
func readError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<10))
	e := &Error{Method: resp.Request.Method, URL: resp.Request.URL.Redacted(), Status: resp.StatusCode,
		Message: strings.TrimSpace(string(b)), PrimaryURL: resp.Header.Get(HeaderPrimaryURL)}
	var body apiError
	if json.Unmarshal(b, &body) == nil && body.Error != "" {
		e.Message, e.Code = body.Error, body.Code
	}
	for _, a := range apiErrors {
		if a.code != "" && a.code == e.Code {
			e.sentinel = a.err
			break
		}
	}
	return e
}

// do sends a request to base+path and returns the answer if it is a 200.
func (c *Client) do(ctx context.Context, method, base, path string, q url.Values, body io.Reader) (*http.Response, error) {
	u := strings.TrimRight(base, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.send(req)
}

// send sends req with the cluster secret and returns the answer if it is
// a 200.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	if c.Secret != "" {
		req.Header.Set("Authorization", "Bearer "+c.Secret)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return resp, nil
}

// call sends a request and decodes the JSON answer into out.
func (c *Client) call(ctx context.Context, method, base, path string, q url.Values, out any) error {
	if _, ok := ctx.Deadline(); !ok && c.CallTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.CallTimeout)
		defer cancel()
	}
	resp, err := c.do(ctx, method, base, path, q, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: read the answer: %w", method, base+path, err)
	}
	return nil
}

// Info returns the node's GET /info.
func (c *Client) Info(ctx context.Context, base string) (NodeInfo, error) {
	var info NodeInfo
	err := c.call(ctx, http.MethodGet, base, "/info", nil, &info)
	return info, err
}

// WaitPositions waits until the node at base is at every position in want
// and returns its info. The node answers as soon as it gets there (it
// waits on its own notifications, not by polling); the wait ends with
// ctx, or with an error naming what the node has.
func (c *Client) WaitPositions(ctx context.Context, base string, want map[string]ltx.Pos) (NodeInfo, error) {
	var last NodeInfo
	for {
		wait := 5 * time.Second // within CallTimeout
		if d, ok := ctx.Deadline(); ok {
			wait = min(wait, max(time.Until(d), time.Millisecond))
		}
		q := url.Values{"wait": {wait.String()}}
		for name, pos := range want {
			q.Add("want", name+"="+pos.String())
		}
		var info NodeInfo
		err := c.call(ctx, http.MethodGet, base, "/info", q, &info)
		if err == nil {
			last = info
			if info.Has(want) {
				return info, nil
			}
		}
		if ctx.Err() != nil {
			return last, fmt.Errorf("waiting for %s to reach %v (it has %v): %w", base, want, last.Positions, ctx.Err())
		}
		if err != nil {
			// Not reachable now: try again shortly, within ctx.
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// Handoff asks the primary at base to hand its lease to the candidate to
// ("" for the best connected one).
func (c *Client) Handoff(ctx context.Context, base, to string) (HandoffResult, error) {
	var res HandoffResult
	q := url.Values{}
	if to != "" {
		q.Set("to", to)
	}
	err := c.call(ctx, http.MethodPost, base, "/handoff", q, &res)
	return res, err
}

// ack reports to the primary at base what this candidate holds durably
// (POST /ack). It travels on the client's keep-alive connections.
func (c *Client) ack(ctx context.Context, base string, req ackRequest) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	resp, err := c.do(ctx, http.MethodPost, base, "/ack", nil, bytes.NewReader(body))
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.Body.Close()
}

// stream opens the replication stream at the primary base.
func (c *Client) stream(ctx context.Context, base string, req streamRequest) (io.ReadCloser, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	resp, err := c.do(ctx, http.MethodPost, base, "/stream", nil, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Import sends the SQLite database file of size bytes read from body to
// the node at base as database name's next transaction (POST /import). It
// asks for "100-continue", so a node that refuses at once (a replica) is
// not sent the file; its error's PrimaryURL names the primary if known.
func (c *Client) Import(ctx context.Context, base, name string, body io.Reader, size int64, noCheck bool) (ImportResult, error) {
	q := url.Values{"name": {name}}
	if noCheck {
		q.Set("no-check", "1")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(base, "/")+"/import?"+q.Encode(), body)
	if err != nil {
		return ImportResult{}, err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/vnd.sqlite3")
	req.Header.Set("Expect", "100-continue")
	resp, err := c.send(req)
	if err != nil {
		return ImportResult{}, err
	}
	defer resp.Body.Close()
	var res ImportResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return ImportResult{}, fmt.Errorf("read the answer of %s: %w", req.URL.Redacted(), err)
	}
	return res, nil
}

// ExportStream is an export being received.
type ExportStream struct {
	Body io.ReadCloser // the database file; the caller closes it
	Pos  ltx.Pos       // the position it holds
	Size int64         // its length in bytes
}

// Export asks the node at base for a copy of database name (GET /export).
func (c *Client) Export(ctx context.Context, base, name string) (ExportStream, error) {
	resp, err := c.do(ctx, http.MethodGet, base, "/export", url.Values{"name": {name}}, nil)
	if err != nil {
		return ExportStream{}, err
	}
	u := resp.Request.URL.Redacted()
	pos, err := ltx.ParsePos(resp.Header.Get(HeaderPosition))
	if err != nil {
		resp.Body.Close()
		return ExportStream{}, fmt.Errorf("%s: %s header: %w", u, HeaderPosition, err)
	}
	if resp.ContentLength < 0 {
		resp.Body.Close()
		return ExportStream{}, errors.New(u + ": no Content-Length")
	}
	return ExportStream{Body: resp.Body, Pos: pos, Size: resp.ContentLength}, nil
}

// IsUnreachable reports whether err means the node could not be reached
// (as opposed to an answer from it).
func IsUnreachable(err error) bool {
	var e *Error
	return err != nil && !errors.As(err, &e)
}
