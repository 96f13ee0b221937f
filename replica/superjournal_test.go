package replica

import (
	"encoding/binary"
	"testing"
)

func TestSplitSuperJournal(t *testing.T) {
	for _, tt := range []struct {
		name, db, suffix string
		ok               bool
	}{
		{"app.db-mjECD7A7994", "app.db", "ECD7A7994", true},
		{"a-mj-mj000000900", "a-mj", "000000900", true},
		{"app.db-mjecd7a7994", "", "", false}, // SQLite writes uppercase
		{"app.db-mjECD7A799", "", "", false},
		{"app.db-mjECD7A79944", "", "", false},
		{"-mjECD7A7994", "", "", false},
		{"app.db", "", "", false},
		{"app.db-journal", "", "", false},
	} {
		db, suffix, ok := SplitSuperJournal(tt.name)
		if db != tt.db || suffix != tt.suffix || ok != tt.ok {
			t.Errorf("SplitSuperJournal(%q) = %q, %q, %t; want %q, %q, %t", tt.name, db, suffix, ok, tt.db, tt.suffix, tt.ok)
		}
	}
}

// superJournalTail is what SQLite appends to a journal that takes part in
// a transaction over several databases.
func superJournalTail(name string, pageSize uint32) []byte {
	var b []byte
	b = binary.BigEndian.AppendUint32(b, 0x40000000/pageSize+1)
	b = append(b, name...)
	var sum uint32
	for _, c := range []byte(name) {
		sum += uint32(c)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = binary.BigEndian.AppendUint32(b, sum)
	return append(b, journalMagic...)
}

func TestReadSuperJournalName(t *testing.T) {
	const name = "/litefs/app.db-mjECD7A7994"
	hdr := make([]byte, 512)
	copy(hdr, journalMagic)
	good := append(append([]byte{}, hdr...), superJournalTail(name, 4096)...)
	if got := readSuperJournalName(good); got != name {
		t.Errorf("got %q, want %q", got, name)
	}
	bad := append([]byte{}, good...)
	bad[len(bad)-20] ^= 1 // a byte of the name: the sum no longer matches
	for what, b := range map[string][]byte{
		"no name":      hdr,
		"bad checksum": bad,
		"too long":     append(append([]byte{}, journalMagic...), 0, 0, 1, 0, 0, 0, 0, 0),
		"short":        journalMagic,
	} {
		if got := readSuperJournalName(b); got != "" {
			t.Errorf("%s: got %q, want none", what, got)
		}
	}
}

func FuzzReadSuperJournalName(f *testing.F) {
	f.Add(append(make([]byte, 28), superJournalTail("/m/a.db-mj000000900", 4096)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if name := readSuperJournalName(b); len(name) > len(b) {
			t.Fatalf("name of %d bytes from %d", len(name), len(b))
		}
	})
}
