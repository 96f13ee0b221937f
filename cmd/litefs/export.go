package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
)

// ExportCommand is `litefs export -name DB [-url URL] FILE`: a copy of one
// position of the database, from any node. FILE is written through a
// temporary file beside it, checked against the position's checksum,
// synced and renamed over FILE; FILE is untouched until the copy is whole.
type ExportCommand struct {
	Name   string // the database in the mount
	URL    string // the node's API
	Path   string // where the copy goes; "-" for standard output
	client *clientFlags
	Stdout io.Writer
	Stderr io.Writer
}

// NewExportCommand returns an export command with defaults.
func NewExportCommand() *ExportCommand {
	return &ExportCommand{URL: "http://localhost" + DefaultHTTPAddr, Stdout: os.Stdout, Stderr: os.Stderr}
}

// ParseFlags reads the command line.
func (c *ExportCommand) ParseFlags(args []string) error {
	fs := flag.NewFlagSet("litefs-export", flag.ContinueOnError)
	fs.StringVar(&c.Name, "name", "", "database name in the mount (required)")
	fs.StringVar(&c.URL, "url", c.URL, "API URL of the node to copy from (a primary or a replica)")
	c.client = addClientFlags(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: litefs export -name DB [-url URL] FILE   (FILE - is standard output)")
		fs.PrintDefaults()
	}
	path, err := parseDBFileArgs(fs, "export", args, &c.Name)
	c.Path = path
	return err
}

// Run receives the copy and writes it.
func (c *ExportCommand) Run(ctx context.Context) error {
	client, err := c.client.client()
	if err != nil {
		return err
	}
	resp, err := client.Export(ctx, c.URL, c.Name)
	if err != nil {
		return fmt.Errorf("export %s: %w", c.Name, err)
	}
	defer resp.Body.Close()
	p := newProgress(c.Stderr, "export "+c.Name, resp.Size)
	resp.Body = struct {
		io.Reader
		io.Closer
	}{p.Reader(resp.Body), resp.Body}
	if c.Path == "-" {
		// Checked as it is written; a bad copy can only be reported.
		bw := bufio.NewWriterSize(c.Stdout, 1<<20)
		err := resp.Copy(bw)
		if err == nil {
			err = bw.Flush()
		}
		p.finish(doneOrFailed(err))
		if err != nil {
			return fmt.Errorf("export %s: %w", c.Name, err)
		}
		fmt.Fprintf(c.Stderr, "exported %s at position %s (%d bytes)\n", c.Name, resp.Pos, resp.Size)
		return nil
	}
	err = resp.WriteFile(c.Path)
	p.finish(doneOrFailed(err))
	if err != nil {
		return fmt.Errorf("export %s: %w", c.Name, err)
	}
	fmt.Fprintf(c.Stdout, "exported %s at position %s (%d bytes) to %s\n", c.Name, resp.Pos, resp.Size, c.Path)
	return nil
}

// Close releases nothing; it is there for the command's shape.
func (c *ExportCommand) Close() error { return nil }
