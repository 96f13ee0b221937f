package replica

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
)

// Headers of POST /import and GET /export.
const (
	// HeaderPosition carries the position (txid/checksum) an export holds.
	HeaderPosition = "Litefs-Position"
	// HeaderPrimary and HeaderPrimaryURL name the primary in a replica's
	// not-primary answer to POST /import, when it knows them.
	HeaderPrimary    = "Litefs-Primary"
	HeaderPrimaryURL = "Litefs-Primary-Url"
)

// errUploadCut is a request body that ended before its Content-Length.
var errUploadCut = errors.New("the upload was cut off")

// handleImport serves POST /import?name=DB[&no-check=1]: the body is a
// SQLite database file, which becomes the database's next transaction
// (Store.Import). The answer is an ImportResult in JSON, or an error
// message with a status: 400 invalid file or name, 409 not the primary
// (with HeaderPrimary and HeaderPrimaryURL when known), 409 leaving WAL
// mode with connections open, 503 fenced or stepping down, 507 disk full.
func (s *Server) handleImport(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	name := q.Get("name")
	noCheck, _ := strconv.ParseBool(q.Get("no-check"))
	if err := s.Store.checkImport(); err != nil {
		// Refused before the body is read: a client that sent
		// "Expect: 100-continue" never sends it.
		s.transferError(w, "import", name, fmt.Errorf("import %q: %w", name, err))
		return
	}
	body := &uploadReader{r: r.Body}
	res, err := s.Store.Import(r.Context(), name, body, ImportOptions{NoCheck: noCheck, Gate: s.Gate})
	if err != nil {
		s.transferError(w, "import", name, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(res)
}

// handleExport serves GET /export?name=DB: the body is a copy of the
// database at one position (DB.Export), named in HeaderPosition, with its
// size in Content-Length. Errors: 400 invalid name, 404 unknown database
// or no transaction yet.
func (s *Server) handleExport(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	f, res, err := s.Store.ExportFile(r.Context(), name)
	if err != nil {
		s.transferError(w, "export", name, err)
		return
	}
	defer os.Remove(f.Name())
	defer f.Close()
	w.Header().Set("Content-Type", "application/vnd.sqlite3")
	w.Header().Set("Content-Length", strconv.FormatInt(res.Size, 10))
	w.Header().Set(HeaderPosition, res.Pos.String())
	if _, err := io.Copy(w, f); err != nil {
		s.Logger.Warn("export: sending the copy failed", slog.String(LogKeyDB, name), slog.Any(LogKeyError, err))
	}
}

// transferError answers an import or export that failed with the status
// its error calls for; a replica names the primary it knows.
func (s *Server) transferError(w http.ResponseWriter, op, name string, err error) {
	if errors.Is(err, ErrNotPrimary) {
		p := s.Store.Primary()
		if p.Hostname != "" {
			w.Header().Set(HeaderPrimary, p.Hostname)
		}
		if p.URL != "" {
			w.Header().Set(HeaderPrimaryURL, p.URL)
			err = fmt.Errorf("%w; its API is at %s", err, p.URL)
		}
	}
	if status, _ := apiStatus(err); status == http.StatusInternalServerError {
		s.Logger.Error(op+" failed", slog.String(LogKeyDB, name), slog.Any(LogKeyError, err))
	} else {
		s.Logger.Info(op+" refused", slog.String(LogKeyDB, name), slog.Int("status", status), slog.Any(LogKeyError, err))
	}
	writeError(w, err)
}

// uploadReader tells a request body cut off before its end (the client
// went away) from the end of the file.
type uploadReader struct {
	r io.Reader
	n int64
}

func (u *uploadReader) Read(p []byte) (int, error) {
	n, err := u.r.Read(p)
	u.n += int64(n)
	if err != nil && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("%w after %d bytes: %v; nothing was changed, send it again", errUploadCut, u.n, err)
	}
	return n, err
}
