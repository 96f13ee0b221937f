package replica

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/litefs-project/litefs/checksum"
	"github.com/litefs-project/litefs/ltx"
)

// rebuildFile is where a database is rebuilt before it replaces the file.
const rebuildFile = DatabaseFile + ".rebuild"

// rebuildFromLog replaces the database file in dir by replaying its LTX log,
// when the log reaches back to a snapshot (TXID 1) and the replay matches
// the log's position. The old file (and its WAL and journal) is moved to
// a dated folder under asideDir first. It reports false, changing nothing,
// when the log cannot rebuild the database.
func rebuildFromLog(name, dir, asideDir string, logger *slog.Logger) (string, bool, error) {
	log, err := ltx.OpenLog(filepath.Join(dir, LTXDir))
	if err != nil {
		return "", false, nil // a damaged log cannot be trusted to rebuild
	}
	files := log.Files()
	if len(files) == 0 || files[0].MinTXID != 1 {
		return "", false, nil
	}
	tmp := filepath.Join(dir, rebuildFile)
	sum, err := replayLog(log, files, tmp)
	if err != nil || sum != log.Pos().Checksum {
		_ = os.Remove(tmp)
		if err != nil && !errors.Is(err, ErrCorruptLTX) {
			return "", false, err
		}
		return "", false, nil
	}
	if err := os.MkdirAll(asideDir, 0o755); err != nil {
		return "", false, err
	}
	dst, err := os.MkdirTemp(asideDir, name+".damaged-*")
	if err != nil {
		return "", false, err
	}
	for _, f := range []string{DatabaseFile, WALFile, JournalFile} {
		if err := os.Rename(filepath.Join(dir, f), filepath.Join(dst, f)); err != nil && !os.IsNotExist(err) {
			return "", false, err
		}
	}
	if err := os.Rename(tmp, filepath.Join(dir, DatabaseFile)); err != nil {
		return "", false, err
	}
	if err := ltx.SyncDir(dir); err != nil {
		return "", false, err
	}
	logger.Warn("database did not match its log; rebuilt it from its own ltx files, and kept the damaged file aside",
		slog.String(LogKeyDB, name), slog.Int("files", len(files)), slog.String("pos", log.Pos().String()), slog.String(LogKeyPath, dst))
	return dst, true, nil
}

// replayLog writes the pages of files, in order, into a new file at path,
// syncs it, and returns its checksum.
func replayLog(log *ltx.Log, files []ltx.FileInfo, path string) (checksum.Checksum, error) {
	out, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	var pageSize uint32
	for _, fi := range files {
		if err := replayFile(log.Path(fi.MinTXID, fi.MaxTXID), out, &pageSize); err != nil {
			return 0, err
		}
	}
	if err := out.Sync(); err != nil {
		return 0, err
	}
	if _, err := out.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	tbl, err := checksum.Read(out, pageSize)
	if err != nil {
		return 0, err
	}
	return tbl.Sum(), nil
}

func replayFile(path string, out *os.File, pageSize *uint32) error {
	_, err := writeLTX(path, out, func(hdr ltx.Header) error {
		if *pageSize != 0 && hdr.PageSize != *pageSize {
			return fmt.Errorf("%s: page size %d, earlier files %d", path, hdr.PageSize, *pageSize)
		}
		*pageSize = hdr.PageSize
		return nil
	}, func(uint32, []byte) {})
	return err
}
