package ltx

import (
	"bytes"
	"fmt"
	"io"
	"os"

	sltx "github.com/superfly/ltx"

	"github.com/litefs-project/litefs/checksum"
)

// Page is one page of an LTX file.
type Page struct {
	Pgno uint32
	Data []byte
}

// Encode writes an LTX file with hdr and pages (ascending page numbers, no
// lock page) to w; post is the database checksum after applying it.
func Encode(w io.Writer, hdr Header, pages []Page, post checksum.Checksum) error {
	enc, err := NewEncoder(w, hdr)
	if err != nil {
		return err
	}
	for _, p := range pages {
		if err := enc.Page(p.Pgno, p.Data); err != nil {
			return fmt.Errorf("encode page %d: %w", p.Pgno, err)
		}
	}
	if err := enc.Close(post); err != nil {
		return fmt.Errorf("close encoder: %w", err)
	}
	return nil
}

func toCodec(h Header) sltx.Header {
	return sltx.Header{
		Version:          sltx.Version,
		PageSize:         h.PageSize,
		Commit:           h.Commit,
		MinTXID:          sltx.TXID(h.MinTXID),
		MaxTXID:          sltx.TXID(h.MaxTXID),
		Timestamp:        h.Timestamp,
		PreApplyChecksum: sltx.Checksum(h.PreApplyChecksum),
		NodeID:           uint64(h.Stamp),
	}
}

func fromCodec(h sltx.Header) Header {
	return Header{
		PageSize:         h.PageSize,
		Commit:           h.Commit,
		MinTXID:          TXID(h.MinTXID),
		MaxTXID:          TXID(h.MaxTXID),
		Timestamp:        h.Timestamp,
		PreApplyChecksum: checksum.Checksum(h.PreApplyChecksum),
		Stamp:            Stamp(h.NodeID),
	}
}

// Decoded is a fully read and verified LTX file.
type Decoded struct {
	Header            Header
	Pages             []Page
	PostApplyChecksum checksum.Checksum
}

// Decode reads a whole LTX file from r and verifies its file checksum (and,
// for snapshots, its post-apply checksum against the pages). Pages are held
// in memory; use Verify for a file that need not be kept.
func Decode(r io.Reader) (*Decoded, error) {
	return decode(r, true)
}

func decode(r io.Reader, keep bool) (*Decoded, error) {
	dec := sltx.NewDecoder(r)
	if err := dec.DecodeHeader(); err != nil {
		return nil, fmt.Errorf("decode header: %w", err)
	}
	hdr := dec.Header()
	out := &Decoded{Header: fromCodec(hdr)}
	var ph sltx.PageHeader
	buf := make([]byte, hdr.PageSize)
	for {
		if err := dec.DecodePage(&ph, buf); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("decode page: %w", err)
		}
		if ph.Pgno > hdr.Commit {
			return nil, fmt.Errorf("page %d beyond commit size %d", ph.Pgno, hdr.Commit)
		}
		if keep {
			out.Pages = append(out.Pages, Page{Pgno: ph.Pgno, Data: bytes.Clone(buf)})
		}
	}
	if err := dec.Close(); err != nil {
		return nil, err
	}
	out.PostApplyChecksum = checksum.Checksum(dec.Trailer().PostApplyChecksum)
	return out, nil
}

// ReadFile decodes and verifies the LTX file at path. A file that fails to
// decode returns a *CorruptError naming it.
func ReadFile(path string) (*Decoded, error) {
	return readFile(path, true)
}

// VerifyFile checks the LTX file at path end to end without keeping its
// pages, and returns its header and post-apply checksum.
func VerifyFile(path string) (*Decoded, error) {
	return readFile(path, false)
}

func readFile(path string, keep bool) (*Decoded, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d, err := decode(f, keep)
	if err != nil {
		return nil, &CorruptError{Path: path, Err: err}
	}
	return d, nil
}

// WriteFile writes an LTX file to path durably and returns once it is on
// disk: it creates the file (which must not exist), writes it in one call
// and syncs it. One sync makes both the data and the new directory entry
// durable on journaling filesystems (ext4, xfs, btrfs), where syncing a new
// file commits the transaction that created it. A crash before the sync
// returns can leave a torn file; Log finds it at open (see OpenLog).
func WriteFile(path string, hdr Header, pages []Page, post checksum.Checksum) error {
	f, err := writeFile(path, nil, hdr, pages, post, true)
	if f != nil {
		_ = f.Close()
	}
	return err
}

