package ltx

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc64"
	"io"

	"github.com/pierrec/lz4/v4"
	sltx "github.com/superfly/ltx"

	"github.com/litefs-project/litefs/checksum"
)

// SnapshotReader reads an LTX snapshot page by page as it arrives, in one
// pass: it checks the file's checksum and structure (pages 1 to the commit
// size in order, all but the lock page; the page index describing exactly
// the frames read; the trailer), and computes each page's checksum on the
// way, which it returns with the page so that the caller need not compute
// it again. Close checks that the pages have the trailer's post-apply
// checksum. Pages read before a failed Close must not be trusted.
//
// It reads the files Encoder writes (the LZ4 block format of the codec).
type SnapshotReader struct {
	r    *bufio.Reader
	hdr  Header
	hash hash.Hash64 // of the file as the codec defines it (uncompressed pages)
	n    int64       // bytes read from r

	lock     uint32
	prev     uint32            // last page read
	sum      checksum.Checksum // XOR of the page checksums read, without the flag
	frames   []frame           // where each page's frame was, for the index
	comp     []byte            // a compressed page
	done     bool              // the end of the pages was read
	scratch8 [8]byte
}

type frame struct {
	pgno         uint32
	offset, size int64
}

var crcISO = crc64.MakeTable(crc64.ISO)

// NewSnapshotReader reads the header from r, which must start a snapshot.
func NewSnapshotReader(r io.Reader) (*SnapshotReader, error) {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 256<<10)
	}
	d := &SnapshotReader{r: br, hash: crc64.New(crcISO)}
	b := make([]byte, sltx.HeaderSize)
	if err := d.read(b); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	var h sltx.Header
	if err := h.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("decode header: %w", err)
	} else if err := h.Validate(); err != nil {
		return nil, fmt.Errorf("decode header: %w", err)
	}
	d.hdr = fromCodec(h)
	if !d.hdr.IsSnapshot() {
		return nil, fmt.Errorf("ltx file %s-%s is not a snapshot", d.hdr.MinTXID, d.hdr.MaxTXID)
	}
	if h.NoChecksum() {
		return nil, errors.New("snapshot without checksums")
	}
	d.lock = checksum.LockPgno(d.hdr.PageSize)
	d.comp = make([]byte, lz4.CompressBlockBound(int(d.hdr.PageSize)))
	return d, nil
}

// read fills b from the file and hashes it.
func (d *SnapshotReader) read(b []byte) error {
	n, err := io.ReadFull(d.r, b)
	d.n += int64(n)
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return err
	}
	_, _ = d.hash.Write(b)
	return nil
}

// Header returns the snapshot's header.
func (d *SnapshotReader) Header() Header { return d.hdr }

// Next reads the next page into buf (PageSize bytes) and returns its page
// number and checksum, or io.EOF after the last page.
func (d *SnapshotReader) Next(buf []byte) (uint32, checksum.Checksum, error) {
	if d.done {
		return 0, 0, io.EOF
	}
	if uint32(len(buf)) != d.hdr.PageSize {
		return 0, 0, fmt.Errorf("page buffer of %d bytes, page size is %d", len(buf), d.hdr.PageSize)
	}
	offset := d.n
	ph := d.scratch8[:sltx.PageHeaderSize]
	if err := d.read(ph); err != nil {
		return 0, 0, fmt.Errorf("read page header: %w", err)
	}
	var h sltx.PageHeader
	if err := h.UnmarshalBinary(ph); err != nil {
		return 0, 0, fmt.Errorf("decode page header: %w", err)
	}
	if h.IsZero() {
		d.done = true
		if want := d.nextPgno(); want <= d.hdr.Commit {
			return 0, 0, fmt.Errorf("snapshot ends at page %d of %d", d.prev, d.hdr.Commit)
		}
		return 0, 0, io.EOF
	}
	if err := h.Validate(); err != nil {
		return 0, 0, err
	}
	if h.Flags&sltx.PageHeaderFlagSize == 0 {
		return 0, 0, fmt.Errorf("page %d: unsupported page format (flags %#x)", h.Pgno, h.Flags)
	}
	if want := d.nextPgno(); h.Pgno != want || h.Pgno > d.hdr.Commit {
		return 0, 0, fmt.Errorf("page %d where page %d of %d was due", h.Pgno, want, d.hdr.Commit)
	}
	sz := d.scratch8[:4]
	if err := d.read(sz); err != nil {
		return 0, 0, fmt.Errorf("read page %d size: %w", h.Pgno, err)
	}
	size := binary.BigEndian.Uint32(sz)
	if int(size) > len(d.comp) || size == 0 {
		return 0, 0, fmt.Errorf("page %d: compressed size %d", h.Pgno, size)
	}
	comp := d.comp[:size]
	n, err := io.ReadFull(d.r, comp) // hashed uncompressed, as written
	d.n += int64(n)
	if err != nil {
		return 0, 0, fmt.Errorf("read page %d: %w", h.Pgno, err)
	}
	if n, err := lz4.UncompressBlock(comp, buf); err != nil {
		return 0, 0, fmt.Errorf("decompress page %d: %w", h.Pgno, err)
	} else if n != len(buf) {
		return 0, 0, fmt.Errorf("page %d decompresses to %d bytes", h.Pgno, n)
	}
	_, _ = d.hash.Write(buf)
	c := checksum.Page(h.Pgno, buf)
	d.sum ^= c &^ checksum.Flag
	d.prev = h.Pgno
	d.frames = append(d.frames, frame{pgno: h.Pgno, offset: offset, size: d.n - offset})
	return h.Pgno, c, nil
}

