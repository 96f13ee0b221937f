package checksum_test

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/litefs-project/litefs/checksum"
)

func TestPage_Flag(t *testing.T) {
	// Equality with the LTX codec's page checksum is checked in the ltx
	// package (TestChecksum_MatchesCodec); here, the flag and the page
	// number's part in it.
	got := checksum.Page(1, make([]byte, 4096))
	if got&checksum.Flag == 0 {
		t.Fatalf("flag not set: %s", got)
	}
	if got == checksum.Page(2, make([]byte, 4096)) {
		t.Fatal("page number does not change the checksum")
	}
}

func TestTable_IncrementalEqualsRecompute(t *testing.T) {
	seed := rand.Int63()
	t.Logf("seed=%d", seed)
	rng := rand.New(rand.NewSource(seed))
	const pageSize = 512
	var db []byte
	tbl := checksum.NewTable(pageSize)
	for step := 0; step < 500; step++ {
		switch op := rng.Intn(10); {
		case op < 7: // write a page, possibly growing
			pgno := uint32(rng.Intn(len(db)/pageSize+3)) + 1
			page := make([]byte, pageSize)
			rng.Read(page)
			if end := int(pgno) * pageSize; end > len(db) {
				db = append(db, make([]byte, end-len(db))...)
			}
			copy(db[(pgno-1)*pageSize:], page)
			tbl.Set(pgno, page)
		default: // truncate
			n := uint32(rng.Intn(len(db)/pageSize + 1))
			db = db[:n*pageSize]
			tbl.Truncate(n)
		}
		want, err := checksum.Read(bytes.NewReader(db), pageSize)
		if err != nil {
			t.Fatal(err)
		}
		if got := tbl.Sum(); got != want.Sum() {
			t.Fatalf("step %d: incremental %s != recompute %s", step, got, want.Sum())
		}
		if tbl.PageN() != uint32(len(db)/pageSize) {
			t.Fatalf("step %d: pageN %d, want %d", step, tbl.PageN(), len(db)/pageSize)
		}
	}
}

func TestTable_LockPageExcluded(t *testing.T) {
	const pageSize = 65536
	lock := checksum.LockPgno(pageSize)
	tbl := checksum.NewTable(pageSize)
	tbl.Truncate(lock + 1)
	before := tbl.Sum()
	tbl.Set(lock, bytes.Repeat([]byte{1}, pageSize))
	if tbl.Sum() != before {
		t.Fatal("lock page changed the checksum")
	}
	if tbl.PageChecksum(lock) != 0 {
		t.Fatal("lock page has a checksum")
	}
}

func TestRead_PartialPage(t *testing.T) {
	if _, err := checksum.Read(bytes.NewReader(make([]byte, 1000)), 512); err == nil {
		t.Fatal("expected error for partial page")
	}
}

func TestTable_EmptyIsZero(t *testing.T) {
	tbl := checksum.NewTable(4096)
	if tbl.Sum() != 0 {
		t.Fatalf("empty sum %s", tbl.Sum())
	}
	tbl.Truncate(2)
	tbl.Truncate(0)
	if tbl.Sum() != 0 {
		t.Fatalf("truncated-to-empty sum %s", tbl.Sum())
	}
}

func TestTable_PeekEqualsApply(t *testing.T) {
	seed := rand.Int63()
	t.Logf("seed=%d", seed)
	rng := rand.New(rand.NewSource(seed))
	tbl := checksum.NewTable(512)
	for step := 0; step < 200; step++ {
		pageN := uint32(rng.Intn(20))
		var set []checksum.PageSum
		for pgno := uint32(1); pgno <= pageN; pgno++ {
			if pgno > tbl.PageN() || rng.Intn(3) == 0 {
				page := make([]byte, 512)
				rng.Read(page)
				set = append(set, checksum.PageSum{Pgno: pgno, Sum: checksum.Page(pgno, page)})
			}
		}
		peek := tbl.Peek(pageN, set)
		tbl.Apply(pageN, set)
		if tbl.Sum() != peek {
			t.Fatalf("step %d: peek %s, apply %s", step, peek, tbl.Sum())
		}
	}
}

func TestReadFile_EqualsRead(t *testing.T) {
	seed := rand.Int63()
	t.Logf("seed=%d", seed)
	rng := rand.New(rand.NewSource(seed))
	for _, pages := range []int{0, 1, 7, 3001} {
		db := make([]byte, pages*512)
		rng.Read(db)
		path := filepath.Join(t.TempDir(), "db")
		if err := os.WriteFile(path, db, 0o644); err != nil {
			t.Fatal(err)
		}
		want, err := checksum.Read(bytes.NewReader(db), 512)
		if err != nil {
			t.Fatal(err)
		}
		got, err := checksum.File(path, 512)
		if err != nil {
			t.Fatal(err)
		}
		if got.Sum() != want.Sum() || got.PageN() != want.PageN() {
			t.Errorf("%d pages: ReadFile %s (%d pages), Read %s (%d pages)", pages, got.Sum(), got.PageN(), want.Sum(), want.PageN())
		}
		for pgno := uint32(1); pgno <= want.PageN(); pgno++ {
			if got.PageChecksum(pgno) != want.PageChecksum(pgno) {
				t.Errorf("%d pages: page %d differs", pages, pgno)
				break
			}
		}
	}
	t.Run("PartialPage", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "db")
		if err := os.WriteFile(path, make([]byte, 1000), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := checksum.File(path, 512); err == nil {
			t.Fatal("expected error for partial page")
		}
	})
}
