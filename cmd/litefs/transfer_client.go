package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/litefs-project/litefs/ltx"
	"github.com/litefs-project/litefs/replica"
)

// The node API's transfer calls, one function per call: each takes a
// context and the node's base URL and returns typed results, or an
// *apiError for an answer that is not 200.

// apiError is a node's answer other than 200 OK.
type apiError struct {
	Method, URL string
	Status      int
	Message     string
	// PrimaryURL is the primary's API URL a replica named in a 421 answer.
	PrimaryURL string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.URL, e.Status, http.StatusText(e.Status), e.Message)
}

// newAPIError reads a failed answer.
func newAPIError(req *http.Request, resp *http.Response) *apiError {
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return &apiError{Method: req.Method, URL: req.URL.String(), Status: resp.StatusCode,
		Message: strings.TrimSpace(string(msg)), PrimaryURL: resp.Header.Get(replica.HeaderPrimaryURL)}
}

// postImport sends a SQLite database file of size bytes from body to
// POST /import on the node at base. The request asks for "100-continue",
// so a node that refuses at once (not the primary) is not sent the file.
func postImport(ctx context.Context, base, name string, body io.Reader, size int64, noCheck bool) (replica.ImportResult, error) {
	u := strings.TrimRight(base, "/") + "/import?name=" + url.QueryEscape(name)
	if noCheck {
		u += "&no-check=1"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, body)
	if err != nil {
		return replica.ImportResult{}, err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/vnd.sqlite3")
	req.Header.Set("Expect", "100-continue")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return replica.ImportResult{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return replica.ImportResult{}, newAPIError(req, resp)
	}
	var res replica.ImportResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return replica.ImportResult{}, fmt.Errorf("read the answer of %s: %w", u, err)
	}
	return res, nil
}

// exportResponse is an export being received.
type exportResponse struct {
	Body io.ReadCloser // the database file; the caller closes it
	Pos  ltx.Pos       // the position it holds
	Size int64         // its length in bytes
}

// getExport asks GET /export on the node at base for a copy of the
// database.
func getExport(ctx context.Context, base, name string) (exportResponse, error) {
	u := strings.TrimRight(base, "/") + "/export?name=" + url.QueryEscape(name)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return exportResponse{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return exportResponse{}, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return exportResponse{}, newAPIError(req, resp)
	}
	pos, err := ltx.ParsePos(resp.Header.Get(replica.HeaderPosition))
	if err != nil {
		resp.Body.Close()
		return exportResponse{}, fmt.Errorf("%s: %s header: %w", u, replica.HeaderPosition, err)
	}
	if resp.ContentLength < 0 {
		resp.Body.Close()
		return exportResponse{}, errors.New(u + ": no Content-Length")
	}
	return exportResponse{Body: resp.Body, Pos: pos, Size: resp.ContentLength}, nil
}