func (d *SnapshotReader) nextPgno() uint32 {
	if d.prev+1 == d.lock {
		return d.prev + 2
	}
	return d.prev + 1
}

// Close reads the rest of the file, checks it, and returns the post-apply
// checksum, which the pages read have.
func (d *SnapshotReader) Close() (checksum.Checksum, error) {
	if !d.done {
		return 0, errors.New("close before the last page")
	}
	// The page index: one record per frame read, then a zero, then the
	// index's size.
	start := d.n
	for _, f := range d.frames {
		for _, want := range []uint64{uint64(f.pgno), uint64(f.offset), uint64(f.size)} {
			if got, err := d.uvarint(); err != nil {
				return 0, fmt.Errorf("read page index: %w", err)
			} else if got != want {
				return 0, fmt.Errorf("page index of page %d does not describe its frame", f.pgno)
			}
		}
	}
	if end, err := d.uvarint(); err != nil {
		return 0, fmt.Errorf("read page index: %w", err)
	} else if end != 0 {
		return 0, errors.New("page index has more records than pages")
	}
	isz := d.scratch8[:8]
	if err := d.read(isz); err != nil {
		return 0, fmt.Errorf("read page index size: %w", err)
	} else if got := int64(binary.BigEndian.Uint64(isz)); got != d.n-8-start {
		return 0, fmt.Errorf("page index size %d, read %d", got, d.n-8-start)
	}
	b := make([]byte, sltx.TrailerSize)
	if err := d.read(b[:sltx.TrailerChecksumOffset]); err != nil {
		return 0, fmt.Errorf("read trailer: %w", err)
	}
	if _, err := io.ReadFull(d.r, b[sltx.TrailerChecksumOffset:]); err != nil {
		return 0, fmt.Errorf("read trailer: %w", err)
	}
	var t sltx.Trailer
	if err := t.UnmarshalBinary(b); err != nil {
		return 0, fmt.Errorf("decode trailer: %w", err)
	}
	if _, err := d.r.ReadByte(); err == nil {
		return 0, errors.New("data after the trailer")
	} else if !errors.Is(err, io.EOF) {
		return 0, err
	}
	if got := sltx.ChecksumFlag | sltx.Checksum(d.hash.Sum64()); got != t.FileChecksum {
		return 0, fmt.Errorf("file checksum %016x, trailer says %016x", uint64(got), uint64(t.FileChecksum))
	}
	post := checksum.Checksum(t.PostApplyChecksum)
	if got := checksum.Flag | d.sum; got != post {
		return 0, fmt.Errorf("pages have checksum %s, trailer says %s", got, post)
	}
	return post, nil
}

// uvarint reads one hashed unsigned varint.
func (d *SnapshotReader) uvarint() (uint64, error) {
	var x uint64
	for i, s := 0, uint(0); i < binary.MaxVarintLen64; i, s = i+1, s+7 {
		c, err := d.r.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		d.n++
		_, _ = d.hash.Write([]byte{c})
		if c < 0x80 {
			return x | uint64(c)<<s, nil
		}
		x |= uint64(c&0x7f) << s
	}
	return 0, errors.New("varint overflows")
}

// SnapshotWriter writes an LTX snapshot page by page, as Encoder does, but
// compresses only pages that compress: every sampleEvery pages it tries
// one, and until the next try it either compresses pages or stores them
// as they are (an LZ4 block of literals, which any LZ4 decoder reads). A
// database of incompressible pages (random or already compressed blobs)
// then costs a copy per page instead of a futile search for matches, the
// largest cost of encoding it; one that compresses is sent smaller.
type SnapshotWriter struct {
	w        io.Writer
	hdr      Header
	hash     hash.Hash64
	n        int64
	prev     uint32
	lock     uint32
	frames   []frame
	comp     lz4.Compressor
	buf      []byte // a page frame: header, size, block
	compress bool   // what the last sample said
	sampled  int    // pages since the last sample
}

// sampleEvery is how many pages one compression trial decides for.
const sampleEvery = 64

