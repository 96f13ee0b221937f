package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/litefs-project/litefs/replica"
)

// ImportCommand is `litefs import -name DB [-url URL] [-no-check] FILE`.
// A node that is not the primary answers not-primary with the primary's
// URL; the command then sends the file there itself (the node does not
// forward it).
type ImportCommand struct {
	Name    string // the database in the mount
	URL     string // the node's API
	NoCheck bool   // skip PRAGMA quick_check on the node
	Path    string // the SQLite database file to import
	client  *clientFlags
	Stdout  io.Writer
	Stderr  io.Writer // progress, when it is a terminal
}

// NewImportCommand returns an import command with defaults.
func NewImportCommand() *ImportCommand {
	return &ImportCommand{URL: "http://localhost" + DefaultHTTPAddr, Stdout: os.Stdout, Stderr: os.Stderr}
}

// ParseFlags reads the command line.
func (c *ImportCommand) ParseFlags(args []string) error {
	fs := flag.NewFlagSet("litefs-import", flag.ContinueOnError)
	fs.StringVar(&c.Name, "name", "", "database name in the mount (required)")
	fs.StringVar(&c.URL, "url", c.URL, "API URL of a node; a replica names the primary, which the file is then sent to")
	fs.BoolVar(&c.NoCheck, "no-check", false, "skip PRAGMA quick_check on the received copy (for very large files)")
	c.client = addClientFlags(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: litefs import -name DB [-url URL] [-no-check] FILE")
		fs.PrintDefaults()
	}
	path, err := parseDBFileArgs(fs, "import", args, &c.Name)
	c.Path = path
	return err
}

// Run checks the file and sends it.
func (c *ImportCommand) Run(ctx context.Context) error {
	if err := replica.CheckImportSource(c.Path); err != nil {
		return err
	}
	res, err := c.send(ctx, c.URL)
	var apiErr *replica.Error
	if errors.Is(err, replica.ErrNotPrimary) && errors.As(err, &apiErr) && apiErr.PrimaryURL != "" {
		fmt.Fprintf(c.Stdout, "%s is not the primary; sending the file to the primary at %s\n", c.URL, apiErr.PrimaryURL)
		res, err = c.send(ctx, apiErr.PrimaryURL)
	}
	if err != nil {
		return fmt.Errorf("import %s: %w", c.Path, err)
	}
	fmt.Fprintf(c.Stdout, "imported %s into %s: position %s, %d pages of %d bytes\n", c.Path, res.DB, res.Position, res.Pages, res.PageSize)
	if res.JournalModeChanged {
		fmt.Fprintf(c.Stdout, "the journal mode of %s changed from %s to %s, as the imported file has it\n", res.DB, res.PreviousJournalMode, res.JournalMode)
	}
	return nil
}

func (c *ImportCommand) send(ctx context.Context, base string) (replica.ImportResult, error) {
	f, err := os.Open(c.Path)
	if err != nil {
		return replica.ImportResult{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return replica.ImportResult{}, err
	}
	client, err := c.client.client()
	if err != nil {
		return replica.ImportResult{}, err
	}
	p := newProgress(c.Stderr, "import "+c.Name, fi.Size())
	res, err := client.Import(ctx, base, c.Name, p.Reader(f), fi.Size(), c.NoCheck)
	p.finish(doneOrFailed(err))
	return res, err
}

// Close releases nothing; it is there for the command's shape.
func (c *ImportCommand) Close() error { return nil }
