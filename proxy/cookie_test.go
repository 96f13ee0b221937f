package proxy

import (
	"reflect"
	"testing"
)

func TestParseTXIDs(t *testing.T) {
	for _, tt := range []struct {
		v    string
		n    int
		want []uint64
		ok   bool
	}{
		{"0000000000000033", 1, []uint64{0x33}, true},
		{"00000000000000ff-0000000000000001", 2, []uint64{0xff, 1}, true},
		{"0000000000000000", 1, nil, false}, // nothing to wait for
		{"33", 1, nil, false},               // not 16 digits
		{"000000000000003g", 1, nil, false}, // not hex
		{"0000000000000033", 2, nil, false}, // another list of databases
		{"0000000000000033-0000000000000001", 1, nil, false},
		{"", 1, nil, false},
		{"-", 1, nil, false},
		{"+000000000000033", 1, nil, false},
	} {
		got, ok := parseTXIDs(tt.v, tt.n)
		if ok != tt.ok || (ok && !reflect.DeepEqual(got, tt.want)) {
			t.Errorf("parseTXIDs(%q, %d) = %v, %v; want %v, %v", tt.v, tt.n, got, ok, tt.want, tt.ok)
		}
	}
	if got := formatTXIDs([]uint64{0x33, 0}); got != "0000000000000033-0000000000000000" {
		t.Errorf("formatTXIDs = %q", got)
	}
}

func TestMatchAny(t *testing.T) {
	for _, tt := range []struct {
		pattern, path string
		want          bool
	}{
		{"/login", "/login", true},
		{"/login", "/login/x", false},
		{"/static/*", "/static/a/b.css", true},
		{"/static/*", "/static", false},
		{"*.png", "/img/a.png", true},
		{"*.png", "/img/a.png.html", false},
		{"/a/*/edit", "/a/1/2/edit", true},
		{"/a/*/edit", "/a/1/edit/x", false},
		{"*", "/", true},
	} {
		if got := matchAny([]string{tt.pattern}, tt.path); got != tt.want {
			t.Errorf("match(%q, %q) = %v, want %v", tt.pattern, tt.path, got, tt.want)
		}
	}
}
