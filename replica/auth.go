package replica

import (
	"crypto/subtle"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
)

// ErrUnauthorized is returned for a request to the node API without the
// cluster secret, or with a wrong one.
var ErrUnauthorized = errors.New("unauthorized: the node API needs the cluster secret (http.secret) as \"Authorization: Bearer SECRET\"")

// authenticator checks the cluster secret on every request and logs each
// refused source once.
type authenticator struct {
	secret []byte
	public func(*http.Request) bool // requests that need no secret
	logger *slog.Logger

	mu     sync.Mutex
	logged map[string]bool // source addresses already logged
}

func (a *authenticator) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.public != nil && a.public(r) {
			next.ServeHTTP(w, r)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), a.secret) != 1 {
			a.refused(r, ok)
			w.Header().Set("WWW-Authenticate", `Bearer realm="litefs"`)
			writeError(w, ErrUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// refused logs a refused request, once per source address.
func (a *authenticator) refused(r *http.Request, hadCredentials bool) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a.mu.Lock()
	seen := a.logged[host]
	if !seen {
		if a.logged == nil || len(a.logged) > 10000 {
			a.logged = make(map[string]bool)
		}
		a.logged[host] = true
	}
	a.mu.Unlock()
	if seen {
		return
	}
	why := "no credentials"
	if hadCredentials {
		why = "wrong secret"
	}
	a.logger.Warn("refused a request to the node API without the cluster secret; later refusals from this address are not logged",
		slog.String("remote", host), slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.String("reason", why))
}
