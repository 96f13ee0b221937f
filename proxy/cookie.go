package proxy

import (
	"fmt"
	"strconv"
	"strings"
)

// formatTXIDs spells positions as the cookie carries them: each TXID as 16
// hex digits, joined by "-" in the order of the tracked databases. With
// one database this is LiteFS's __txid cookie.
func formatTXIDs(txids []uint64) string {
	a := make([]string, len(txids))
	for i, t := range txids {
		a[i] = fmt.Sprintf("%016x", t)
	}
	return strings.Join(a, "-")
}

// parseTXIDs reads what formatTXIDs writes, for n databases. A value that
// is malformed, names another number of databases, or is all zero is not
// ok: the proxy then ignores it.
func parseTXIDs(v string, n int) ([]uint64, bool) {
	parts := strings.Split(v, "-")
	if v == "" || len(parts) != n {
		return nil, false
	}
	a := make([]uint64, n)
	nonzero := false
	for i, p := range parts {
		if len(p) != 16 {
			return nil, false
		}
		t, err := strconv.ParseUint(p, 16, 64)
		if err != nil {
			return nil, false
		}
		a[i], nonzero = t, nonzero || t > 0
	}
	return a, nonzero
}

// matchAny reports whether path matches any pattern: "*" matches any run
// of characters ("/" included), everything else itself.
func matchAny(patterns []string, path string) bool {
	for _, p := range patterns {
		if matchGlob(p, path) {
			return true
		}
	}
	return false
}

func matchGlob(pattern, s string) bool {
	star := strings.IndexByte(pattern, '*')
	if star < 0 {
		return pattern == s
	}
	if !strings.HasPrefix(s, pattern[:star]) {
		return false
	}
	rest, s := pattern[star+1:], s[star:]
	for i := 0; i <= len(s); i++ {
		if matchGlob(rest, s[i:]) {
			return true
		}
	}
	return false
}

// ValidatePattern returns an error for a path pattern that can never match
// a request path.
func ValidatePattern(p string) error {
	if p == "" {
		return fmt.Errorf("empty pattern")
	}
	if p[0] != '/' && p[0] != '*' {
		return fmt.Errorf("pattern %q: must start with / or * (it is matched against the request path)", p)
	}
	return nil
}