// NewSnapshotWriter writes the header of a snapshot (MinTXID 1) to w.
func NewSnapshotWriter(w io.Writer, hdr Header) (*SnapshotWriter, error) {
	if !hdr.IsSnapshot() {
		return nil, fmt.Errorf("ltx file %s-%s is not a snapshot", hdr.MinTXID, hdr.MaxTXID)
	}
	h := toCodec(hdr)
	if err := h.Validate(); err != nil {
		return nil, err
	}
	b, err := h.MarshalBinary()
	if err != nil {
		return nil, err
	}
	e := &SnapshotWriter{w: w, hdr: hdr, hash: crc64.New(crcISO), lock: checksum.LockPgno(hdr.PageSize),
		buf: make([]byte, sltx.PageHeaderSize+4+literalBound(int(hdr.PageSize)))}
	return e, e.write(b, true)
}

// literalBound is the size of a block of n bytes stored as literals.
func literalBound(n int) int { return 1 + (n-15)/255 + 1 + n }

func (e *SnapshotWriter) write(b []byte, hashed bool) error {
	n, err := e.w.Write(b)
	e.n += int64(n)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if hashed {
		_, _ = e.hash.Write(b)
	}
	return err
}

// Page writes the next page: pages 1 to the commit size in order, all but
// the lock page.
func (e *SnapshotWriter) Page(pgno uint32, data []byte) error {
	want := e.prev + 1
	if want == e.lock {
		want++
	}
	if pgno != want || pgno > e.hdr.Commit {
		return fmt.Errorf("page %d where page %d of %d was due", pgno, want, e.hdr.Commit)
	}
	if uint32(len(data)) != e.hdr.PageSize {
		return fmt.Errorf("page of %d bytes, page size is %d", len(data), e.hdr.PageSize)
	}
	offset := e.n
	binary.BigEndian.PutUint32(e.buf[0:], pgno)
	binary.BigEndian.PutUint16(e.buf[4:], sltx.PageHeaderFlagSize)
	block := e.buf[sltx.PageHeaderSize+4:]
	size := 0
	if e.sampled == 0 || e.compress {
		n, err := e.comp.CompressBlock(data, block[:cap(block)])
		if err != nil {
			return fmt.Errorf("compress page %d: %w", pgno, err)
		}
		if e.sampled == 0 {
			e.compress = n > 0 && n < len(data)*7/8
		}
		if n > 0 && n < len(data) {
			size = n
		}
	}
	if size == 0 {
		size = storeLiterals(block, data)
	}
	e.sampled = (e.sampled + 1) % sampleEvery
	binary.BigEndian.PutUint32(e.buf[sltx.PageHeaderSize:], uint32(size))
	if err := e.write(e.buf[:sltx.PageHeaderSize+4], true); err != nil {
		return err
	}
	if err := e.write(block[:size], false); err != nil {
		return err
	}
	_, _ = e.hash.Write(data) // the file checksum covers pages uncompressed
	e.frames = append(e.frames, frame{pgno: pgno, offset: offset, size: e.n - offset})
	e.prev = pgno
	return nil
}

// storeLiterals writes data into dst as an LZ4 block holding one literal
// run (a token, the run's length, the bytes) and returns its size.
func storeLiterals(dst, data []byte) int {
	n := len(data)
	i := 0
	if n < 15 {
		dst[0] = byte(n << 4)
		i = 1
	} else {
		dst[0] = 0xf0
		i = 1
		for left := n - 15; ; left -= 255 {
			if left < 255 {
				dst[i] = byte(left)
				i++
				break
			}
			dst[i] = 255
			i++
		}
	}
	return i + copy(dst[i:], data)
}

// Close writes the end of the pages, the page index and the trailer with
// the post-apply checksum.
func (e *SnapshotWriter) Close(post checksum.Checksum) error {
	if last := e.prev; last != e.hdr.Commit && !(last+1 == e.lock && e.lock == e.hdr.Commit) {
		return fmt.Errorf("snapshot ends at page %d of %d", last, e.hdr.Commit)
	}
	if err := e.write(make([]byte, sltx.PageHeaderSize), true); err != nil {
		return err
	}
	start := e.n
	idx := make([]byte, 0, 64<<10)
	for _, f := range e.frames {
		idx = binary.AppendUvarint(idx, uint64(f.pgno))
		idx = binary.AppendUvarint(idx, uint64(f.offset))
		idx = binary.AppendUvarint(idx, uint64(f.size))
		if len(idx) > 60<<10 {
			if err := e.write(idx, true); err != nil {
				return err
			}
			idx = idx[:0]
		}
	}
	idx = binary.AppendUvarint(idx, 0)
	idx = binary.BigEndian.AppendUint64(idx, uint64(e.n+int64(len(idx))-start))
	if err := e.write(idx, true); err != nil {
		return err
	}
	t := sltx.Trailer{PostApplyChecksum: sltx.Checksum(post)}
	b, err := t.MarshalBinary()
	if err != nil {
		return err
	}
	_, _ = e.hash.Write(b[:sltx.TrailerChecksumOffset])
	t.FileChecksum = sltx.ChecksumFlag | sltx.Checksum(e.hash.Sum64())
	if err := t.Validate(toCodec(e.hdr)); err != nil {
		return err
	}
	if b, err = t.MarshalBinary(); err != nil {
		return err
	}
	return e.write(b, false)
}