// writeFile writes an LTX file at path, which must not exist, in one
// call, into f if not nil (an empty file already at path). If durable, it
// syncs and closes it and returns a nil file; otherwise it returns the
// file, open, for a later sync.
func writeFile(path string, f *os.File, hdr Header, pages []Page, post checksum.Checksum, durable bool) (*os.File, error) {
	var buf bytes.Buffer
	if err := Encode(&buf, hdr, pages, post); err != nil {
		if f != nil {
			_ = f.Close()
			_ = os.Remove(path)
		}
		return nil, err
	}
	if f == nil {
		var err error
		if f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644); err != nil {
			return nil, err
		}
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if !durable {
		return f, nil
	}
	if err := Sync(f); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return nil, fmt.Errorf("sync %s: %w", path, err)
	}
	return nil, f.Close()
}

// tmpSuffix marks temporary files, which Log removes at open.
const tmpSuffix = ".tmp"

// FormatFilename returns the file name of an LTX file holding min..max.
func FormatFilename(min, max TXID) string { return sltx.FormatFilename(sltx.TXID(min), sltx.TXID(max)) }

// ParseFilename parses a name made by FormatFilename.
func ParseFilename(name string) (min, max TXID, err error) {
	a, b, err := sltx.ParseFilename(name)
	return TXID(a), TXID(b), err
}

// ReadHeader returns the header of the LTX file at path, without
// verifying the file.
func ReadHeader(path string) (Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return Header{}, err
	}
	defer f.Close()
	dec, err := NewDecoder(f)
	if err != nil {
		return Header{}, &CorruptError{Path: path, Err: err}
	}
	return dec.Header(), nil
}

// ReadTrailer returns the post-apply checksum recorded in the trailer of
// the LTX file at path, without verifying the file.
func ReadTrailer(path string) (checksum.Checksum, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if fi.Size() < sltx.HeaderSize+sltx.TrailerSize {
		return 0, &CorruptError{Path: path, Err: fmt.Errorf("%d bytes is too short", fi.Size())}
	}
	b := make([]byte, sltx.TrailerSize)
	if _, err := f.ReadAt(b, fi.Size()-sltx.TrailerSize); err != nil {
		return 0, err
	}
	var t sltx.Trailer
	if err := t.UnmarshalBinary(b); err != nil {
		return 0, &CorruptError{Path: path, Err: err}
	}
	return checksum.Checksum(t.PostApplyChecksum), nil
}

// Decoder reads an LTX file page by page, so that a snapshot of any size
// is applied without holding it in memory. Close verifies the file's
// checksums; pages read before a failed Close must not be trusted.
type Decoder struct {
	dec *sltx.Decoder
	hdr Header
}

// NewDecoder reads the header from r.
func NewDecoder(r io.Reader) (*Decoder, error) {
	dec := sltx.NewDecoder(r)
	if err := dec.DecodeHeader(); err != nil {
		return nil, fmt.Errorf("decode header: %w", err)
	}
	return &Decoder{dec: dec, hdr: fromCodec(dec.Header())}, nil
}

// Header returns the file's header.
func (d *Decoder) Header() Header { return d.hdr }

// Next reads the next page into buf (PageSize bytes) and returns its page
// number, or io.EOF after the last page.
func (d *Decoder) Next(buf []byte) (uint32, error) {
	var ph sltx.PageHeader
	if err := d.dec.DecodePage(&ph, buf); err != nil {
		return 0, err
	}
	if ph.Pgno > d.hdr.Commit {
		return 0, fmt.Errorf("page %d beyond commit size %d", ph.Pgno, d.hdr.Commit)
	}
	return ph.Pgno, nil
}

// Close verifies the rest of the file and returns its post-apply checksum.
func (d *Decoder) Close() (checksum.Checksum, error) {
	if err := d.dec.Close(); err != nil {
		return 0, err
	}
	return checksum.Checksum(d.dec.Trailer().PostApplyChecksum), nil
}

// Encoder writes an LTX file page by page.
type Encoder struct {
	enc *sltx.Encoder
}

// NewEncoder writes hdr to w.
func NewEncoder(w io.Writer, hdr Header) (*Encoder, error) {
	enc, err := sltx.NewEncoder(w)
	if err != nil {
		return nil, err
	}
	if err := enc.EncodeHeader(toCodec(hdr)); err != nil {
		return nil, fmt.Errorf("encode header: %w", err)
	}
	return &Encoder{enc: enc}, nil
}

// Page writes one page; page numbers must ascend.
func (e *Encoder) Page(pgno uint32, data []byte) error {
	return e.enc.EncodePage(sltx.PageHeader{Pgno: pgno}, data)
}

// Close writes the trailer with the post-apply checksum.
func (e *Encoder) Close(post checksum.Checksum) error {
	e.enc.SetPostApplyChecksum(sltx.Checksum(post))
	return e.enc.Close()
}
