package fuse

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"bazil.org/fuse"

	"github.com/litefs-project/litefs/replica"
)

// kind is what a name in the mount refers to.
type kind int

const (
	kindDB kind = iota
	kindJournal
	kindWAL
	kindSHM
	kindSuperJournal // <db>-mj<hex>: a transaction over several databases
	kindPos
	kindPrimary // .primary: the primary's hostname, on a connected replica
	kindLag     // .lag: a replica's lag in milliseconds
)

// Special files at the root, as LiteFS has them.
const (
	primaryFile = ".primary"
	lagFile     = ".lag"
)

// suffixes maps name endings to the companion file kinds.
var suffixes = []struct {
	suffix string
	kind   kind
}{
	{"-journal", kindJournal},
	{"-wal", kindWAL},
	{"-shm", kindSHM},
	{"-pos", kindPos},
}

// parseName splits a name in the mount into a database name and a kind.
func parseName(name string) (string, kind) {
	for _, s := range suffixes {
		if base, ok := strings.CutSuffix(name, s.suffix); ok {
			return base, s.kind
		}
	}
	if base, _, ok := replica.SplitSuperJournal(name); ok {
		return base, kindSuperJournal
	}
	return name, kindDB
}

// isCompanion reports whether k is a file SQLite keeps beside a database.
func isCompanion(k kind) bool {
	return k == kindJournal || k == kindWAL || k == kindSHM || k == kindSuperJournal
}

// node is one incarnation of a name: a recreated journal gets a new node so
// the kernel never mixes its cache with the old file's, and a <db>-pos file
// gets a new node at each position, so its page cache never goes stale.
type node struct {
	id      fuse.NodeID
	name    string
	kind    kind
	db      *replica.DB
	pos     string // the content of a -pos node: its position when created
	nlookup uint64 // kernel references; the node is dropped at zero once gone
	gone    bool   // unlinked or replaced

	// staged is set while the name is a plain file being copied in (see
	// stage.go); db is then nil or the empty database it replaced.
	staged *staged

	mu sync.Mutex
	f  *os.File // companion files: the real file, opened at first use
}

// file returns the real file behind a companion node, opening it at first
// use. The kernel sends no open requests (see FS.open), so one file serves
// every process; it stays open until the kernel forgets the node.
func (n *node) file() (*os.File, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.f != nil {
		return n.f, nil
	}
	if n.gone {
		return nil, syscall.ESTALE // unlinked before first use
	}
	f, err := os.OpenFile(n.realPath(), os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	n.f = f
	return f, nil
}

func (n *node) closeFile() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.f != nil {
		_ = n.f.Close()
		n.f = nil
	}
}

// realPath returns the file in the data directory behind a companion file.
func (n *node) realPath() string {
	switch n.kind {
	case kindJournal:
		return n.db.JournalPath()
	case kindWAL:
		return n.db.WALPath()
	case kindSHM:
		return n.db.SHMPath()
	case kindSuperJournal:
		_, suffix, _ := replica.SplitSuperJournal(n.name)
		return n.db.SuperJournalPath(suffix)
	default:
		return n.db.Path()
	}
}

// handle is an open directory or special file: its content, fixed at open.
type handle struct {
	dir []byte
	// special is a special file's content as of its open: a reader that
	// reads it in several calls must not get the start of one value and
	// the end of the next.
	special []byte
}

// resolve returns the live node for name, creating it if the name exists.
// fs.mu must be held.
func (fs *FS) resolve(name string) *node {
	if name == primaryFile || name == lagFile {
		return fs.resolveSpecial(name)
	}
	base, k := parseName(name)
	if n := fs.names[name]; n != nil && n.stage() != nil {
		return n
	}
	db := fs.Store.DB(base)
	if n := fs.names[name]; n != nil {
		if n.db == db && (k != kindPos || n.pos == posContent(n.db)) {
			return n
		}
		// The database was replaced (deleted, or moved aside on a replica),
		// or its position moved: a new node shows what is there now.
		fs.unlink(name)
	}
	if db == nil {
		return nil
	}
	n := &node{name: name, kind: k, db: db}
	if k == kindPos {
		n.pos = posContent(db)
	}
	if isCompanion(k) {
		if _, err := os.Lstat(n.realPath()); err != nil {
			return nil
		}
	}
	fs.addNode(n)
	return n
}

