package replica

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/litefs-project/litefs/ltx"
)

// ExportResult describes a copy written by DB.Export.
type ExportResult struct {
	Pos      ltx.Pos // the position the copy holds
	PageSize uint32  // bytes per page
	PageN    uint32  // pages in the copy
	Size     int64   // bytes written
}

// Export writes a copy of the database as readers see it at its position
// to w: a plain SQLite database file (in WAL mode, the file with the
// committed frames of its WAL laid over it, and no WAL needed beside it).
// It works on the primary and on replicas alike. The copy holds exactly
// one position, never part of a transaction: commits and applies wait while
// it is read (so w should be fast, a local file), and a rollback-mode
// transaction in progress is waited for. The pages written are checked
// against the position's checksum as they are read; a copy that does not
// match fails. It returns an error wrapping ErrDatabaseNotFound for a
// database with no transaction yet.
func (db *DB) Export(ctx context.Context, w io.Writer) (ExportResult, error) {
	if db.Pos().TXID == 0 {
		return ExportResult{}, fmt.Errorf("export %q: %w: it has no transaction yet", db.name, ErrDatabaseNotFound)
	}
	var res ExportResult
	img, err := db.readCommitted(ctx, "export", func(committedImage) error { return nil }, func(pgno uint32, data []byte) error {
		n, err := w.Write(data)
		res.Size += int64(n)
		return err
	})
	if err != nil {
		return ExportResult{}, err
	}
	res.Pos, res.PageSize, res.PageN = img.Pos, img.PageSize, img.PageN
	return res, nil
}

// ExportFile exports the named database into a new file under TempDir, as
// DB.Export does, and returns the file, open and positioned at its start,
// for the caller to send, close and remove. Commits wait only while the
// local copy is written, not while it is sent. It returns an error
// wrapping ErrDatabaseNotFound for a database the store does not have.
func (s *Store) ExportFile(ctx context.Context, name string) (_ *os.File, _ ExportResult, err error) {
	if err := ValidateName(name); err != nil {
		return nil, ExportResult{}, err
	}
	db := s.DB(name)
	if db == nil {
		return nil, ExportResult{}, fmt.Errorf("export %q: %w", name, ErrDatabaseNotFound)
	}
	f, err := os.CreateTemp(s.TempDir(), "export-*.db")
	if err != nil {
		return nil, ExportResult{}, err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	res, err := db.Export(ctx, f)
	if errors.Is(err, ErrClosed) {
		err = fmt.Errorf("export %q: %w (deleted or moved aside meanwhile)", name, ErrDatabaseNotFound)
	}
	if err != nil {
		return nil, ExportResult{}, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, ExportResult{}, err
	}
	return f, res, nil
}

// Copy copies the export to w, validating it as a database, and checks
// its length and its checksum against the position's.
func (resp ExportStream) Copy(w io.Writer) error {
	info, err := CopyDatabase(w, resp.Body)
	if err != nil {
		return err
	}
	if info.Size != resp.Size {
		return fmt.Errorf("received %d bytes, the node announced %d", info.Size, resp.Size)
	}
	if info.Checksum != resp.Pos.Checksum {
		return fmt.Errorf("the copy's checksum is %s, position %s says %s: it was damaged on the way; export again", info.Checksum, resp.Pos, resp.Pos.Checksum)
	}
	return nil
}

// WriteFile writes the export to a temporary file beside path, checks
// it, syncs it and renames it over path: path is untouched until the copy
// is whole and checked.
func (resp ExportStream) WriteFile(path string) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := resp.Copy(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return ltx.SyncDir(dir)
}
