// Command litefs mounts SQLite databases through FUSE and turns every
// transaction into a checksummed LTX file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/litefs-project/litefs/replica"
)

// Version is set at build time.
var Version = "development"

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		var exit *ExitError
		if errors.As(err, &exit) {
			os.Exit(exit.Code)
		}
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "litefs:", err)
		}
		os.Exit(1)
	}
}

// ExitError carries the exit code of the exec'd command.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

func run(ctx context.Context, args []string) error {
	cmd, rest := "mount", args
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, rest = args[0], args[1:]
	}
	switch cmd {
	case "mount":
		c := NewMountCommand()
		if err := c.ParseFlags(rest); err != nil {
			return err
		}
		// The first SIGINT/SIGTERM stops litefs (or goes to the exec'd
		// command, which stops it by exiting).
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
		defer signal.Stop(sigs)
		c.Signals = sigs
		runErr := c.Run(ctx)
		if err := c.Close(); runErr == nil {
			runErr = err
		}
		return runErr
	case "status":
		return runStatus(ctx, rest, os.Stdout)
	case "handoff":
		return runHandoff(ctx, rest)
	case "import":
		c := NewImportCommand()
		if err := c.ParseFlags(rest); err != nil {
			return err
		}
		defer c.Close()
		return c.Run(ctx)
	case "export":
		c := NewExportCommand()
		if err := c.ParseFlags(rest); err != nil {
			return err
		}
		defer c.Close()
		return c.Run(ctx)
	case "version":
		fmt.Println("litefs", Version)
		return nil
	case "help", "-h", "--help":
		usage()
		return nil
	default:
		usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
}

// runHandoff is `litefs handoff`: it asks the primary's API to pass the
// lease to a candidate.
func runHandoff(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("litefs-handoff", flag.ContinueOnError)
	to := fs.String("to", "", "hostname (lease.hostname) of the candidate to hand off to; default: the connected candidate with the most transactions")
	url := fs.String("url", "http://localhost"+DefaultHTTPAddr, "API URL of the primary")
	flags := addClientFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	client, err := flags.client()
	if err != nil {
		return err
	}
	res, err := client.Handoff(ctx, *url, *to)
	if err != nil {
		return fmt.Errorf("handoff: %w", err)
	}
	fmt.Printf("handed off from %s to %s; writes were refused for %d ms\n", res.From, res.To, res.WindowMS)
	return nil
}

// parseDBFileArgs parses the command line of import and export: -name
// (set in fs, its value given as *name after parsing) and one FILE.
func parseDBFileArgs(fs *flag.FlagSet, op string, args []string, name *string) (string, error) {
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return "", fmt.Errorf("%s: want exactly one FILE", op)
	}
	if *name == "" {
		return "", fmt.Errorf("%s: -name is required", op)
	}
	if err := replica.ValidateName(*name); err != nil {
		return "", fmt.Errorf("%s: -name: %w", op, err)
	}
	return fs.Arg(0), nil
}

// clientFlags are the flags of the commands that call a node's API: the
// cluster secret and TLS files, each defaulting to an environment
// variable.
type clientFlags struct {
	secret string
	tls    replica.TLSFiles
}

func addClientFlags(fs *flag.FlagSet) *clientFlags {
	f := &clientFlags{}
	fs.StringVar(&f.secret, "secret", os.Getenv("LITEFS_SECRET"), "the cluster secret (http.secret); default: $LITEFS_SECRET")
	fs.StringVar(&f.tls.CA, "ca", os.Getenv("LITEFS_TLS_CA"), "CA file to verify an https node against (http.tls.ca); default: $LITEFS_TLS_CA")
	fs.StringVar(&f.tls.Cert, "cert", os.Getenv("LITEFS_TLS_CERT"), "client certificate for mutual TLS; default: $LITEFS_TLS_CERT")
	fs.StringVar(&f.tls.Key, "key", os.Getenv("LITEFS_TLS_KEY"), "its key; default: $LITEFS_TLS_KEY")
	return f
}

// client returns a client of the node API with the flags' secret and TLS.
func (f *clientFlags) client() (*replica.Client, error) {
	return replica.NewClientWith(f.secret, f.tls)
}

func usage() {
	fmt.Fprint(os.Stderr, `litefs replicates SQLite databases through a FUSE mount.

Usage:

	litefs mount [-config PATH]   mount the databases (default command)
	litefs handoff [-to HOSTNAME] [-url URL] [-secret SECRET]
	                              hand the primary lease to a candidate
	litefs status [-url URL] [-json] [-max-lag 10s]
	                              the node's role, primary, positions, lag and
	                              replicas; exit 1 if unhealthy, 2 if unreachable
	litefs import -name DB [-url URL] [-no-check] FILE
	                              replace a database with a SQLite file, as
	                              one transaction on the primary
	litefs export -name DB [-url URL] FILE
	                              copy one position of a database from any
	                              node to FILE (- for standard output)
	litefs version                print the version

The config is read from -config, else ./litefs.yml, else /etc/litefs.yml.
The commands that call a node's API take -secret (default $LITEFS_SECRET),
the cluster secret (http.secret).
`)
}