// resolveSpecial returns the node of .primary or .lag, which exist only on
// a replica (.primary only while it is connected). fs.mu must be held.
func (fs *FS) resolveSpecial(name string) *node {
	exists := !fs.Store.IsPrimary() && (name == lagFile || fs.Store.PrimaryHostname() != "")
	n := fs.names[name]
	if !exists {
		if n != nil {
			fs.unlink(name)
		}
		return nil
	}
	if n == nil {
		n = &node{name: name, kind: kindPrimary}
		if name == lagFile {
			n.kind = kindLag
		}
		fs.addNode(n)
	}
	return n
}

// specialContent returns the content of .primary, .lag or a -pos file.
func (fs *FS) specialContent(n *node) string {
	switch n.kind {
	case kindPrimary:
		return fs.Store.PrimaryHostname() + "\n"
	case kindLag:
		return fmt.Sprintf("%d\n", fs.Store.Lag().Milliseconds())
	default:
		return n.pos
	}
}

func isSpecial(k kind) bool { return k == kindPos || k == kindPrimary || k == kindLag }

// addNode registers a new node as the live node of its name. fs.mu held.
func (fs *FS) addNode(n *node) {
	n.id = fs.nextNode
	fs.nextNode++
	fs.nodes[n.id] = n
	fs.names[n.name] = n
}

// unlink marks the live node of name gone. fs.mu held.
func (fs *FS) unlink(name string) {
	if n := fs.names[name]; n != nil {
		n.gone = true
		delete(fs.names, name)
		if n.nlookup == 0 {
			delete(fs.nodes, n.id)
			n.closeFile()
		}
	}
}

func (fs *FS) forget(id fuse.NodeID, count uint64) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	n := fs.nodes[id]
	if n == nil {
		return
	}
	if count >= n.nlookup {
		n.nlookup = 0
	} else {
		n.nlookup -= count
	}
	if n.nlookup == 0 && n.gone {
		delete(fs.nodes, id)
		n.closeFile()
	}
}

func (fs *FS) node(id fuse.NodeID) *node {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.nodes[id]
}

// attr returns the attributes of n.
func (fs *FS) attr(n *node) (fuse.Attr, error) {
	a := fuse.Attr{Inode: uint64(n.id), Nlink: 1, Mode: 0o644, Valid: fs.CacheTTL, BlockSize: 4096}
	if isSpecial(n.kind) {
		a.Mode, a.Size, a.Valid = 0o444, uint64(len(fs.specialContent(n))), 0
		a.Mtime = time.Now()
		return a, nil
	}
	var (
		fi  os.FileInfo
		err error
	)
	if st := n.stage(); st != nil {
		fi, err = st.f.Stat()
	} else {
		fi, err = os.Stat(n.realPath())
	}
	if err != nil {
		return a, err
	}
	a.Size = uint64(fi.Size())
	a.Blocks = (a.Size + 511) / 512
	a.Mtime, a.Ctime, a.Atime = fi.ModTime(), fi.ModTime(), fi.ModTime()
	return a, nil
}

func (fs *FS) rootAttr() fuse.Attr {
	return fuse.Attr{Inode: uint64(fuse.RootID), Mode: os.ModeDir | 0o755, Nlink: 2, Valid: fs.CacheTTL,
		Mtime: fs.started, Ctime: fs.started, Atime: fs.started}
}

func posContent(db *replica.DB) string { return db.Pos().String() + "\n" }

func (fs *FS) addHandle(h *handle) fuse.HandleID {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	id := fs.nextFH
	fs.nextFH++
	fs.handles[id] = h
	return id
}

func (fs *FS) handleOf(id fuse.HandleID) *handle {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.handles[id]
}
